// The client side of the versioned protocol (docs/protocol.md), without any I/O: messages in,
// what to do out. It runs in the page (ui/collab_editor.js performs what it asks: editor
// changes, frames to send, hellos, notices) and under node in tests/test_client_differential.py,
// which holds it to rooms/replica.py, the reference implementation of the same algorithm.
//
// It imports nothing: it is given CodeMirror's ChangeSet and Text (from @codemirror/state, or the
// page's CodeMirror bundle), so the same classes work in either place.
//
// State: `version` (the last server version applied; null when a snapshot is due), `base` (the
// server's text at `version`), `inflight` (one sent batch with its seq) and `pending` (local
// changes composed, not sent). The editor always shows base + inflight + pending: every change
// it is asked to make keeps that true, and the view hands every local change to `edit`. While
// `version` is null, `base` is just the text shown (a snapshot replaces it).
//
// In a private room the welcome gives the member's role, and says whether the room is locked or
// ended, as do `locked` and `ended` later: `mayEdit` and `cursor` follow the server's permission
// table (rooms/access.py). A join refused with `forbidden` (a revoked link, the end of the
// interview) is final: `denied` says so, and no hello follows. Interviewers are told of every
// change to a shared role's link (`link`): `links` in the outcome.

const REMOTE_ONLY_ERRORS = new Set(["rate_limited", "internal_error", "room_full", "server_restarting"]);
const SHARED_ROLES = new Set(["candidate", "observer"]); // the roles whose links interviewers share
// For the page as they are (ui/collab_runs.js), like every message about a run (with a run_id).
const PAGE_MESSAGES = new Set(["question", "runs_allowed"]);
const REFUSED = new Set(["version_too_old", "invalid_changes", "too_large", "invalid_version", "too_complex", "read_only"]);

function newOutcome() {
  return {
    changes: [], // ChangeSets for the editor, in order, each made on the text after the previous
    send: [], // messages to send now, in order
    hello: false, // say hello again (at `version`; a snapshot when it is null)
    offer: null, // {text, reason}: local work the room will not get, for the user to keep
    notice: null, // {key, level, message}
    error: null, // an error whose answer needs timers: the view's
    language: null,
    authors: [], // the user_id of each update applied, in order (our own confirmed ones too)
    welcomed: false,
    confirmed: false, // the batch in flight was confirmed
    members: false, // the member list changed
    cursors: false, // a remote cursor changed
    access: false, // the role, the lock or the end changed
    notes: null, // the interviewers' notes (sent to interviewers only)
    runs: [], // run_started, run_cases, run_output, run_ended, question, runs_allowed, errors about a run
    links: {}, // role -> the secret of its live link, or null: none (sent to interviewers only)
    denied: null, // the server refused our hello for good: its reason
    failure: null, // a message that could not be handled (the client resynchronises)
    due: false, // unconfirmed work is sent once the whole frame is handled
  };
}

// `current` becomes `text` by a replacement of the differing middle only, so that the caret and
// the view stay in place.
export function replacement({ ChangeSet, Text }, current, text) {
  const most = Math.min(current.length, text.length);
  let start = 0;
  while (start < most && current.charCodeAt(start) === text.charCodeAt(start)) start++;
  let end = 0;
  while (end < most - start && current.charCodeAt(current.length - 1 - end) === text.charCodeAt(text.length - 1 - end))
    end++;
  const insert = Text.of(text.slice(start, text.length - end).split("\n")); // "\r" stays a character
  return ChangeSet.of({ from: start, to: current.length - end, insert }, current.length);
}

const member = (m) => ({ username: m.username, color: m.color, role: m.role ?? null });

export class CollabClient {
  // cm: {ChangeSet, Text}; saved: a toJSON() result or null; newIdentity: () => {clientId,
  // resumeToken}, for a new client (and for a copy of another one, which must become new).
  constructor(cm, saved, newIdentity) {
    this.ChangeSet = cm.ChangeSet;
    this.Text = cm.Text;
    this.newIdentity = newIdentity;
    this.live = false; // welcomed since the last hello: pushes may go out
    this.userId = null;
    this.maxChangeParts = null;
    this.members = new Map(); // user_id -> {username, color}
    this.cursors = new Map(); // user_id -> {anchor, head}, in positions of the text shown
    this.role = null; // in a private room: interviewer, candidate or observer
    this.locked = false;
    this.ended = false;
    if (saved) this.restore(saved);
    else this.renew(this.Text.of([""]));
  }

  renew(text) {
    const { clientId, resumeToken } = this.newIdentity();
    this.clientId = clientId;
    this.resumeToken = resumeToken;
    this.epoch = null;
    this.version = null;
    this.base = text;
    this.inflight = null; // {seq, changes, coarse}
    this.pending = null;
    this.nextSeq = 1;
    this.unsent = 0; // local edits not confirmed, for the user
  }

  restore(saved) {
    const { ChangeSet, Text } = this;
    this.clientId = saved.client_id;
    this.resumeToken = saved.resume_token;
    this.epoch = saved.epoch ?? null;
    this.version = saved.version ?? null;
    this.base = Text.of((saved.base ?? "").split("\n"));
    const inflight = saved.inflight;
    this.inflight = inflight
      ? { seq: inflight.seq, changes: ChangeSet.fromJSON(inflight.changes), coarse: !!inflight.coarse }
      : null;
    this.pending = saved.pending ? ChangeSet.fromJSON(saved.pending) : null;
    this.nextSeq = saved.next_seq ?? 1;
    this.unsent = saved.unsent || 0;
  }

  toJSON() {
    // The base is the largest part; a Text never changes, so its string is made once.
    if (this.savedBase?.text !== this.base) this.savedBase = { text: this.base, string: this.base.toString() };
    const inflight = this.inflight;
    return {
      client_id: this.clientId, resume_token: this.resumeToken, epoch: this.epoch, version: this.version,
      base: this.savedBase.string,
      inflight: inflight && { seq: inflight.seq, changes: inflight.changes.toJSON(), coarse: inflight.coarse },
      pending: this.pending && this.pending.toJSON(),
      next_seq: this.nextSeq, unsent: this.unsent,
    };
  }

  get text() {
    let text = this.base;
    if (this.inflight) text = this.inflight.changes.apply(text);
    if (this.pending) text = this.pending.apply(text);
    return text;
  }

  get unconfirmed() {
    if (this.inflight && this.pending) return this.inflight.changes.compose(this.pending);
    return this.inflight ? this.inflight.changes : this.pending;
  }

  memberList() {
    return [...this.members].map(([user_id, m]) => ({ user_id, username: m.username, color: m.color, role: m.role }));
  }

  // What the server lets this member do now (rooms/access.py's table): an open room's member and
  // an interviewer always; a candidate until the room is locked or ended; an observer never.
  get mayEdit() {
    const role = this.role;
    return role === null || role === "interviewer" || (role === "candidate" && !this.locked && !this.ended);
  }

  get mayCursor() {
    const role = this.role;
    return role === null || role === "interviewer" || (role === "candidate" && !this.ended);
  }

  // Runs: an interviewer always; others (no observer) while the room allows runs, a candidate until the end.
  get mayRun() {
    if (this.role === "interviewer") return true;
    return this.runsAllowed && (this.role === null || (this.role === "candidate" && !this.ended));
  }

  // The conversation ended (the connection closed): until the next welcome nobody is known.
  closed() {
    this.live = false;
    this.members = new Map();
  }

  // --- to the server ---------------------------------------------------------------------------
  hello() {
    this.live = false;
    const { clientId: client_id, version, resumeToken: resume_token } = this;
    const message = { type: "hello", client_id, version, resume_token, batch: true };
    if (this.version !== null && this.epoch) message.epoch = this.epoch;
    return message;
  }

  // Our copy no longer fits the server's: the next hello asks for a snapshot, and work that
  // cannot be rebased onto it is offered to the user then.
  forgetVersion() {
    this.version = null;
  }

  edit(changes) {
    this.pending = this.pending ? this.pending.compose(changes) : changes;
    this.unsent += 1;
    this.mapCursors(changes);
  }

  // Pending work as a new batch, when nothing is in flight: the push to send, or null.
  flush() {
    if (!this.live || this.inflight || !this.pending) return null;
    let changes = this.pending;
    if (this.maxChangeParts && changes.toJSON().length > this.maxChangeParts) changes = this.coarsened(changes, this.base);
    this.inflight = { seq: this.nextSeq, changes, coarse: false };
    this.nextSeq += 1;
    this.pending = null;
    return this.push();
  }

  // The batch in flight again, same seq (the server applies a seq once), or pending work.
  resend() {
    if (!this.live) return null;
    return this.inflight ? this.push() : this.flush();
  }

  push() {
    return { type: "push", version: this.version, seq: this.inflight.seq, changes: this.inflight.changes.toJSON() };
  }

  // Our selection in the server's text at `version`: back through our unconfirmed changes.
  cursor(anchor, head) {
    if (!this.live || !this.mayCursor) return null;
    const local = this.unconfirmed;
    const toServer = (pos) => (local ? local.invertedDesc.mapPos(pos, -1) : pos);
    return { type: "cursor", version: this.version, anchor: toServer(anchor), head: toServer(head) };
  }

  // More parts than the server takes in one push: one replacement of the span the changes touch
  // (the same result), made against the text they apply to.
  coarsened(changes, text) {
    let from = -1;
    let toA = 0;
    let toB = 0;
    changes.iterChangedRanges((fromA, endA, fromB, endB) => {
      if (from < 0) from = fromA;
      toA = endA;
      toB = endB;
    });
    if (from < 0) return changes;
    const after = changes.apply(text);
    return this.ChangeSet.of({ from, to: toA, insert: after.slice(from, toB) }, changes.length);
  }

  // --- from the server ---------------------------------------------------------------------------
  // One frame (a message or a batch of them). Handling stops at the first message that asks for
  // a new hello, or refuses ours: the rest belongs to a conversation that is over.
  receive(messages) {
    const out = newOutcome();
    for (const message of messages) {
      try {
        this.handle(message, out);
      } catch (error) {
        out.failure = { type: message?.type, error };
        this.forgetVersion();
        out.hello = true;
      }
      if (out.hello || out.denied !== null) {
        this.live = false;
        return out;
      }
    }
    // After a welcome the catch-up follows in the same frame: unconfirmed work goes out rebased
    // over all of it, at the current version, not at the one we said hello at (which may be too
    // far behind for the server to rebase: `resync`).
    if (out.due) {
      const push = this.resend();
      if (push) out.send.push(push);
    }
    return out;
  }

  handle(message, out) {
    if (message.type === "runs_allowed") this.runsAllowed = message.allowed === true;
    if (message.run_id != null || PAGE_MESSAGES.has(message.type)) return void out.runs.push(message);
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message, out);
      case "update":
        return this.onUpdate(message, out);
      case "ack":
        // Our batch changed nothing on the server (what it deleted was deleted already): no
        // version was made and `base` stays as it is.
        if (this.inflight && message.seq === this.inflight.seq && message.version === this.version) this.confirmed(out);
        return;
      case "cursor":
        return this.onCursor(message, out);
      case "member_joined":
        this.members.set(message.user_id, member(message));
        out.members = true;
        return;
      case "member_left":
        this.members.delete(message.user_id);
        out.cursors = this.cursors.delete(message.user_id) || out.cursors;
        out.members = true;
        return;
      case "language":
        out.language = message.language;
        return;
      case "locked":
        this.locked = message.locked === true;
        out.access = true;
        return;
      case "ended":
        this.ended = out.access = true;
        return;
      case "notes":
        if (typeof message.text === "string") out.notes = message.text;
        return;
      case "link": {
        // A shared role's link was revoked or renewed (told once the change is stored).
        const token = message.token ?? null;
        if (SHARED_ROLES.has(message.role) && (token === null || typeof token === "string"))
          out.links[message.role] = token;
        return;
      }
      case "ping":
        if (this.live) out.send.push({ type: "pong" });
        return;
      case "error":
        return this.onError(message, out);
    }
  }

  onWelcome(message, out) {
    this.userId = message.user_id;
    if (Number.isSafeInteger(message.max_change_parts)) this.maxChangeParts = message.max_change_parts;
    const lastSeq = message.last_seq ?? null;
    const mine = this.text;
    const hadWork = this.inflight !== null || this.pending !== null;
    if (lastSeq !== null && this.version !== null && lastSeq >= this.nextSeq) {
      // The room applied a push of ours that this state never made: it is an older copy of this
      // tab's state (restored, or copied). Its unconfirmed work may already be in the room:
      // start from the room's text and offer ours instead of sending it twice.
      this.base = mine;
      this.inflight = null;
      this.pending = null;
      this.unsent = 0;
      this.nextSeq = lastSeq + 1;
      this.forgetVersion();
      out.hello = true;
      if (hadWork) out.offer = { text: mine.toString(), reason: "stale" };
      return;
    }
    const newEpoch = this.epoch !== null && this.epoch !== message.epoch;
    this.epoch = message.epoch ?? null;
    if (lastSeq !== null) this.nextSeq = Math.max(this.nextSeq, lastSeq + 1);
    this.members = new Map((message.members || []).map((m) => [m.user_id, member(m)]));
    this.role = message.role ?? null;
    this.locked = message.locked === true;
    this.ended = message.ended === true;
    this.runsAllowed = message.runs_allowed === true;
    out.access = true;
    this.cursors.clear();
    out.members = out.cursors = true;
    if (message.doc !== undefined && message.doc !== null) {
      // The snapshot holds the batch in flight if the server applied it; anything else cannot
      // be rebased onto it.
      const applied = this.inflight !== null && lastSeq !== null && this.inflight.seq <= lastSeq;
      const lost = this.pending !== null || (this.inflight !== null && !applied);
      const shown = mine.toString();
      const changes = replacement(this, shown, message.doc);
      this.base = this.Text.of(message.doc.split("\n"));
      this.version = message.version;
      this.inflight = null;
      this.pending = null;
      this.unsent = 0;
      if (!changes.empty) out.changes.push(changes);
      if (shown !== message.doc && newEpoch) {
        // The room's document was started again (a server that keeps rooms in memory restarted,
        // or a room was unloaded and reset): our text is not in it.
        out.offer = { text: shown, reason: "reset" };
      } else if (shown !== message.doc && lost) {
        out.offer = { text: shown, reason: "history" };
      }
    } else if (message.version !== this.version) {
      this.forgetVersion();
      out.hello = true;
      return;
    }
    this.live = true;
    out.welcomed = true;
    out.language = message.language ?? null;
    out.due = true;
  }

  onUpdate(message, out) {
    if (this.version !== null && message.version <= this.version) return; // a repeated message
    if (this.version === null || message.version !== this.version + 1) {
      out.hello = true; // a gap (messages lost on the way): the catch-up fills it
      return;
    }
    const inflight = this.inflight;
    if (inflight && message.client_id === this.clientId && message.seq === inflight.seq) {
      this.base = inflight.changes.apply(this.base);
      this.version = message.version;
      this.noteAuthor(message, out);
      return this.confirmed(out);
    }
    // Rebased past local work with the server's tie-break (the earlier-committed insert first):
    // inflight' = inflight.map(U), U1 = U.map(inflight, true), pending' = pending.map(U1),
    // U2 = U1.map(pending, true); the editor gets U2. Worked out before anything is changed.
    let remote = this.ChangeSet.fromJSON(message.changes);
    const base = remote.apply(this.base);
    let rebased = null;
    if (inflight) {
      rebased = { seq: inflight.seq, changes: inflight.changes.map(remote), coarse: inflight.coarse };
      remote = remote.map(inflight.changes, true);
    }
    let pending = null;
    if (this.pending) {
      pending = this.pending.map(remote);
      remote = remote.map(this.pending, true);
    }
    this.base = base;
    this.version = message.version;
    this.inflight = rebased;
    this.pending = pending;
    out.changes.push(remote);
    out.cursors = this.mapCursors(remote) || out.cursors;
    this.noteAuthor(message, out);
  }

  noteAuthor(message, out) {
    if (typeof message.user_id === "string" && message.user_id) out.authors.push(message.user_id);
  }

  confirmed(out) {
    this.inflight = null;
    if (!this.pending) this.unsent = 0;
    out.confirmed = true;
    out.due = true;
  }

  onCursor(message, out) {
    if (message.user_id === this.userId || message.version !== this.version) return;
    const local = this.unconfirmed;
    const length = this.text.length;
    const toLocal = (pos) => Math.min(local ? local.mapPos(pos, -1) : pos, length);
    this.cursors.set(message.user_id, { anchor: toLocal(message.anchor), head: toLocal(message.head) });
    out.cursors = true;
  }

  // Remote cursors are kept where they are in the text shown: they move with every change to it.
  mapCursors(changes) {
    for (const cursor of this.cursors.values()) {
      cursor.anchor = changes.mapPos(cursor.anchor, -1);
      cursor.head = changes.mapPos(cursor.head, -1);
    }
    return this.cursors.size > 0;
  }

  onError(message, out) {
    const code = message.code;
    const inflight = this.inflight;
    if (REMOTE_ONLY_ERRORS.has(code)) {
      if (code !== "rate_limited") this.live = false;
      out.error = message;
      return;
    }
    if (code === "resync") {
      // Our batch was too far behind for the server to rebase: catch up from our version (the
      // welcome resends it, same seq, rebased over the catch-up). Kept as it is: one replacement
      // made now would be merged over the whole catch-up and could bring back text others
      // deleted meanwhile.
      if (message.seq !== undefined && message.seq !== inflight?.seq) return; // a late answer
      out.hello = true;
      return;
    }
    if (code === "too_complex" && inflight) {
      // Our batch grew past the server's limit while we rebased it over others' edits; it was not
      // applied, so it goes again as one replacement. Once only: a second answer is to an earlier
      // send of the same batch, and answers about another seq are late ones.
      if ((message.seq !== undefined && message.seq !== inflight.seq) || inflight.coarse) return;
      this.inflight = { seq: inflight.seq, changes: this.coarsened(inflight.changes, this.base), coarse: true };
      out.due = true;
      return;
    }
    if (code === "invalid_message" && inflight) {
      this.forgetVersion();
      out.hello = true;
      return;
    }
    if (code === "client_id_in_use" || code === "seq_reused") {
      // Another copy of this tab holds our client_id: carry on as a new client, keeping our
      // unconfirmed text for the user (sent under a new id it could be applied twice).
      const mine = this.text;
      const hadWork = inflight !== null || this.pending !== null;
      this.renew(mine);
      this.members = new Map();
      this.cursors.clear();
      out.members = out.cursors = true;
      out.hello = true;
      if (hadWork) out.offer = { text: mine.toString(), reason: "duplicate" };
      return;
    }
    if (code === "forbidden" && !this.live) {
      // Our hello was refused: the link was revoked, or the interview ended. Saying hello
      // again would be refused again.
      out.denied = String(message.message ?? "");
      return;
    }
    if (REFUSED.has(code)) {
      // The server refused our batch: start again from its text and offer ours to the user.
      out.notice = { key: code, level: "negative", message: message.message };
      this.forgetVersion();
      out.hello = true;
      return;
    }
    out.notice = { key: code, level: "warning", message: message.message };
  }
}
