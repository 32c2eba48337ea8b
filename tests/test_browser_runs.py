"""Running code in a real headless Chromium: two pages in one open room, the run panel under the
editor (ui/collab_runs.js), Python in Pyodide and JavaScript in module workers served by the app
(api/runner_files.py). What one page runs shows on both; a run that never ends is stopped at
the time limit; a flood of output is cut; nothing leaves the app's own origin.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import test_browser
from tests.conftest import LiveServer, start_server

playwright = test_browser.playwright
browser = test_browser.browser

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 2
MAX_OUTPUT_CHARS = 2000
# Loading Pyodide in a fresh browser context takes a few seconds; a run's end waits for that.
RUN_MS = 60_000
FINAL = "[data-status=ok], [data-status=error], [data-status=timeout], [data-status=stopped], [data-status=refused]"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(
        tmp_path_factory.mktemp("browser-runs"),
        RUN_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        MAX_RUN_OUTPUT_CHARS=str(MAX_OUTPUT_CHARS),
    )
    yield server
    server.stop()


@dataclass
class Runner:
    """One person's page in the room, with every request it made."""

    page: Page
    name: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def set_code(self, code: str) -> None:
        self.page.evaluate("(code) => window.collabEditor.setText(code)", code)
        self.page.wait_for_function(
            "(code) => window.collabEditor.text() === code && window.collabEditor.inflight === null"
            " && window.collabEditor.pending === null",
            arg=code,
        )

    def set_language(self, language: str) -> None:
        self.page.evaluate("(language) => window.collabEditor.send({type: 'language', language})", language)
        self.page.wait_for_function(
            "(language) => window.collabRuns && window.collabRuns.state.language === language", arg=language
        )

    def run(self, code: str) -> None:
        """Put ``code`` in the editor and press Run, once the panel lets this page run."""
        self.set_code(code)
        button = self.page.locator(".collab-run-button")
        expect(button).to_be_enabled(timeout=10_000)
        button.click()

    def wait_ended(self, status: str | None = None) -> str:
        """Until the newest run has ended (with ``status``); its whole text then."""
        run = self.page.locator(f".collab-run:last-child:is({FINAL})")
        run.wait_for(timeout=RUN_MS)
        if status is not None:
            expect(run).to_have_attribute("data-status", status)
        return run.inner_text()

    def output(self) -> str:
        text = self.page.locator(".collab-run:last-child .collab-run-text")
        return text.inner_text() if text.count() else ""


@pytest.fixture
def room_of(browser: Browser, live: LiveServer) -> Iterator[Callable[..., list[Runner]]]:
    contexts = []

    def make(*names: str) -> list[Runner]:
        room = f"runs-{uuid.uuid4().hex[:10]}"
        runners = []
        for name in names:
            context = browser.new_context(viewport={"width": 1100, "height": 700})
            contexts.append(context)
            page = context.new_page()
            runner = Runner(page, name)
            page.on("request", lambda request, runner=runner: runner.requests.append(request.url))
            page.on("pageerror", lambda error, runner=runner: runner.errors.append(str(error)))
            page.goto(f"{live.http}/room/{room}")
            page.locator(".collab-name-input input").fill(name)
            page.locator(".collab-save-name").click()
            page.wait_for_function("window.collabEditor && window.collabEditor.live", timeout=30_000)
            page.wait_for_function("window.collabRuns && window.collabRuns.state.mayRun", timeout=30_000)
            runners.append(runner)
        return runners

    yield make
    for context in contexts:
        context.close()


def test_a_python_run_shows_its_output_on_both_pages(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.run("print(sum(range(10)))")
    assert "You ran version" in ann.wait_ended("ok")
    assert "45" == ann.output().strip()
    shown = bob.wait_ended("ok")
    assert "Ann ran version" in shown
    assert "45" == bob.output().strip()
    assert [] == ann.errors + bob.errors


def test_a_javascript_run_shows_console_output_on_both_pages(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.set_language("javascript")
    ann.run('console.log("sum", [1, 2].reduce((a, b) => a + b), {ok: true});\nconsole.error("careful");')
    ann.wait_ended("ok")
    bob.wait_ended("ok")
    for runner in (ann, bob):
        assert "sum 3 { ok: true }\ncareful" == runner.output().strip()
        stderr = runner.page.locator(".collab-run:last-child .collab-run-stderr")
        expect(stderr).to_have_text("careful\n")


def test_an_endless_loop_is_stopped_at_the_time_limit_and_the_page_stays_usable(
    room_of: Callable[..., list[Runner]],
) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.run("while True:\n    pass\n")
    ann.wait_ended("timeout")
    assert "stopped at the time limit" in bob.wait_ended("timeout")
    # The editor still types, and the next run gets a fresh worker.
    ann.page.locator(".cm-content").click()
    ann.page.keyboard.press("Control+End")
    ann.page.keyboard.type("# still typing")
    bob.page.wait_for_function("window.collabEditor.text().endsWith('# still typing')")
    ann.run("print('again')")
    ann.wait_ended("ok")
    assert "again" == ann.output().strip()


def test_a_flood_of_output_is_cut_with_a_notice_in_few_frames(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.page.evaluate(
        """() => {
            const editor = window.collabEditor;
            const send = editor.sendRun.bind(editor);
            window.outputFrames = 0;
            editor.sendRun = (message) => {
                if (message.type === "run_output") window.outputFrames += 1;
                return send(message);
            };
        }"""
    )
    ann.run("for i in range(200000):\n    print('x' * 40, i)\n")
    ann.wait_ended()
    bob.wait_ended()
    notice = f"output cut at {MAX_OUTPUT_CHARS:,} characters"
    for runner in (ann, bob):
        expect(runner.page.locator(".collab-run:last-child .collab-run-cut")).to_have_text(notice)
        assert MAX_OUTPUT_CHARS == len(runner.output())
    assert ann.page.evaluate("window.outputFrames") <= 10


def test_the_input_box_is_what_input_reads(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    ann.page.locator(".collab-run-input-toggle").click()
    ann.page.locator(".collab-run-stdin").fill("Ann\n41\n")
    ann.run("name = input()\nnumber = int(input('number? '))\nprint('hello', name, number + 1)\n")
    ann.wait_ended("ok")
    assert "number? hello Ann 42" == ann.output().strip()


def test_a_run_on_one_page_shows_live_on_the_other(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.run("import time\nprint('first', flush=True)\ntime.sleep(1.2)\nprint('second')\n")
    # Bob sees the first line while the run is still going.
    going = bob.page.locator(".collab-run:last-child[data-status=running] .collab-run-text")
    going.filter(has_text="first").wait_for(timeout=RUN_MS)
    bob.wait_ended("ok")
    assert "first\nsecond" == bob.output().strip()


def test_no_request_leaves_the_apps_origin(room_of: Callable[..., list[Runner]], live: LiveServer) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.run("import sys\nprint(sys.version_info[:2])")
    ann.wait_ended("ok")
    bob.wait_ended("ok")
    ann.set_language("javascript")
    ann.run("console.log(1 + 1)")
    ann.wait_ended("ok")
    origin = live.http
    for runner in (ann, bob):
        assert any("/runner/pyodide/" in url for url in runner.requests)  # Pyodide came from the app
        elsewhere = [url for url in runner.requests if not url.startswith((origin, "data:", "blob:"))]
        assert [] == elsewhere


def test_python_code_cannot_reach_the_network_or_storage(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    names = ["fetch", "XMLHttpRequest", "WebSocket", "EventSource", "indexedDB", "caches", "importScripts"]
    ann.run(f"import js\nprint([hasattr(js, name) for name in {names!r}])\n")
    ann.wait_ended("ok")
    assert str([False] * len(names)) == ann.output().strip()
    ann.run("import pyodide_js\npyodide_js.loadPackage('micropip')\n")
    ann.wait_ended("error")
    assert "packages cannot be loaded here" in ann.output()


def test_javascript_code_cannot_reach_the_network_or_storage(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    ann.set_language("javascript")
    ann.run(
        "console.log([typeof fetch, typeof XMLHttpRequest, typeof WebSocket, typeof indexedDB,"
        " typeof caches, typeof EventSource].join(' '))"
    )
    ann.wait_ended("ok")
    assert " ".join(["undefined"] * 6) == ann.output().strip()


def test_code_loads_nothing_from_the_origin_but_the_runner_folder(room_of: Callable[..., list[Runner]]) -> None:
    # A module the page itself loaded from this origin (NiceGUI's), which a worker whose policy
    # allowed 'self' would load too: the runner's folder is the only source a worker has.
    (ann,) = room_of("Ann")
    elsewhere = next(url for url in ann.requests if "/_nicegui/" in url and url.endswith((".js", ".mjs")))
    ann.set_language("javascript")
    attempt = "try {{ await import({url!r}); console.log('loaded'); }} catch (error) {{ console.log('refused'); }}"
    ann.run(attempt.format(url="/runner/harness.js"))
    ann.wait_ended("ok")
    assert "loaded" == ann.output().strip()  # the check below can fail: imports work where allowed
    ann.run(attempt.format(url=elsewhere))
    ann.wait_ended("ok")
    assert "refused" == ann.output().strip()


def record_relayed(runner: Runner) -> None:
    """From now on, ``window.relayed`` lists each run_output frame the page sent: "before" or
    "after" the test set ``window.dropped``."""
    runner.page.evaluate(
        """() => {
            const editor = window.collabEditor;
            const send = editor.sendRun.bind(editor);
            window.relayed = [];
            editor.sendRun = (message) => {
                const sent = send(message);
                if (sent && message.type === "run_output") window.relayed.push(window.dropped ? "after" : "before");
                return sent;
            };
        }"""
    )


def last_run(runner: Runner, status: str) -> None:
    runner.page.locator(f".collab-run:last-child[data-status={status}]").wait_for(timeout=RUN_MS)


def test_a_run_whose_connection_drops_ends_lost_and_relays_nothing_more(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    record_relayed(ann)
    ann.run("import time\nfor i in range(40):\n    print('tick', i, flush=True)\n    time.sleep(0.04)\n")
    ann.page.wait_for_function("window.relayed.length > 0", timeout=RUN_MS)
    ann.page.evaluate("window.dropped = true; window.socket.io.engine.close()")
    last_run(ann, "lost")
    expect(ann.page.locator(".collab-run:last-child .collab-run-refusal")).to_have_text(
        "The connection to the room dropped; the room ended this run."
    )
    ann.page.wait_for_function("window.collabEditor.live", timeout=30_000)
    last_run(bob, "lost")  # the room ended it when the page came back on another connection
    assert [] == [frame for frame in ann.page.evaluate("window.relayed") if frame == "after"]
    assert [] == ann.errors


def test_a_run_of_another_is_unknown_after_a_welcome_until_the_burst_says_it_still_runs(
    room_of: Callable[..., list[Runner]],
) -> None:
    # A run that ended while the page was away is never told to it (its session was gone): after
    # the welcome, only what the burst replays is running.
    ann, bob = room_of("Ann", "Bob")
    ann.page.evaluate(
        "window.welcomes = 0; window.addEventListener('collab-run',"
        " (event) => { if (event.detail.type === 'run_welcome') window.welcomes += 1; })"
    )
    ann.page.evaluate("window.socket.io.engine.close()")
    ann.page.wait_for_function("window.welcomes === 1 && window.collabEditor.live", timeout=30_000)
    bob.run("import time\nprint('b', flush=True)\ntime.sleep(1.5)\nprint('done')\n")
    ann.page.wait_for_function("window.collabRuns.runs.at(-1)?.chunks.length > 0", timeout=RUN_MS)
    run_id = ann.page.evaluate("window.collabRuns.runs.at(-1).runId")
    fire = "(detail) => window.dispatchEvent(new CustomEvent('collab-run', { detail }))"
    ann.page.evaluate(fire, {"type": "run_welcome"})
    last_run(ann, "unknown")
    expect(ann.page.locator(".collab-run:last-child .collab-run-status")).to_have_text(
        "ended while this page was disconnected"
    )
    ann.page.evaluate(fire, {"type": "run_started", "run_id": run_id, "username": "Bob", "kind": "code"})
    last_run(ann, "running")
    assert "" == ann.output()  # the burst's run_output replays what it printed so far
    bob.wait_ended("ok")
    last_run(ann, "ok")


def test_text_printed_without_a_newline_before_an_endless_loop_is_kept(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    ann.run("print('partial', end='')\nwhile True:\n    pass\n")
    ann.wait_ended("timeout")
    bob.wait_ended("timeout")
    assert ("partial", "partial") == (ann.output(), bob.output())


def test_a_runner_that_cannot_be_loaded_says_which_file(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    ann.page.route("**/runner/worker_js.js", lambda route: route.fulfill(status=404, body="not found"))
    ann.set_language("javascript")
    ann.run("console.log(1)")
    ann.wait_ended("error")
    assert "could not be loaded" in ann.output() and "/runner/worker_js.js" in ann.output()
    assert "undefined" not in ann.output()
    assert [] == ann.errors


def test_a_run_the_room_started_after_the_page_gave_up_is_stopped(room_of: Callable[..., list[Runner]]) -> None:
    ann, bob = room_of("Ann", "Bob")
    # The run_start is held back until the page has given up on an answer, then sent: the room
    # answers late.
    ann.page.evaluate(
        """() => {
            const editor = window.collabEditor;
            window.sendNow = editor.sendRun.bind(editor);
            window.collabRuns.answerMs = 300;
            editor.sendRun = (message) => {
                if (message.type !== "run_start" || window.held) return window.sendNow(message);
                window.held = message;
                return true;
            };
        }"""
    )
    ann.run("print('late')")
    ann.wait_ended("refused")
    ann.page.evaluate("window.sendNow(window.held)")
    last_run(bob, "stopped")
    expect(ann.page.locator(".collab-run:last-child .collab-run-refusal")).to_have_text(
        "The room answered too late: the run was stopped."
    )
    assert "late" not in bob.output()


def test_code_cannot_restart_the_clock_or_post_output_of_another_shape(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    ann.set_language("javascript")
    ann.run(
        'setInterval(() => postMessage({type: "ready"}), 100);\n'
        'postMessage({type: "output", stream: "evil", text: "x"});\n'
        'postMessage({type: "output", stream: "stdout", text: {a: 1}});\n'
        'console.log("real");\n'
        "await new Promise(() => {});\n"
    )
    # Within the time limit and some: a run whose clock restarted would go on until the room lost it.
    ann.page.locator(".collab-run:last-child[data-status=timeout]").wait_for(timeout=15_000)
    assert "real" == ann.output().strip()


def test_forged_test_results_fail_the_run(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    ann.page.evaluate("window.collabEditor.send({type: 'question', question_id: 'two-sum'})")
    ann.page.wait_for_function("window.collabRuns.state.questionId === 'two-sum'")
    ann.set_code(
        "import js\nfrom pyodide.ffi import to_js\n"
        "def two_sum(nums, target):\n    return [0, 1]\n"
        "results = [{'actual': [0, 1], 'passed': True}]\n"
        "js.postMessage(to_js({'type': 'done', 'status': 'ok', 'results': results},"
        " dict_converter=js.Object.fromEntries))\n"
    )
    button = ann.page.locator(".collab-run-tests")
    expect(button).to_be_enabled(timeout=10_000)
    button.click()
    ann.wait_ended("error")
    assert "The run's test results cannot be used" in ann.output()


def test_an_interviewer_sees_whose_browser_reported_a_tests_runs_results(room_of: Callable[..., list[Runner]]) -> None:
    (ann,) = room_of("Ann")
    # The panel as an interviewer's page is told about two tests runs: a candidate's and an
    # interviewer's.
    ann.page.evaluate(
        """() => {
            const fire = (detail) => window.dispatchEvent(new CustomEvent("collab-run", { detail }));
            fire({ ...window.collabEditor.runState(), role: "interviewer" });
            const runs = [["cand1", "Cara", "candidate"], ["intv1", "Ivan", "interviewer"]];
            for (const [run_id, username, role] of runs) {
                const common = { run_id, role, kind: "tests" };
                fire({ type: "run_started", ...common, user_id: run_id, username, color: "#336699",
                       language: "python", version: 1 });
                fire({ type: "run_ended", ...common, status: "ok", duration_ms: 5, truncated: false,
                       passed: 1, total: 1, tests: [{ name: "one", passed: true, error: null }] });
            }
        }"""
    )
    reported = ann.page.locator("[data-run-id=cand1] .collab-run-reported")
    expect(reported).to_have_text("results reported by Cara's browser")
    expect(ann.page.locator("[data-run-id=intv1] .collab-run-reported")).to_have_count(0)
