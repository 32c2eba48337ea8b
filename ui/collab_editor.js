// The collaborative editor: CodeMirror 6 speaking the versioned protocol (docs/protocol.md) over
// NiceGUI's bridge. Browser -> server: this.$emit("frame", {gen, data}); server -> browser:
// receive(gen, data), where data is one protocol message, or a JSON array of them (batch).
//
// Client state, as in rooms/replica.py: `version` (last server version applied), `base` (the
// server's text at `version`), `inflight` (one sent batch with its seq) and `pending` (local
// changes composed, not sent). Everything needed to resend unconfirmed work is kept in
// sessionStorage, so a reconnect or a page reload (a server restart) applies it exactly once.
//
// `gen` numbers the hellos of this page: a reconnect says hello again with a new gen, and
// anything still arriving for an older one is ignored.
import * as CM from "nicegui-codemirror";

const STORE = "collab-pad:";
const HELLO_RETRY_MS = [2000, 4000, 8000];
const CURSOR_THROTTLE_MS = 80;
const RESEND_MS = 3000; // an unconfirmed batch is sent again (same seq: applied once) after this
const NOTICE_EVERY_MS = 5000;
// After a server failure (internal_error) the hello is retried after a growing delay, not at
// once: a failure that repeats must not become a loop. After FAILURES_BEFORE_OFFER in a row the
// user is offered their text, as when work cannot be merged.
const FAILURE_RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
const FAILURES_BEFORE_OFFER = 3;

function randomId(bytes) {
  const data = new Uint8Array(bytes);
  crypto.getRandomValues(data);
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Black or white, whichever reads better on a #rrggbb background.
function readableOn(color) {
  const value = parseInt(color.slice(1), 16);
  const [r, g, b] = [(value >> 16) & 255, (value >> 8) & 255, value & 255];
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#111" : "#fff";
}

// Remote cursors and selections: a field of decorations that every transaction maps, so they
// move with text inserted before them; a `setCursors` effect replaces the set.
const setCursors = CM.StateEffect.define();

class CaretWidget extends CM.WidgetType {
  constructor(name, color, below) {
    super();
    this.name = name;
    this.color = color;
    this.below = below; // on the first line the label goes under the caret, not out of view
  }
  eq(other) {
    return other.name === this.name && other.color === this.color && other.below === this.below;
  }
  toDOM() {
    const caret = document.createElement("span");
    caret.className = "collab-caret";
    caret.style.borderLeftColor = this.color;
    const label = document.createElement("span");
    label.className = this.below ? "collab-caret-label collab-caret-label-below" : "collab-caret-label";
    label.style.backgroundColor = this.color;
    label.style.color = readableOn(this.color);
    label.textContent = this.name; // text, never markup
    caret.appendChild(label);
    return caret;
  }
  ignoreEvent() {
    return true;
  }
}

const cursorField = CM.StateField.define({
  create() {
    return CM.Decoration.none;
  },
  update(set, tr) {
    set = set.map(tr.changes);
    for (const effect of tr.effects) if (effect.is(setCursors)) set = effect.value;
    return set;
  },
  provide: (field) => CM.EditorView.decorations.from(field),
});

const cursorTheme = CM.EditorView.baseTheme({
  ".collab-caret": {
    position: "relative",
    borderLeft: "2px solid",
    marginLeft: "-1px",
    marginRight: "-1px",
  },
  ".collab-caret-label": {
    position: "absolute",
    top: "-1.35em",
    left: "-2px",
    padding: "0 4px",
    borderRadius: "3px 3px 3px 0",
    fontSize: "11px",
    lineHeight: "1.35em",
    fontFamily: "system-ui, sans-serif",
    whiteSpace: "nowrap",
    pointerEvents: "none",
    zIndex: 10,
    opacity: 0.95,
  },
  ".collab-caret-label-below": {
    top: "1.35em",
    borderRadius: "0 3px 3px 3px",
  },
});

export default {
  template: `<div class="collab-editor"></div>`,
  props: {
    roomId: String,
    language: String,
    theme: String,
    maxChars: Number,
  },
  data() {
    return {};
  },
  watch: {
    language(value) {
      this.setLanguage(value);
    },
    theme(value) {
      this.setTheme(value);
    },
  },
  async mounted() {
    this.gen = 0;
    this.live = false; // welcomed on the current gen
    this.members = new Map(); // user_id -> {username, color}
    this.cursors = new Map(); // user_id -> {anchor, head} in local positions
    this.unsentEdits = 0;
    this.userId = null;
    this.helloTimer = null;
    this.helloAttempt = 0;
    this.cursorTimer = null;
    this.saveTimer = null;
    this.stopped = null; // a reason not to reconnect by ourselves (another tab took over)
    this.resendTimer = null;
    this.sentAt = 0; // when the in-flight batch was last sent
    this.lastNotice = new Map(); // notice key -> time shown, so that retries do not repeat it
    this.languageConfig = new CM.Compartment();
    this.themeConfig = new CM.Compartment();
    this.editableConfig = new CM.Compartment();

    await this.restoreOrFork();
    const self = this;
    this.view = new CM.EditorView({
      doc: this.localText(),
      parent: this.$el,
      extensions: [
        // The server splits lines at "\n" only: a "\r" is an ordinary character, never a line break
        // that CodeMirror would normalise away (the page's text would no longer be the room's).
        CM.EditorState.lineSeparator.of("\n"),
        CM.basicSetup,
        CM.keymap.of([CM.indentWithTab]),
        cursorField,
        cursorTheme,
        this.languageConfig.of([]),
        this.themeConfig.of([]),
        this.editableConfig.of([]),
        CM.EditorState.transactionFilter.of((tr) => self.filterTransaction(tr)),
        CM.EditorView.updateListener.of((update) => self.onViewUpdate(update)),
        CM.EditorView.theme({ "&": { height: "100%" }, ".cm-scroller": { overflow: "auto" } }),
      ],
    });
    this.setLanguage(this.language);
    this.setTheme(this.theme);
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
      if (event.data?.type === "who" && event.data.client_id === this.state.client_id) {
        this.channel.postMessage({ type: "mine", client_id: this.state.client_id });
      }
    };
    this.waitForSocket();
    this.publishStatus();
    this.statusTimer = setInterval(() => this.publishStatus(), 1000);
    window.collabEditor = this; // for the page's own buttons and for tests
  },
  beforeUnmount() {
    this.save();
    this.unmounted = true;
    for (const timer of [this.helloTimer, this.resendTimer, this.cursorTimer, this.saveTimer]) clearTimeout(timer);
    clearInterval(this.statusTimer);
    window.removeEventListener("pagehide", this.onPageHide);
    window.removeEventListener("pageshow", this.onPageShow);
    document.removeEventListener("visibilitychange", this.onVisibility);
    if (window.socket && this.onConnect) {
      window.socket.off("connect", this.onConnect);
      window.socket.off("disconnect", this.onDisconnect);
    }
    this.channel?.close();
    this.view?.destroy();
    if (window.collabEditor === this) window.collabEditor = undefined;
  },
  methods: {
    // --- state kept in sessionStorage -------------------------------------------------------
    storageKey() {
      return STORE + "room:" + this.roomId;
    },
    freshState() {
      return {
        client_id: "b-" + randomId(12),
        resume_token: randomId(16),
        epoch: null,
        version: null, // null: nothing from the server yet
        base: "",
        inflight: null, // {seq, changes: JSON}
        pending: null, // JSON
        next_seq: 1,
        unsent: 0,
      };
    },
    async restoreOrFork() {
      let state = null;
      try {
        state = JSON.parse(sessionStorage.getItem(this.storageKey()) || "null");
      } catch (e) {
        state = null;
      }
      // A duplicated tab copies sessionStorage, including a flag that says the tab is open (a
      // reload clears it first, on pagehide); the original tab owns those edits and that
      // client_id, so a copy starts as a new client from the server's text. The tabs are also
      // asked directly, for a copy made while the flag was down.
      const copied = sessionStorage.getItem(STORE + "open") === "1";
      sessionStorage.setItem(STORE + "open", "1");
      if (state && (copied || (await this.clientIdTaken(state.client_id)))) {
        state = null;
      }
      this.state = state || this.freshState();
      this.base = CM.Text.of(this.state.base.split("\n"));
      this.inflight = this.state.inflight
        ? { seq: this.state.inflight.seq, changes: CM.ChangeSet.fromJSON(this.state.inflight.changes) }
        : null;
      this.pending = this.state.pending ? CM.ChangeSet.fromJSON(this.state.pending) : null;
      this.unsentEdits = this.state.unsent || 0;
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
    localText() {
      let doc = this.base;
      if (this.inflight) doc = this.inflight.changes.apply(doc);
      if (this.pending) doc = this.pending.apply(doc);
      return doc;
    },
    save() {
      clearTimeout(this.saveTimer);
      this.saveTimer = null;
      const state = this.state;
      state.inflight = this.inflight ? { seq: this.inflight.seq, changes: this.inflight.changes.toJSON() } : null;
      state.pending = this.pending ? this.pending.toJSON() : null;
      state.unsent = this.unsentEdits;
      if (this.baseDirty) {
        state.base = this.base.toString();
        this.baseDirty = false;
      }
      try {
        sessionStorage.setItem(this.storageKey(), JSON.stringify(state));
      } catch (e) {
        console.warn("collab pad: could not keep unsent edits in sessionStorage", e);
      }
    },
    scheduleSave() {
      if (this.saveTimer === null) this.saveTimer = setTimeout(() => this.save(), 0);
    },

    // --- connection ---------------------------------------------------------------------------
    waitForSocket() {
      if (this.unmounted) return;
      if (!window.socket || !window.did_handshake) {
        setTimeout(() => this.waitForSocket(), 20);
        return;
      }
      this.onConnect = () => {
        // NiceGUI re-attaches this page after its handshake; say hello again on a new gen.
        this.live = false;
        this.publishStatus();
        if (!this.stopped) this.helloTimer = setTimeout(() => this.hello(), 50);
      };
      this.onDisconnect = () => {
        this.live = false;
        clearTimeout(this.helloTimer);
        clearTimeout(this.resendTimer);
        this.publishStatus();
      };
      window.socket.on("connect", this.onConnect);
      window.socket.on("disconnect", this.onDisconnect);
      this.hello();
    },
    hello() {
      clearTimeout(this.helloTimer);
      if (this.stopped) return;
      this.gen += 1;
      this.live = false;
      this.sendAfterFrame = false;
      const state = this.state;
      const message = {
        type: "hello",
        client_id: state.client_id,
        version: state.version,
        resume_token: state.resume_token,
        batch: true,
      };
      if (state.version !== null && state.epoch) message.epoch = state.epoch;
      this.emit(message);
      // A hello sent while the socket was reconnecting can be lost: try again until welcomed.
      const delay = HELLO_RETRY_MS[Math.min(this.helloAttempt, HELLO_RETRY_MS.length - 1)];
      this.helloAttempt += 1;
      this.helloTimer = setTimeout(() => {
        if (!this.live && window.socket?.connected) this.hello();
      }, delay);
      this.publishStatus();
    },
    rejoin() {
      // The user changed their name or colour, or takes the room back from another tab: a new
      // hello resumes where we are.
      this.stopped = null;
      this.setEditable(true);
      this.helloAttempt = 0;
      this.hello();
    },
    setEditable(editable) {
      this.view.dispatch({
        effects: this.editableConfig.reconfigure(
          editable ? [] : [CM.EditorState.readOnly.of(true), CM.EditorView.editable.of(false)],
        ),
      });
    },
    notice(key, level, message) {
      const now = Date.now();
      if (now - (this.lastNotice.get(key) || 0) < NOTICE_EVERY_MS) return;
      this.lastNotice.set(key, now);
      this.$emit("notice", { level, message });
    },
    offer(text, reason) {
      this.$emit("lost", { text, reason });
    },
    emit(message) {
      this.$emit("frame", { gen: this.gen, data: JSON.stringify(message) });
    },
    send(message) {
      if (this.live) this.emit(message);
    },
    receive(gen, data) {
      if (gen !== this.gen) return; // meant for an earlier hello
      let messages;
      try {
        const parsed = JSON.parse(data);
        messages = Array.isArray(parsed) ? parsed : [parsed];
      } catch (e) {
        console.error("collab pad: unreadable frame", e);
        this.resync();
        return;
      }
      let changed = false; // only these change what is kept in sessionStorage
      for (const message of messages) {
        try {
          this.handle(message);
        } catch (e) {
          console.error("collab pad: message failed", message.type, e);
          this.resync();
          return;
        }
        if (gen !== this.gen) return; // the handler started a new hello
        changed ||= message.type === "welcome" || message.type === "update" || message.type === "error";
      }
      if (this.sendAfterFrame) {
        this.sendAfterFrame = false;
        if (this.inflight) this.sendInflight();
        else this.flush();
        this.sendCursor();
      }
      if (changed) this.scheduleSave();
    },
    closed(gen, code, reason) {
      if (gen !== this.gen) return;
      this.live = false;
      if (code === 4001) {
        this.stopped = "This room was opened again in another tab or window; edits here are paused.";
        this.setEditable(false);
        clearTimeout(this.resendTimer);
        this.$emit("paused", { message: this.stopped });
      } else if (code === 1012) {
        // The server is restarting: NiceGUI reloads the page when it is back; until then, keep
        // trying (edits stay in sessionStorage).
        this.helloAttempt = 1;
        this.helloTimer = setTimeout(() => this.hello(), 1000);
      } else {
        this.helloTimer = setTimeout(() => this.hello(), 500 + Math.random() * 1000);
      }
      this.publishStatus();
    },
    resync() {
      // Our copy no longer fits the server's: ask for a snapshot (unconfirmed work is offered to
      // the user by welcome if it cannot be kept).
      this.state.version = null;
      this.hello();
    },

    // --- protocol -----------------------------------------------------------------------------
    handle(message) {
      switch (message.type) {
        case "welcome":
          return this.onWelcome(message);
        case "update":
          return this.onUpdate(message);
        case "ack":
          return this.onAck(message);
        case "cursor":
          return this.onCursor(message);
        case "member_joined":
          this.members.set(message.user_id, { username: message.username, color: message.color });
          return this.publishStatus();
        case "member_left":
          this.members.delete(message.user_id);
          if (this.cursors.delete(message.user_id)) this.drawCursors();
          return this.publishStatus();
        case "language":
          return this.setLanguage(message.language);
        case "ping":
          return this.send({ type: "pong" });
        case "pong":
          return;
        case "error":
          return this.onError(message);
      }
    },
    onWelcome(message) {
      clearTimeout(this.helloTimer);
      this.helloAttempt = 0;
      const state = this.state;
      this.userId = message.user_id;
      if (Number.isSafeInteger(message.max_change_parts)) this.maxChangeParts = message.max_change_parts;
      const lastSeq = message.last_seq ?? null;
      if (lastSeq !== null && state.version !== null && lastSeq >= state.next_seq) {
        // The room applied a push of ours that this state never made: it is an older copy of
        // this tab's state (restored, or copied). Its unconfirmed work may already be in the
        // room: start from the room's text and offer ours instead of sending it twice.
        const mine = this.view.state.doc.toString();
        const hadWork = this.inflight !== null || this.pending !== null;
        this.inflight = null;
        this.pending = null;
        this.unsentEdits = 0;
        state.next_seq = lastSeq + 1;
        this.resync();
        if (hadWork) this.offer(mine, "stale");
        return;
      }
      const newEpoch = state.epoch !== null && state.epoch !== message.epoch;
      state.epoch = message.epoch;
      if (lastSeq !== null) state.next_seq = Math.max(state.next_seq, lastSeq + 1);
      this.members = new Map(message.members.map((m) => [m.user_id, { username: m.username, color: m.color }]));
      this.cursors.clear();
      if (message.doc !== undefined && message.doc !== null) {
        const applied =
          this.inflight && message.last_seq !== undefined && message.last_seq !== null && this.inflight.seq <= message.last_seq;
        const lost = this.pending !== null || (this.inflight !== null && !applied);
        const mine = this.view.state.doc.toString();
        clearTimeout(this.resendTimer);
        this.base = CM.Text.of(message.doc.split("\n"));
        this.baseDirty = true;
        state.version = message.version;
        this.inflight = null;
        this.pending = null;
        this.unsentEdits = 0;
        this.replaceAll(message.doc);
        if (newEpoch && mine !== message.doc) {
          // The room's document was started again (a restart of a server that keeps rooms in
          // memory, or a room unloaded and reset): our text is not in it.
          this.offer(mine, "reset");
        } else if (lost && mine !== message.doc) {
          this.offer(mine, "history");
        }
      } else if (message.version !== state.version) {
        return this.resync();
      }
      this.live = true;
      this.drawCursors();
      this.setLanguage(message.language);
      // The catch-up follows the welcome in the same frame: unconfirmed work is sent once it is
      // rebased over it (at the current version), not at the version we said hello at, which
      // may be too far behind for the server to rebase (`resync`).
      this.sendAfterFrame = true;
      this.publishStatus();
    },
    onUpdate(message) {
      const state = this.state;
      if (message.version <= state.version) return; // already applied (a repeated message)
      // A gap (messages lost on the way): resume from our version, the catch-up fills it.
      if (message.version !== state.version + 1) return this.hello();
      const inflight = this.inflight;
      if (inflight && message.client_id === state.client_id && message.seq === inflight.seq) {
        this.base = inflight.changes.apply(this.base);
        this.baseDirty = true;
        state.version = message.version;
        return this.confirmed();
      }
      let remote = CM.ChangeSet.fromJSON(message.changes);
      this.base = remote.apply(this.base);
      this.baseDirty = true;
      state.version = message.version;
      if (inflight) {
        const rebased = inflight.changes.map(remote);
        remote = remote.map(inflight.changes, true);
        this.inflight = { seq: inflight.seq, changes: rebased, coarse: inflight.coarse };
      }
      if (this.pending) {
        const pending = this.pending.map(remote);
        remote = remote.map(this.pending, true);
        this.pending = pending;
      }
      this.view.dispatch({
        changes: remote,
        annotations: [CM.Transaction.remote.of(true), CM.Transaction.addToHistory.of(false)],
      });
      this.publishStatus();
    },
    onAck(message) {
      // Our in-flight batch changed nothing on the server (what it deleted was deleted already,
      // say): no version was made, `base` stays as it is.
      const inflight = this.inflight;
      if (!inflight || message.seq !== inflight.seq || message.version !== this.state.version) return;
      this.confirmed();
    },
    confirmed() {
      this.inflight = null;
      this.failures = 0;
      clearTimeout(this.resendTimer);
      if (!this.pending) {
        this.unsentEdits = 0;
        // A cursor sent while edits were unconfirmed was placed before them: send the real one.
        if (this.cursorTimer === null) this.cursorTimer = setTimeout(() => this.sendCursor(), CURSOR_THROTTLE_MS);
      }
      this.flush();
      this.publishStatus();
      this.scheduleSave();
    },
    onCursor(message) {
      if (message.user_id === this.userId || message.version !== this.state.version) return;
      const local = this.unconfirmed();
      const toLocal = (pos) => (local ? local.mapPos(pos, -1) : pos);
      const length = this.view.state.doc.length;
      const anchor = Math.min(toLocal(message.anchor), length);
      const head = Math.min(toLocal(message.head), length);
      this.cursors.set(message.user_id, { anchor, head });
      this.drawCursors();
    },
    onError(message) {
      console.warn("collab pad:", message.code, message.message);
      if (message.code === "rate_limited") {
        const wait = Math.max(0.2, message.retry_after || 1) * 1000;
        if (!this.live) {
          this.helloTimer = setTimeout(() => this.hello(), wait);
          return;
        }
        clearTimeout(this.resendTimer);
        this.resendTimer = setTimeout(() => (this.inflight ? this.sendInflight() : this.flush()), wait);
        return;
      }
      if (message.code === "internal_error") return this.retryAfterFailure();
      if (message.code === "resync") {
        // Our batch was too far behind to be rebased by the server: catch up from our version
        // (welcome rebases the batch over the catch-up and sends it again, same seq, at the
        // current version). Kept as it is: one replacement made now would be merged over the
        // whole catch-up and could bring back text others deleted meanwhile.
        if (message.seq !== undefined && message.seq !== this.inflight?.seq) return; // a late answer
        this.live = false;
        return this.hello();
      }
      if (message.code === "too_complex" && this.inflight) {
        // Our batch grew past the server's limit while we rebased it over others' edits; it was
        // not applied, so send it as one replacement. Once only: a second answer is to an
        // earlier send of the same batch, and answers about another seq are late ones.
        if (message.seq !== undefined && message.seq !== this.inflight.seq) return;
        if (this.inflight.coarse) return;
        this.inflight = {
          seq: this.inflight.seq,
          changes: this.coarsened(this.inflight.changes, this.base),
          coarse: true,
        };
        return this.sendInflight();
      }
      if (message.code === "invalid_message" && this.inflight) return this.resync();
      if (message.code === "client_id_in_use" || message.code === "seq_reused") {
        // Another copy of this tab holds our client_id: carry on as a new client, keeping
        // our unconfirmed text for the user.
        const mine = this.view.state.doc.toString();
        const hadWork = this.inflight || this.pending;
        Object.assign(this.state, this.freshState());
        this.base = CM.Text.of([""]);
        this.inflight = null;
        this.pending = null;
        this.unsentEdits = 0;
        this.hello();
        if (hadWork) this.offer(mine, "duplicate");
        return;
      }
      if (message.code === "room_full" || message.code === "server_restarting") {
        this.live = false;
        this.helloTimer = setTimeout(() => this.hello(), 3000);
        this.notice(message.code, "warning", message.message);
        return;
      }
      if (["version_too_old", "invalid_changes", "too_large", "invalid_version", "too_complex"].includes(message.code)) {
        // The server refused our batch: start again from its text and offer ours to the user.
        this.notice(message.code, "negative", message.message);
        this.resync();
        return;
      }
      this.notice(message.code, "warning", message.message);
    },
    retryAfterFailure() {
      // The server failed to handle a message. Say hello again, later each time; when it keeps
      // failing, offer the user their text (it stays here and is sent again once it works).
      this.failures = (this.failures || 0) + 1;
      this.live = false;
      clearTimeout(this.helloTimer);
      clearTimeout(this.resendTimer);
      const step = FAILURE_RETRY_MS[Math.min(this.failures - 1, FAILURE_RETRY_MS.length - 1)];
      this.helloTimer = setTimeout(() => this.hello(), step * (0.75 + Math.random() / 2));
      if (this.failures === FAILURES_BEFORE_OFFER && (this.inflight || this.pending)) {
        this.offer(this.view.state.doc.toString(), "failing");
      }
      this.publishStatus();
    },
    coarsened(changes, doc) {
      // More parts than the server takes in one push: send one replacement of the span the
      // changes touch instead (the same result), built against the text they apply to.
      let from = -1;
      let toA = 0;
      let toB = 0;
      changes.iterChangedRanges((fromA, endA, fromB, endB) => {
        if (from < 0) from = fromA;
        toA = endA;
        toB = endB;
      });
      if (from < 0) return changes;
      const after = changes.apply(doc);
      return CM.ChangeSet.of({ from, to: toA, insert: after.slice(from, toB) }, changes.length);
    },
    unconfirmed() {
      if (this.inflight && this.pending) return this.inflight.changes.compose(this.pending);
      return this.inflight ? this.inflight.changes : this.pending;
    },
    flush() {
      if (!this.live || this.inflight || !this.pending) return;
      let changes = this.pending;
      const limit = this.maxChangeParts;
      if (limit && changes.toJSON().length > limit) changes = this.coarsened(changes, this.base);
      this.inflight = { seq: this.state.next_seq, changes };
      this.state.next_seq += 1;
      this.pending = null;
      this.sendInflight();
    },
    sendInflight() {
      this.send({
        type: "push",
        version: this.state.version,
        seq: this.inflight.seq,
        changes: this.inflight.changes.toJSON(),
      });
      this.sentAt = Date.now();
      // A push can be refused without a reply (a second rate-limit refusal within a second):
      // send it again until it is confirmed. The server applies a seq once.
      clearTimeout(this.resendTimer);
      this.resendTimer = setTimeout(() => {
        if (this.live && this.inflight) this.sendInflight();
      }, RESEND_MS);
      this.scheduleSave();
    },
    sendCursor() {
      clearTimeout(this.cursorTimer);
      this.cursorTimer = null;
      if (!this.live) return;
      const selection = this.view.state.selection.main;
      const local = this.unconfirmed();
      // Our selection in the server's text at `version`: back through our unconfirmed changes.
      const toServer = (pos) => (local ? local.invertedDesc.mapPos(pos, -1) : pos);
      this.send({ type: "cursor", version: this.state.version, anchor: toServer(selection.anchor), head: toServer(selection.head) });
    },

    // --- the editor -----------------------------------------------------------------------------
    filterTransaction(tr) {
      if (!tr.docChanged || tr.annotation(CM.Transaction.remote)) return tr;
      if (this.maxChars && tr.newDoc.length > this.maxChars && tr.newDoc.length > tr.startState.doc.length) {
        this.notice("max_chars", "warning", `The document is limited to ${this.maxChars.toLocaleString()} characters.`);
        return [];
      }
      return tr;
    },
    onViewUpdate(update) {
      if (update.docChanged) {
        // Remote cursors are kept in local positions: move them with every change, so that a
        // redraw (another cursor moving, someone leaving) puts them where they are now.
        for (const cursor of this.cursors.values()) {
          cursor.anchor = update.changes.mapPos(cursor.anchor, -1);
          cursor.head = update.changes.mapPos(cursor.head, -1);
        }
      }
      let local = false;
      for (const tr of update.transactions) {
        if (!tr.docChanged || tr.annotation(CM.Transaction.remote)) continue;
        this.pending = this.pending ? this.pending.compose(tr.changes) : tr.changes;
        this.unsentEdits += 1;
        local = true;
      }
      if (local) {
        this.flush();
        this.scheduleSave();
        this.publishStatus();
      }
      if ((update.selectionSet || local) && this.cursorTimer === null) {
        this.cursorTimer = setTimeout(() => this.sendCursor(), CURSOR_THROTTLE_MS);
      }
    },
    replaceAll(text) {
      // Only what differs, so that the caret and the view stay where they are.
      const current = this.view.state.doc.toString();
      if (current === text) return;
      const most = Math.min(current.length, text.length);
      let start = 0;
      while (start < most && current.charCodeAt(start) === text.charCodeAt(start)) start++;
      let end = 0;
      while (
        end < most - start &&
        current.charCodeAt(current.length - 1 - end) === text.charCodeAt(text.length - 1 - end)
      )
        end++;
      this.view.dispatch({
        changes: {
          from: start,
          to: current.length - end,
          insert: CM.Text.of(text.slice(start, text.length - end).split("\n")),
        },
        annotations: [CM.Transaction.remote.of(true), CM.Transaction.addToHistory.of(false)],
      });
    },
    drawCursors() {
      const ranges = [];
      const length = this.view.state.doc.length;
      for (const [userId, cursor] of this.cursors) {
        const member = this.members.get(userId);
        if (!member) continue;
        const from = Math.min(cursor.anchor, cursor.head, length);
        const to = Math.min(Math.max(cursor.anchor, cursor.head), length);
        if (from < to) {
          ranges.push(
            CM.Decoration.mark({ attributes: { style: `background-color: ${member.color}33` } }).range(from, to),
          );
        }
        const head = Math.min(cursor.head, length);
        const below = this.view.state.doc.lineAt(head).number === 1;
        ranges.push(
          CM.Decoration.widget({ widget: new CaretWidget(member.username, member.color, below), side: 1 }).range(head),
        );
      }
      this.view.dispatch({ effects: setCursors.of(CM.Decoration.set(ranges, true)) });
    },
    findLanguage(name) {
      if (!name) return null;
      const wanted = name.toLowerCase();
      for (const language of CM.languages)
        for (const alias of [language.name, ...language.alias]) if (alias.toLowerCase() === wanted) return language;
      return null;
    },
    setLanguage(name) {
      if (!this.view) return;
      const description = this.findLanguage(name);
      if (!description) {
        this.wantedLanguage = name;
        this.view.dispatch({ effects: this.languageConfig.reconfigure([]) });
        return;
      }
      this.wantedLanguage = name;
      description.load().then((support) => {
        if (this.wantedLanguage === name) this.view.dispatch({ effects: this.languageConfig.reconfigure([support]) });
      });
    },
    setTheme(name) {
      if (!this.view) return;
      const theme = name === "dark" ? CM.oneDark : [];
      this.view.dispatch({ effects: this.themeConfig.reconfigure(theme) });
    },

    // --- for the page ---------------------------------------------------------------------------
    status() {
      const connected = !!window.socket?.connected;
      const unconfirmed = this.inflight !== null || this.pending !== null;
      let state = "connected";
      if (this.stopped) state = "paused";
      else if (!connected) state = "offline";
      else if (!this.live) state = "reconnecting";
      // Unconfirmed for a while although connected: worth showing too.
      const stalled = this.inflight !== null && Date.now() - this.sentAt > RESEND_MS;
      return {
        state,
        stalled,
        unsent: unconfirmed ? Math.max(this.unsentEdits, 1) : 0,
        version: this.state.version,
        message: this.stopped,
      };
    },
    publishStatus() {
      window.dispatchEvent(new CustomEvent("collab-status", { detail: this.status() }));
    },
    text() {
      return this.view.state.doc.toString();
    },
    setText(text) {
      // "Use my version": one local edit that replaces the whole text, merged like any other.
      this.view.dispatch({
        changes: { from: 0, to: this.view.state.doc.length, insert: CM.Text.of(text.split("\n")) },
        userEvent: "input.replace",
      });
    },
    download(filename) {
      const blob = new Blob([this.text()], { type: "text/plain;charset=utf-8" });
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = filename;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    },
    focus() {
      this.view.focus();
    },
  },
};
