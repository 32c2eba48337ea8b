// The connection badge: what the editor on this page reports, rendered in the browser so that it
// stays true while the server is unreachable.
const LOOK = {
  connected: { label: "connected", color: "#15803d", icon: "cloud_done" },
  reconnecting: { label: "reconnecting…", color: "#b45309", icon: "sync" },
  offline: { label: "offline", color: "#b91c1c", icon: "cloud_off" },
  paused: { label: "paused", color: "#6b7280", icon: "pause_circle" },
  denied: { label: "no access", color: "#6b7280", icon: "block" },
};

export default {
  template: `
    <span class="collab-status" :data-state="state" :title="title"
          :style="{display: 'inline-flex', alignItems: 'center', gap: '4px', padding: '2px 10px', borderRadius: '999px',
                   fontSize: '13px', color: 'white', backgroundColor: look.color, whiteSpace: 'nowrap'}">
      <i class="material-icons" style="font-size: 16px">{{ look.icon }}</i>
      <span class="collab-status-label">{{ label }}</span>
    </span>
  `,
  data() {
    return { state: "reconnecting", unsent: 0, stalled: false, message: null };
  },
  computed: {
    look() {
      return LOOK[this.state] || LOOK.reconnecting;
    },
    label() {
      if (this.unsent && (this.state !== "connected" || this.stalled)) {
        return `${this.look.label} · ${this.unsent} unsent edit${this.unsent === 1 ? "" : "s"}`;
      }
      return this.look.label;
    },
    title() {
      if (this.message) return this.message;
      if (this.state === "offline") return "Edits are kept in this tab and sent when the connection is back.";
      return "";
    },
  },
  mounted() {
    this.listener = (event) => {
      this.state = event.detail.state;
      this.unsent = event.detail.unsent;
      this.stalled = event.detail.stalled;
      this.message = event.detail.message;
    };
    window.addEventListener("collab-status", this.listener);
  },
  beforeUnmount() {
    window.removeEventListener("collab-status", this.listener);
  },
};
