// The run panel (ui/run_panel.py): runs the room's code in this browser and shows every run of the
// room, this page's and, live, everyone else's.
//
// The room decides; the page runs. Run sends run_start through the editor's connection
// (window.collabEditor.sendRun) and executes only once the room answers with its run_started
// (for tests, its run_cases); an error with the run's id is the refusal, shown in its place. The
// code runs in a module worker (/runner/worker_python.js: Pyodide; /runner/worker_js.js), one
// worker per run: a warm one waits for the next run, started after the page loaded. Whatever the
// run prints is shown at once and relayed to the room in batches (every RELAY_MS or RELAY_CHARS,
// whichever first), up to the room's max_run_output_chars; at run_timeout_seconds the worker is
// terminated (a "timeout"), and Stop does the same. The editor dispatches every message about a
// run as a "collab-run" window event, a {type: "run_state"} one with what this member may do and
// the connection's state (live, gen), and a {type: "run_welcome"} one before each welcome's burst.
//
// A run of this page lives on the connection it was started on (its gen): when that connection
// drops or is replaced, the room has ended the run ("lost") and would refuse the rest of it, so
// the page ends it too. A worker is code that may be the candidate's: what it posts is checked.
const RELAY_MS = 100;
const RELAY_CHARS = 4096;
const ANSWER_MS = 15000; // a run_start the room never answered is given up after this
const SETTLE_MS = 3000; // at most this long for the page's own edits to be confirmed before a run
const KEPT_RUNS = 20;
const RUN_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const WORKERS = { python: "worker_python.js", javascript: "worker_js.js" };
const HARNESS = { python: "harness.py", javascript: "harness.js" };
const LANGUAGE_NAMES = { python: "Python", javascript: "JavaScript" };
const ENDINGS = {
  ok: "finished",
  error: "failed",
  timeout: "stopped at the time limit",
  stopped: "stopped",
  lost: "lost (the room ended it)",
  refused: "not run",
  unknown: "ended while this page was disconnected",
};
const STREAMS = new Set(["stdout", "stderr"]);
const MAX_ERROR_CHARS = 500; // rooms.questions.MAX_ERROR_CHARS
const DROPPED = "The connection to the room dropped; the room ended this run.";

function newRunId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => RUN_ID_CHARS[byte % RUN_ID_CHARS.length]).join("");
}

export default {
  template: `
  <div class="collab-runs" style="display:flex;flex-direction:column;min-height:0;max-height:40vh;
       border-top:1px solid rgba(128,128,128,.3)">
    <div class="collab-runs-bar" style="display:flex;flex-wrap:wrap;align-items:center;gap:6px;padding:6px 8px">
      <q-btn dense no-caps unelevated color="primary" icon="play_arrow" label="Run" class="collab-run-button"
             :disable="!canStart" @click="start('code')" />
      <q-btn v-if="testsOffered" dense no-caps outline color="primary" icon="checklist" label="Run tests"
             class="collab-run-tests" :disable="!canStart" @click="start('tests')" />
      <q-btn v-if="active" dense no-caps outline color="negative" icon="stop" label="Stop" class="collab-run-stop"
             @click="stop" />
      <q-btn dense flat no-caps :icon="showInput ? 'expand_less' : 'expand_more'" label="Input"
             class="collab-run-input-toggle" @click="showInput = !showInput" />
      <span v-if="state.reason" class="collab-run-reason text-sm text-grey-7">{{ state.reason }}</span>
      <span v-else-if="loading" class="collab-run-loading text-sm text-grey-7">Loading Python…</span>
    </div>
    <textarea v-show="showInput" v-model="stdin" class="collab-run-stdin" rows="3" spellcheck="false"
              placeholder="What input() / standard input reads, line by line"
              style="margin:0 8px 6px;font-family:monospace;font-size:13px;resize:vertical;
                     border:1px solid rgba(128,128,128,.4);border-radius:4px;padding:4px"></textarea>
    <div ref="output" class="collab-run-output" style="flex:1;min-height:3rem;overflow:auto;padding:0 8px 8px">
      <div v-for="run in runs" :key="run.runId" class="collab-run" :data-run-id="run.runId"
           :data-status="run.status" :data-own="run.own ? 'true' : 'false'" style="margin-top:6px">
        <div class="collab-run-head text-xs" style="display:flex;flex-wrap:wrap;gap:8px;align-items:center">
          <span class="collab-run-who" :style="{color: run.color || 'inherit'}">{{ who(run) }}</span>
          <span class="collab-run-status" :class="run.status === 'ok' ? 'text-positive' : ''">{{ ending(run) }}</span>
          <span v-if="run.durationMs !== null" class="collab-run-time text-grey-7">{{ seconds(run.durationMs) }}</span>
          <span v-if="run.total !== null" class="collab-run-score">{{ run.passed }} / {{ run.total }} tests passed</span>
          <span v-if="selfReported(run)" class="collab-run-reported text-grey-7">
            results reported by {{ run.author || "someone" }}'s browser</span>
        </div>
        <pre v-if="run.chunks.length" class="collab-run-text" style="margin:2px 0;white-space:pre-wrap;
             word-break:break-word;font-family:monospace;font-size:13px"><span v-for="(chunk, i) in run.chunks"
             :key="i" :class="chunk.stream === 'stderr' ? 'collab-run-stderr text-negative' : 'collab-run-stdout'"
             >{{ chunk.text }}</span></pre>
        <div v-if="run.truncated" class="collab-run-cut text-xs text-warning">
          output cut at {{ maxOutputChars.toLocaleString() }} characters</div>
        <div v-if="run.refusal" class="collab-run-refusal text-xs text-negative">{{ run.refusal }}</div>
        <div v-if="run.tests" style="overflow-x:auto">
          <table class="collab-run-results text-xs" style="border-collapse:collapse;margin-top:4px">
            <tr><th style="text-align:left;padding:2px 6px">Case</th><th style="padding:2px 6px">Result</th>
              <template v-if="detailed(run)"><th style="text-align:left;padding:2px 6px">Arguments</th>
                <th style="text-align:left;padding:2px 6px">Expected</th>
                <th style="text-align:left;padding:2px 6px">Actual</th></template></tr>
            <tr v-for="test in run.tests" class="collab-run-case" :data-passed="test.passed ? 'true' : 'false'">
              <td style="padding:2px 6px">{{ test.name }}</td>
              <td style="padding:2px 6px" :class="test.passed ? 'text-positive' : 'text-negative'">
                {{ test.passed ? "pass" : "fail" }}<span v-if="test.error">: {{ test.error }}</span></td>
              <template v-if="detailed(run)">
                <td style="padding:2px 6px;font-family:monospace">{{ json(test.args) }}</td>
                <td style="padding:2px 6px;font-family:monospace">{{ json(test.expected) }}</td>
                <td style="padding:2px 6px;font-family:monospace">{{ json(test.actual) }}</td></template>
            </tr>
          </table>
        </div>
      </div>
    </div>
  </div>`,
  props: { pyodideUrl: String, runnerUrl: String, timeoutSeconds: Number, maxOutputChars: Number },
  data() {
    return {
      state: { mayRun: false, reason: "Connecting…", language: null, questionId: null, testLanguages: [], role: null },
      runs: [], // newest last
      stdin: "",
      showInput: false,
      active: null, // this page's run from run_start to its end
      loading: false, // the first Python run waits for Pyodide
    };
  },
  computed: {
    language() {
      return String(this.state.language || "").toLowerCase();
    },
    canStart() {
      return this.state.mayRun && !this.active && this.language in WORKERS;
    },
    testsOffered() {
      return !!this.state.questionId && (this.state.testLanguages || []).includes(this.language);
    },
  },
  mounted() {
    this.spares = {}; // language -> a started worker, warm or warming, waiting for a run
    this.answerMs = ANSWER_MS;
    this.limits = { timeoutSeconds: this.timeoutSeconds || 10, maxOutputChars: this.maxOutputChars || 20000 };
    this.onEvent = (event) => this.receive(event.detail);
    window.addEventListener("collab-run", this.onEvent);
    const editor = window.collabEditor;
    if (editor?.runState) this.receive(editor.runState());
    window.collabRuns = this; // for tests
  },
  beforeUnmount() {
    window.removeEventListener("collab-run", this.onEvent);
    for (const spare of Object.values(this.spares)) spare.worker.terminate();
    if (this.active) this.finish(this.active, "stopped");
    if (window.collabRuns === this) window.collabRuns = undefined;
  },
  methods: {
    // --- from the room ----------------------------------------------------------------------------
    receive(message) {
      if (!message || typeof message !== "object") return;
      switch (message.type) {
        case "run_state":
          this.state = message;
          this.limits = { timeoutSeconds: message.timeoutSeconds, maxOutputChars: message.maxOutputChars };
          if (this.active?.sent && (!message.live || message.gen !== this.active.gen)) this.lose(this.active, DROPPED);
          return this.warmSoon();
        case "run_welcome": // what others ran meanwhile is unknown, until the burst tells what still runs
          for (const run of this.runs)
            if (!run.own && ["starting", "running"].includes(run.status)) run.status = "unknown";
          return;
        case "run_started":
          return this.onStarted(message);
        case "run_cases":
          if (this.active?.runId === message.run_id && this.active.kind === "tests") this.execute(this.active, message);
          return;
        case "run_output": {
          const run = this.find(message.run_id);
          if (run && !run.own && typeof message.text === "string") this.show(run, message.stream, message.text);
          return;
        }
        case "run_ended":
          return this.onEnded(message);
        case "error":
          return this.onRefused(message);
      }
    },
    onStarted(message) {
      const mine = this.active?.runId === message.run_id ? this.active : null;
      const run = mine ?? this.find(message.run_id) ?? this.add({ runId: message.run_id, own: false });
      Object.assign(run, {
        author: message.username ?? run.author,
        color: message.color ?? run.color,
        language: message.language ?? run.language,
        version: message.version ?? run.version,
        kind: message.kind ?? run.kind,
      });
      if ("role" in message) run.runnerRole = message.role;
      if (mine && mine.status === "starting" && mine.kind === "code") this.execute(mine, null);
      if (!mine && run.status === "unknown") Object.assign(run, { chunks: [], chars: 0, truncated: false }); // replayed
      if (!mine && ["starting", "unknown"].includes(run.status)) run.status = "running";
      if (run.own && run.gaveUp) {
        // The room started a run this page gave up on: it ends it at once rather than leave it going.
        run.gaveUp = false;
        run.refusal = "The room answered too late: the run was stopped.";
        const end = { type: "run_end", run_id: run.runId, status: "stopped", duration_ms: 0, results: null };
        window.collabEditor?.sendRun(end);
      }
    },
    onEnded(message) {
      const run = this.find(message.run_id);
      if (!run) return;
      if (run.own) this.finish(run, message.status ?? "lost", null, false); // the room ended it first
      if ("role" in message) run.runnerRole = message.role;
      run.status = message.status ?? run.status;
      if (Number.isFinite(message.duration_ms) && !run.own) run.durationMs = message.duration_ms;
      run.truncated = run.truncated || message.truncated === true;
      if (Array.isArray(message.tests)) run.tests = message.tests;
      if (Number.isInteger(message.total)) Object.assign(run, { passed: message.passed, total: message.total });
      this.scrollSoon();
    },
    onRefused(message) {
      const run = this.find(message.run_id);
      if (!run) return;
      const refusal = message.message || message.code || "refused";
      if (run.own && run.status === "starting") {
        run.status = "refused";
        run.refusal = `The room did not run this: ${refusal}.`;
        this.release(run);
      } else if (run.own && run.status === "running" && message.code === "run_refused") {
        this.lose(run, `The room ended this run: ${refusal}.`); // it no longer has it
      } else if (run.own) {
        run.refusal = `The room refused part of this run: ${refusal}.`;
      }
    },
    // This page's run, which the room has ended already: ended here too, the room not told.
    lose(run, why) {
      if (run.status !== "running" && run.status !== "starting") return;
      run.refusal = why;
      this.finish(run, "lost", null, false);
    },

    // --- this page's runs ------------------------------------------------------------------------
    async start(kind) {
      if (!this.canStart) return;
      const editor = window.collabEditor;
      const language = this.language;
      const run = this.add({ runId: newRunId(), own: true, language, kind, status: "starting" });
      this.active = run;
      const source = await this.settledSource(editor);
      if (run.status !== "starting") return; // stopped meanwhile
      run.version = source.version;
      run.code = source.code;
      run.stdin = this.stdin;
      const message = { type: "run_start", run_id: run.runId, language, version: source.version, kind };
      if (source.version === null || !editor.sendRun(message)) {
        run.status = "refused";
        run.refusal = "Not connected to the room: try again in a moment.";
        this.release(run);
        return;
      }
      run.sent = true;
      run.gen = editor.gen; // the connection it lives on
      this.spare(language); // loads Pyodide now if it was not warm yet
      run.answerTimer = setTimeout(() => {
        if (run.status !== "starting") return;
        run.status = "refused";
        run.refusal = "The room did not answer.";
        run.gaveUp = true; // a run_started arriving now is answered with a run_end
        this.release(run);
      }, this.answerMs);
    },
    // The editor's text once the page's own edits are confirmed (the version is then exactly it).
    settledSource(editor) {
      const deadline = performance.now() + SETTLE_MS;
      return new Promise((resolve) => {
        const check = () => {
          const source = editor.runSource();
          if (source.settled || performance.now() > deadline) resolve(source);
          else setTimeout(check, 30);
        };
        check();
      });
    },
    execute(run, cases) {
      clearTimeout(run.answerTimer);
      run.status = "running";
      const spare = this.spare(run.language);
      delete this.spares[run.language];
      run.worker = spare;
      spare.run = run;
      run.cases = cases;
      run.relay = { queue: [], chars: 0, relayed: 0, timer: null };
      this.loading = !spare.ready && run.language === "python";
      const maxOutputChars = this.limits.maxOutputChars + 1; // one more: the sign that it was cut
      const message = { type: "run", code: run.code, stdin: run.stdin, maxOutputChars };
      if (cases) message.cases = { function: cases.function, cases: cases.cases };
      spare.worker.postMessage(message);
      if (spare.ready) this.startClock(run);
    },
    startClock(run) {
      run.startedAt = performance.now();
      run.deadline = setTimeout(() => this.finish(run, "timeout"), this.limits.timeoutSeconds * 1000);
    },
    // What a worker posts; the code it runs can post too, so only messages of the expected shape count.
    onWorker(spare, message) {
      if (message.type === "ready") {
        if (spare.ready) return; // once: a second one must not restart the run's clock
        spare.ready = true;
        if (spare.run) {
          this.loading = false;
          this.startClock(spare.run);
        }
        return;
      }
      const run = spare.run;
      if (message.type === "failed") {
        if (run) this.show(run, "stderr", `${String(message.message).slice(0, MAX_ERROR_CHARS)}\n`);
        if (run) return this.finish(run, "error");
        if (this.spares[spare.language] === spare) delete this.spares[spare.language];
        return;
      }
      if (!run || run.status !== "running") return;
      if (message.type === "output") {
        const { stream, text } = message;
        if (STREAMS.has(stream) && typeof text === "string") this.show(run, stream, text, true);
      } else if (message.type === "truncated") {
        run.truncated = true;
      } else if (message.type === "done") {
        const wrong = run.cases ? this.malformed(message.results, run.cases.cases.length, message.status) : null;
        if (wrong) this.show(run, "stderr", `The run's test results cannot be used: ${wrong}.\n`, true);
        this.finish(run, message.status === "ok" && !wrong ? "ok" : "error", wrong ? null : message.results);
      }
    },
    // Why `results` cannot be passed on as a tests run's answers (one per case, each exactly
    // {actual} or {error: a short string}), or null when they can. A run that failed may have none.
    malformed(results, count, status) {
      if (results === undefined || results === null) return status === "ok" ? "there are none" : null;
      if (!Array.isArray(results) || results.length !== count) return `${count} were expected`;
      const exact = (item) => {
        if (item === null || typeof item !== "object" || Array.isArray(item)) return false;
        const keys = Object.keys(item);
        if (keys.length === 1 && keys[0] === "actual") return item.actual !== undefined; // JSON drops undefined
        const error = keys.length === 1 && keys[0] === "error" ? item.error : null;
        return typeof error === "string" && error.length <= MAX_ERROR_CHARS;
      };
      return results.every(exact) ? null : "each must be {actual} or {error}";
    },
    stop() {
      if (this.active) this.finish(this.active, "stopped");
    },
    // The end of this page's run: the worker goes, the room is told (`tell`: unless it ended the run
    // itself), a fresh worker warms up.
    finish(run, status, results, tell = true) {
      if (run.status !== "running" && run.status !== "starting") return;
      const durationMs = Math.round(performance.now() - (run.startedAt ?? performance.now()));
      run.status = status;
      run.durationMs = durationMs;
      this.loading = false;
      if (tell) this.flush(run);
      else if (run.relay) run.relay.queue = []; // the room no longer has the run: it would refuse it
      let answers = null;
      if (run.kind === "tests" && run.cases) {
        const count = run.cases.cases.length;
        const given = Array.isArray(results) && results.length === count ? results : null;
        const why = { timeout: "the time limit was reached", stopped: "the run was stopped" }[status];
        const failed = { error: `the code did not run to its end${why ? `: ${why}` : ""}`.slice(0, 500) };
        answers = given ?? Array.from({ length: count }, () => failed);
      }
      if (tell && run.sent) {
        const end = { type: "run_end", run_id: run.runId, status, duration_ms: durationMs, results: answers };
        window.collabEditor?.sendRun(end);
      }
      this.release(run);
      this.scrollSoon();
    },
    release(run) {
      clearTimeout(run.answerTimer);
      clearTimeout(run.deadline);
      if (run.relay) clearTimeout(run.relay.timer);
      if (run.worker) run.worker.worker.terminate();
      run.worker = null;
      if (this.active === run) this.active = null;
      this.warmSoon();
    },

    // --- output ----------------------------------------------------------------------------------
    // Shown here (capped like the room caps it) and, for this page's runs, queued for the room.
    // One character past the cap still goes to the room: that is how it knows the output was cut.
    show(run, stream, text, relay = false) {
      if (!text || run.truncated) return;
      const left = this.limits.maxOutputChars - run.chars;
      const kept = text.length > left ? text.slice(0, left) : text;
      run.truncated = kept.length < text.length;
      if (relay) this.queue(run, stream, text.slice(0, left + 1));
      if (!kept) return;
      run.chars += kept.length;
      const last = run.chunks[run.chunks.length - 1];
      if (last && last.stream === stream) last.text += kept;
      else run.chunks.push({ stream: stream === "stderr" ? "stderr" : "stdout", text: kept });
      this.scrollSoon();
    },
    queue(run, stream, text) {
      const relay = run.relay;
      const last = relay.queue[relay.queue.length - 1];
      if (last && last.stream === stream) last.text += text;
      else relay.queue.push({ stream, text });
      relay.chars += text.length;
      if (relay.chars >= RELAY_CHARS) this.flush(run);
      else if (relay.timer === null) relay.timer = setTimeout(() => this.flush(run), RELAY_MS);
    },
    flush(run) {
      const relay = run.relay;
      if (!relay) return;
      clearTimeout(relay.timer);
      relay.timer = null;
      for (const { stream, text } of relay.queue)
        window.collabEditor?.sendRun({ type: "run_output", run_id: run.runId, stream, text });
      relay.queue = [];
      relay.chars = 0;
    },
    scrollSoon() {
      const box = this.$refs.output;
      if (!box) return;
      const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      if (atEnd) this.$nextTick(() => (box.scrollTop = box.scrollHeight));
    },

    // --- workers ---------------------------------------------------------------------------------
    // The warm worker for `language`, started now if there is none.
    spare(language) {
      if (this.spares[language]) return this.spares[language];
      const base = new URL(this.runnerUrl || "/runner/", window.location.href);
      const url = new URL(WORKERS[language], base);
      const worker = new Worker(url, { type: "module" });
      const spare = { worker, language, ready: false, run: null };
      worker.onmessage = (event) => this.onWorker(spare, event.data || {});
      // A module worker whose script (or a module it imports) cannot be loaded fails without a message.
      const unloaded = `The runner could not start: ${url.pathname} (or a module it imports) could not be loaded.`;
      worker.onerror = (event) => {
        const message = event.message ? `The runner failed: ${event.message}` : unloaded;
        this.onWorker(spare, { type: "failed", message });
      };
      const indexURL = new URL(this.pyodideUrl || "/runner/pyodide/", window.location.href).href;
      worker.postMessage({ type: "init", indexURL, harnessURL: new URL(HARNESS[language], base).href });
      this.spares[language] = spare;
      return spare;
    },
    // A worker for the room's language, once the page is idle: the first run starts warm.
    warmSoon() {
      const wanted = () => this.state.mayRun && this.language in WORKERS && !this.spares[this.language];
      if (!wanted() || this.warming) return;
      const later = window.requestIdleCallback ?? ((callback) => setTimeout(callback, 300));
      this.warming = true;
      later(
        () => {
          this.warming = false; // the language may have changed meanwhile: the current one's
          if (wanted() && !this.active) this.spare(this.language);
        },
        { timeout: 2000 },
      );
    },

    // --- shown ----------------------------------------------------------------------------------
    add(fields) {
      const run = {
        ...{ author: null, color: null, language: null, version: null, kind: "code", status: "starting" },
        ...{ chunks: [], chars: 0, truncated: false, durationMs: null, tests: null, passed: null, total: null },
        ...{ refusal: null, own: false, runnerRole: undefined },
        ...fields,
      };
      this.runs.push(run);
      if (this.runs.length > KEPT_RUNS) this.runs.splice(0, this.runs.length - KEPT_RUNS);
      this.scrollSoon();
      return this.runs[this.runs.length - 1]; // the reactive copy
    },
    find(runId) {
      return runId ? this.runs.find((run) => run.runId === runId) ?? null : null;
    },
    who(run) {
      const what = run.kind === "tests" ? "ran the tests on" : "ran";
      const version = run.version === null ? "the code" : `version ${run.version}`;
      const language = LANGUAGE_NAMES[run.language] ?? run.language ?? "";
      return `${run.own ? "You" : run.author || "Someone"} ${what} ${version} (${language})`;
    },
    ending(run) {
      if (run.status === "starting") return run.own ? "starting…" : "running…";
      if (run.status === "running") return "running…";
      return ENDINGS[run.status] ?? run.status;
    },
    seconds(ms) {
      return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
    },
    // Test results of someone else's browser, shown to an interviewer: the candidate's code ran
    // there, where they could have been made up.
    selfReported(run) {
      const othersTests = !run.own && run.kind === "tests" && run.total !== null;
      return othersTests && this.state.role === "interviewer" && run.runnerRole !== "interviewer";
    },
    detailed(run) {
      return run.tests?.some((test) => "expected" in test);
    },
    json(value) {
      return value === undefined ? "" : JSON.stringify(value);
    },
  },
};
