// The collaborative editor: CodeMirror 6 speaking the versioned protocol (docs/protocol.md) over
// NiceGUI's bridge. Browser -> server: this.$emit("frame", {gen, data}); server -> browser:
// receive(gen, data), where data is one protocol message, or a JSON array of them (batch).
//
// Every protocol decision is made by the client in collab_client.js (served as a dependency of
// this component); this file is its shell: the editor, the bridge, timers, and what the page is
// told ("frame", "lost", "notice", "paused", "members", "activity"; "access", "notes" and "link"
// from collab_access.js; "question", "runs"). The client's state is kept in sessionStorage
// (collab_tabs.js), so a reconnect or a page reload (a server restart) resends unconfirmed work,
// which the server applies exactly once.
//
// `gen` numbers the hellos of this page: a reconnect says hello again with a new gen, and
// anything still arriving for an older one is ignored. Runs: messages about runs, question and
// runs_allowed go to the panel (ui/collab_runs.js) as window events "collab-run", {type: "run_welcome"}
// before a welcome's burst, {type: "run_state"} (live, gen too) when runState() changes; it sends with sendRun().
import * as CM from "nicegui-codemirror";
import { replacement } from "collab_client";
import { remoteCarets, caretDecorations } from "collab_carets";
import { tabMethods } from "collab_tabs";
import { CLOSE_REVOKED, accessMethods } from "collab_access";

const HELLO_RETRY_MS = [2000, 4000, 8000];
const CURSOR_THROTTLE_MS = 80;
const RESEND_MS = 3000; // an unconfirmed batch is sent again (same seq: applied once) after this
const NOTICE_EVERY_MS = 5000;
// After a server failure (internal_error) the hello is retried after a growing delay, not at
// once: a failure that repeats must not become a loop. After FAILURES_BEFORE_OFFER in a row the
// user is offered their text, as when work cannot be merged.
const FAILURE_RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
const FAILURES_BEFORE_OFFER = 3;
// A member is shown typing for this long after an update of theirs arrived.
const TYPING_MS = 2000;
const RUNNABLE = new Set(["python", "javascript"]);
const RUN_LIMITS = { timeoutSeconds: 10, maxOutputChars: 20000 }; // the server's defaults, until a welcome
const REMOTE = [CM.Transaction.remote.of(true), CM.Transaction.addToHistory.of(false)];

export default {
  template: `<div class="collab-editor"></div>`,
  props: { roomId: String, language: String, theme: String, maxChars: Number, readOnly: Boolean },
  watch: { language: "setLanguage", theme: "setTheme" },
  async mounted() {
    this.gen = this.helloAttempt = this.failures = 0;
    this.helloTimer = this.resendTimer = this.cursorTimer = this.saveTimer = this.typingTimer = null;
    this.stopped = null; // a reason not to reconnect by ourselves (another tab took over, no access)
    this.denied = null; // the room refused this page for good (collab_access.js)
    this.accessShown = null; // the last access event, so that only changes are emitted
    this.sentAt = 0; // when the in-flight batch was last sent
    this.lastNotice = new Map(); // notice key -> time shown, so that retries do not repeat it
    // What the page shows of the room besides its members, as this connection heard it.
    this.roomLanguage = null; // from the last welcome or language message
    this.typedAt = new Map(); // user_id -> when an update of theirs arrived (performance.now())
    this.activityShown = null; // the last activity event, so that only changes are emitted
    this.runLimits = RUN_LIMITS;
    this.question = { id: null, testLanguages: [] }; // the room's question, as last heard
    this.runReports = new Map(); // "question" / "runs" -> the last one emitted
    for (const name of ["languageConfig", "themeConfig", "editableConfig"]) this[name] = new CM.Compartment();

    await this.restoreOrFork();
    // The page's own buttons and the tests read the client's state as fields of the editor.
    const field = (name, get, set) => Object.defineProperty(this, name, { get, set, configurable: true });
    field("live", () => this.client.live, (value) => (this.client.live = value));
    field("inflight", () => this.client.inflight);
    field("pending", () => this.client.pending);
    field("state", () => this.client);
    const self = this;
    this.view = new CM.EditorView({
      doc: this.client.text,
      parent: this.$el,
      extensions: [
        // The server splits lines at "\n" only: a "\r" is an ordinary character, never a line break
        // that CodeMirror would normalise away (the page's text would no longer be the room's).
        CM.EditorState.lineSeparator.of("\n"),
        CM.basicSetup,
        CM.keymap.of([CM.indentWithTab]),
        remoteCarets,
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
    if (this.readOnly) this.setEditable(false); // until the room says what this member may do
    this.watchTab();
    this.waitForSocket();
    this.publishStatus();
    this.statusTimer = setInterval(() => this.publishStatus(), 1000);
    window.collabEditor = this; // for the page's own buttons and for tests
  },
  beforeUnmount() {
    if (this.client) this.save();
    this.unmounted = true;
    for (const timer of [this.helloTimer, this.resendTimer, this.cursorTimer, this.saveTimer, this.typingTimer])
      clearTimeout(timer);
    clearInterval(this.statusTimer);
    this.unwatchTab();
    if (window.socket && this.onConnect) {
      window.socket.off("connect", this.onConnect);
      window.socket.off("disconnect", this.onDisconnect);
    }
    this.view?.destroy();
    if (window.collabEditor === this) window.collabEditor = undefined;
  },
  methods: {
    ...tabMethods,
    ...accessMethods,

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
      this.emit(this.client.hello());
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
      this.stopped = this.denied = null;
      this.setEditable(this.client.mayEdit);
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
    emitMembers() {
      this.$emit("members", { gen: this.gen, self: this.client.userId, members: this.client.memberList() });
      this.publishStatus();
    },
    noteActivity(out) {
      if (out.language !== null) this.roomLanguage = out.language;
      // The catch-up that follows a welcome is what others did while we were away, not typing now;
      // our own updates are never shown as typing.
      if (!out.welcomed) {
        const now = performance.now();
        for (const userId of out.authors) if (userId !== this.client.userId) this.typedAt.set(userId, now);
      }
      this.expireTyping();
    },
    expireTyping() {
      clearTimeout(this.typingTimer); // one timer, set for the first entry to expire
      const now = performance.now();
      let next = Infinity;
      for (const [userId, at] of this.typedAt) {
        if (now - at >= TYPING_MS) this.typedAt.delete(userId);
        else next = Math.min(next, at + TYPING_MS);
      }
      this.typingTimer = next === Infinity ? null : setTimeout(() => this.expireTyping(), next - now);
      this.emitActivity();
    },
    emitActivity() {
      // Every generation reports at least once (its welcome brings the language): the server
      // reads only the current generation's events.
      const typing = [...this.typedAt.keys()].sort();
      const shown = JSON.stringify([this.gen, this.roomLanguage, typing]);
      if (shown === this.activityShown) return;
      this.activityShown = shown;
      this.$emit("activity", { gen: this.gen, language: this.roomLanguage, typing });
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
        this.client.forgetVersion();
        return this.hello();
      }
      for (const message of messages) {
        if (message?.type === "error") console.warn("collab pad:", message.code, message.message);
      }
      const out = this.client.receive(messages);
      if (out.failure) console.error("collab pad: message failed", out.failure.type, out.failure.error);
      for (const changes of out.changes) this.view.dispatch({ changes, annotations: REMOTE });
      if (out.welcomed) {
        clearTimeout(this.helloTimer);
        this.helloAttempt = 0;
      }
      if (out.language !== null) this.setLanguage(out.language);
      if (out.members) this.emitMembers();
      if (out.access) this.applyAccess();
      if (out.notes !== null) this.emitNotes(out.notes);
      this.emitLinks(out.links);
      this.noteActivity(out);
      this.noteRuns(messages, out);
      if (out.cursors) this.drawCursors();
      if (out.offer) this.offer(out.offer.text, out.offer.reason);
      if (out.notice) this.notice(out.notice.key, out.notice.level, out.notice.message);
      if (out.confirmed) {
        this.failures = 0;
        // A cursor sent while edits were unconfirmed was placed before them: send the real one.
        if (!this.client.pending) this.scheduleCursor();
      }
      if (!this.client.inflight) clearTimeout(this.resendTimer);
      for (const message of out.send) {
        if (message.type === "push") this.sendPush(message);
        else this.send(message);
      }
      if (out.welcomed && !out.hello) this.sendCursor();
      if (out.error) this.onError(out.error);
      if (out.denied !== null) this.deny(out.denied);
      if (out.hello) this.hello();
      if (out.changes.length || out.welcomed || out.confirmed || out.hello || out.due) this.scheduleSave();
      this.publishStatus();
    },
    closed(gen, code, reason) {
      if (gen !== this.gen) return;
      this.client.closed();
      this.emitMembers();
      if (code === 4001) {
        this.stopped = "This room was opened again in another tab or window; edits here are paused.";
        this.setEditable(false);
        clearTimeout(this.resendTimer);
        this.$emit("paused", { message: this.stopped });
      } else if (code === CLOSE_REVOKED) {
        this.deny(reason);
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
    onError(message) {
      // The errors whose answer takes a wait; the client has decided everything else.
      if (message.code === "rate_limited") {
        const wait = Math.max(0.2, message.retry_after || 1) * 1000;
        if (!this.live) {
          this.helloTimer = setTimeout(() => this.hello(), wait);
          return;
        }
        clearTimeout(this.resendTimer);
        this.resendTimer = setTimeout(() => this.resend(), wait);
      } else if (message.code === "internal_error") {
        this.retryAfterFailure();
      } else {
        // room_full, server_restarting
        this.helloTimer = setTimeout(() => this.hello(), 3000);
        this.notice(message.code, "warning", message.message);
      }
    },
    retryAfterFailure() {
      // The server failed to handle a message. Say hello again, later each time; when it keeps
      // failing, offer the user their text (it stays here and is sent again once it works).
      this.failures += 1;
      this.live = false;
      clearTimeout(this.helloTimer);
      clearTimeout(this.resendTimer);
      const step = FAILURE_RETRY_MS[Math.min(this.failures - 1, FAILURE_RETRY_MS.length - 1)];
      this.helloTimer = setTimeout(() => this.hello(), step * (0.75 + Math.random() / 2));
      if (this.failures === FAILURES_BEFORE_OFFER && (this.client.inflight || this.client.pending)) {
        this.offer(this.client.text.toString(), "failing");
      }
    },
    flush() {
      const push = this.client.flush();
      if (push) this.sendPush(push);
    },
    resend() {
      const push = this.client.resend();
      if (push) this.sendPush(push);
    },
    sendPush(push) {
      this.send(push);
      this.sentAt = Date.now();
      // A push can be refused without a reply (a second rate-limit refusal within a second):
      // send it again until it is confirmed. The server applies a seq once.
      clearTimeout(this.resendTimer);
      this.resendTimer = setTimeout(() => {
        if (this.live && this.client.inflight) this.resend();
      }, RESEND_MS);
      this.scheduleSave();
    },
    scheduleCursor() {
      if (this.cursorTimer === null) this.cursorTimer = setTimeout(() => this.sendCursor(), CURSOR_THROTTLE_MS);
    },
    sendCursor() {
      clearTimeout(this.cursorTimer);
      this.cursorTimer = null;
      const selection = this.view.state.selection.main;
      const message = this.client.cursor(selection.anchor, selection.head);
      if (message) this.send(message);
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
      let local = false;
      for (const tr of update.transactions) {
        if (!tr.docChanged || tr.annotation(CM.Transaction.remote)) continue;
        this.client.edit(tr.changes);
        local = true;
      }
      if (local) {
        this.flush();
        this.scheduleSave();
        this.publishStatus();
      }
      if (update.selectionSet || local) this.scheduleCursor();
    },
    replaceAll(text) {
      // What a snapshot does to the editor: only what differs changes.
      const changes = replacement(CM, this.view.state.doc.toString(), text);
      this.view.dispatch({ changes, annotations: REMOTE });
    },
    drawCursors() {
      const carets = [];
      for (const [userId, cursor] of this.client.cursors) {
        const member = this.client.members.get(userId);
        if (member) carets.push({ ...cursor, name: member.username, color: member.color });
      }
      this.view.dispatch({ effects: caretDecorations(this.view.state, carets) });
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
      this.wantedLanguage = name;
      if (!description) return this.view.dispatch({ effects: this.languageConfig.reconfigure([]) });
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
      const client = this.client;
      const unconfirmed = client.inflight !== null || client.pending !== null;
      let state = "connected";
      if (this.denied) state = "denied";
      else if (this.stopped) state = "paused";
      else if (!connected) state = "offline";
      else if (!this.live) state = "reconnecting";
      // Unconfirmed for a while although connected: worth showing too.
      const stalled = client.inflight !== null && Date.now() - this.sentAt > RESEND_MS;
      const unsent = unconfirmed ? Math.max(client.unsent, 1) : 0;
      return { state, stalled, unsent, version: client.version, message: this.stopped };
    },
    publishStatus() {
      window.dispatchEvent(new CustomEvent("collab-status", { detail: this.status() }));
      this.publishRunState();
    },

    // --- runs (ui/collab_runs.js) ---------------------------------------------------------------
    noteRuns(messages, out) {
      const welcome = out.welcomed ? messages.find((message) => message?.type === "welcome") : null;
      if (welcome) {
        const { run_timeout_seconds: timeout, max_run_output_chars: chars } = welcome;
        this.runLimits = {
          timeoutSeconds: typeof timeout === "number" && timeout > 0 ? timeout : RUN_LIMITS.timeoutSeconds,
          maxOutputChars: Number.isSafeInteger(chars) && chars > 0 ? chars : RUN_LIMITS.maxOutputChars,
        };
        this.question = { id: null, testLanguages: [] }; // the burst that follows tells the current one
        window.dispatchEvent(new CustomEvent("collab-run", { detail: { type: "run_welcome" } })); // then the burst
      }
      for (const message of out.runs) {
        if (message.type === "question") {
          const languages = message.question_id ? message.test_languages ?? Object.keys(message.starters ?? {}) : [];
          this.question = { id: message.question_id ?? null, testLanguages: languages };
        }
        window.dispatchEvent(new CustomEvent("collab-run", { detail: message }));
      }
      if (out.welcomed || out.runs.length) {
        this.report("question", { question_id: this.question.id });
        this.report("runs", { allowed: this.client.runsAllowed === true });
      }
    },
    report(kind, value) {
      const shown = JSON.stringify([this.gen, value]); // each generation once, then changes only
      if (this.runReports.get(kind) !== shown) this.$emit(kind, { gen: this.gen, ...value });
      this.runReports.set(kind, shown);
    },
    runState() {
      const { client, question } = this;
      const language = this.roomLanguage ?? this.language ?? null;
      let reason = this.denied || this.stopped || null;
      if (reason) reason = String(reason);
      else if (client.role === "observer") reason = "Observers watch the runs; they cannot start one.";
      else if (!client.mayRun) reason = client.ended ? "The interview has ended." : "Running code is turned off.";
      else if (!RUNNABLE.has(String(language).toLowerCase())) reason = "Only Python and JavaScript run here.";
      else if (!this.live) reason = "Not connected to the room.";
      const { testLanguages, id: questionId } = question, live = !!this.live, role = client.role ?? null;
      return { type: "run_state", mayRun: !reason, reason, language, ...this.runLimits, questionId, testLanguages,
        live, gen: this.gen, role }; // the panel ends its run when its connection (gen) is gone
    },
    publishRunState() {
      const state = this.client && JSON.stringify(this.runState());
      if (!state || state === this.runStateShown) return;
      this.runStateShown = state;
      window.dispatchEvent(new CustomEvent("collab-run", { detail: JSON.parse(state) }));
    },
    sendRun(message) {
      if (this.live) this.emit(message);
      return this.live; // false: not connected, nothing sent
    },
    // The code to run and the room's version it is based on (settled: none of it is unconfirmed).
    runSource() {
      const { client } = this;
      return { code: this.text(), version: client.version, settled: !client.inflight && !client.pending };
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
