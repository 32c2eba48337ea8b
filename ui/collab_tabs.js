// The editor's state kept per browser tab (sessionStorage), and the tab's answer to copies of
// itself: the methods collab_editor.js mixes into its component.
//
// The client's state is kept in sessionStorage, so a reconnect or a page reload (a server
// restart) resends unconfirmed work, which the server applies exactly once. A duplicated tab
// copies sessionStorage: the copy must not speak for the original's client_id.
import * as CM from "nicegui-codemirror";
import { CollabClient } from "collab_client";

export const STORE = "collab-pad:";

function randomId(bytes) {
  const data = new Uint8Array(bytes);
  crypto.getRandomValues(data);
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

function newIdentity() {
  return { clientId: "b-" + randomId(12), resumeToken: randomId(16) };
}

export const tabMethods = {
  storageKey() {
    return STORE + "room:" + this.roomId;
  },
  async restoreOrFork() {
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(this.storageKey()) || "null");
    } catch (e) {
      saved = null;
    }
    // A duplicated tab copies sessionStorage, including a flag that says the tab is open (a
    // reload clears it first, on pagehide); the original tab owns those edits and that
    // client_id, so a copy starts as a new client from the server's text. The tabs are also
    // asked directly, for a copy made while the flag was down.
    const copied = sessionStorage.getItem(STORE + "open") === "1";
    sessionStorage.setItem(STORE + "open", "1");
    if (saved && (copied || (await this.clientIdTaken(saved.client_id)))) saved = null;
    try {
      this.client = new CollabClient(CM, saved, newIdentity);
    } catch (e) {
      console.warn("collab pad: the kept state is unreadable; starting afresh", e);
      this.client = new CollabClient(CM, null, newIdentity);
    }
  },
  clientIdTaken(clientId) {
    return new Promise((resolve) => {
      const channel = new BroadcastChannel(STORE + "tabs");
      const timer = setTimeout(() => {
        channel.close();
        resolve(false);
      }, 150);
      channel.onmessage = (event) => {
        if (event.data?.type === "mine" && event.data.client_id === clientId) {
          clearTimeout(timer);
          channel.close();
          resolve(true);
        }
      };
      channel.postMessage({ type: "who", client_id: clientId });
    });
  },
  save() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    try {
      sessionStorage.setItem(this.storageKey(), JSON.stringify(this.client.toJSON()));
    } catch (e) {
      console.warn("collab pad: could not keep unsent edits in sessionStorage", e);
    }
  },
  scheduleSave() {
    if (this.saveTimer === null) this.saveTimer = setTimeout(() => this.save(), 0);
  },

  // Keep the state when the page goes away or out of sight, and tell copies of this tab that
  // its client_id is taken.
  watchTab() {
    this.onPageHide = () => {
      this.save();
      sessionStorage.setItem(STORE + "open", "0");
    };
    this.onPageShow = () => sessionStorage.setItem(STORE + "open", "1");
    this.onVisibility = () => this.save();
    window.addEventListener("pagehide", this.onPageHide);
    window.addEventListener("pageshow", this.onPageShow);
    document.addEventListener("visibilitychange", this.onVisibility);
    this.channel = new BroadcastChannel(STORE + "tabs");
    this.channel.onmessage = (event) => {
      if (event.data?.type === "who" && event.data.client_id === this.client.clientId) {
        this.channel.postMessage({ type: "mine", client_id: this.client.clientId });
      }
    };
  },
  unwatchTab() {
    window.removeEventListener("pagehide", this.onPageHide);
    window.removeEventListener("pageshow", this.onPageShow);
    document.removeEventListener("visibilitychange", this.onVisibility);
    this.channel?.close();
  },
};
