// Node side of tests/test_client_differential.py: runs ui/collab_client.js, the browser's client of
// the versioned protocol, over the real @codemirror/state, one step at a time.
//
// stdin: one JSON object per line, a case: {steps: [...]}, each step one of
//   {op: "hello"}                      the hello the client would send
//   {op: "edit", changes}             a local edit (ChangeSet JSON), then what the view sends
//   {op: "frame", messages}           one frame from the server
//   {op: "resend"}                    the resend timer fired
//   {op: "cursor", anchor, head}      our selection moved
//   {op: "disconnect"}                the socket went away
//   {op: "save"}                      the page keeps the client's state (toJSON, as JSON text:
//                                     sessionStorage)
//   {op: "restore"}                   a page load from the state kept last
// stdout: one JSON object per line, in the same order: {results: [...]} with, per step, what
// the client said ({hello}, {send}, {cursor}, {outcome}) and its state after the step; and
// {error, step} when a step threw (the results stop before it).
import { readFileSync } from "node:fs";
import { ChangeSet, Text } from "@codemirror/state";
import { CollabClient } from "../../ui/collab_client.js";

function identities() {
  let count = 0;
  return () => {
    count += 1;
    return { clientId: `c-${count}`, resumeToken: `token-${count}-0123456789` };
  };
}

function snapshot(client) {
  const cursors = {};
  for (const [userId, cursor] of client.cursors) cursors[userId] = [cursor.anchor, cursor.head];
  return {
    text: client.text.toString(),
    version: client.version,
    client_id: client.clientId,
    next_seq: client.nextSeq,
    inflight: client.inflight && [client.inflight.seq, client.inflight.changes.toJSON()],
    pending: client.pending && client.pending.toJSON(),
    live: client.live,
    cursors,
    role: client.role,
    locked: client.locked,
    ended: client.ended,
  };
}

// One page: the client, what its editor shows, and the state it keeps.
class Page {
  constructor() {
    this.newIdentity = identities();
    this.client = new CollabClient({ ChangeSet, Text }, null, this.newIdentity);
    this.shown = this.client.text; // what the editor shows: moved only by the changes it is given
    this.saved = null;
  }

  step(step) {
    const client = this.client;
    const result = {};
    switch (step.op) {
      case "hello":
        result.hello = client.hello();
        break;
      case "edit": {
        const changes = ChangeSet.fromJSON(step.changes);
        this.shown = changes.apply(this.shown);
        client.edit(changes);
        const push = client.flush();
        result.send = push ? [push] : [];
        break;
      }
      case "frame": {
        const out = client.receive(step.messages);
        for (const changes of out.changes) this.shown = changes.apply(this.shown);
        result.send = out.send;
        result.outcome = {
          hello: out.hello,
          offer: out.offer,
          notice: out.notice && out.notice.key,
          error: out.error && out.error.code,
          language: out.language,
          authors: out.authors,
          notes: out.notes,
          links: out.links,
          denied: out.denied,
          failure: out.failure && String(out.failure.error),
        };
        break;
      }
      case "resend": {
        const push = client.resend();
        result.send = push ? [push] : [];
        break;
      }
      case "cursor":
        result.cursor = client.cursor(step.anchor, step.head);
        break;
      case "disconnect":
        client.live = false;
        break;
      case "save":
        this.saved = JSON.stringify(client.toJSON());
        break;
      case "restore":
        this.client = new CollabClient({ ChangeSet, Text }, JSON.parse(this.saved), this.newIdentity);
        this.shown = this.client.text;
        break;
      default:
        throw new Error(`unknown step ${step.op}`);
    }
    result.state = snapshot(this.client);
    // The changes handed to the editor must keep it showing exactly the client's text.
    result.state.shown = this.shown.toString();
    return result;
  }
}

function runCase(input) {
  const page = new Page();
  const results = [];
  for (const [index, step] of input.steps.entries()) {
    try {
      results.push(page.step(step));
    } catch (err) {
      return { results, error: String(err && err.stack ? err.stack : err), step: index };
    }
  }
  return { results };
}

const lines = readFileSync(0, "utf8").split("\n").filter((line) => line.length > 0);
const out = [];
for (const line of lines) {
  let result;
  try {
    result = runCase(JSON.parse(line));
  } catch (err) {
    result = { error: String(err && err.stack ? err.stack : err) };
  }
  out.push(JSON.stringify(result));
}
process.stdout.write(out.join("\n") + "\n");
