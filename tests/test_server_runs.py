"""Running code against a live server: raw /ws clients of an interview room (and of open rooms)
start runs, send their output and end them, as the page's runner does."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Client, LiveServer, start_server
from tests.test_server_roles import Interview, member, new_interview, say_hello

pytestmark = pytest.mark.slow

Connect = Callable[..., Any]
MAX_OUTPUT = 50


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for this module, with two run starts a minute and short outputs."""
    server = start_server(
        tmp_path_factory.mktemp("runs"),
        LINK_FAILURES_PER_ADDRESS_PER_MINUTE="100000",
        RUNS_PER_MINUTE="2",
        MAX_RUN_OUTPUT_CHARS=str(MAX_OUTPUT),
    )
    yield server
    server.stop()


@pytest.fixture
async def interview(live: LiveServer) -> Interview:
    return await new_interview(live)


def run_start(run_id: str, version: int = 0, kind: str = "code") -> dict[str, Any]:
    return {"type": "run_start", "run_id": run_id, "language": "python", "version": version, "kind": kind}


def run_output(run_id: str, text: str) -> dict[str, Any]:
    return {"type": "run_output", "run_id": run_id, "stream": "stdout", "text": text}


def run_end(run_id: str) -> dict[str, Any]:
    return {"type": "run_end", "run_id": run_id, "status": "ok", "duration_ms": 7}


async def test_the_welcome_tells_the_run_limits(interview: Interview, connect_client: Connect) -> None:
    client: Client = await connect_client(interview.ws)
    welcome = await say_hello(client, "cam", interview.tokens["candidate"])
    assert (True, 10.0, MAX_OUTPUT) == (
        welcome["runs_allowed"],
        welcome["run_timeout_seconds"],
        welcome["max_run_output_chars"],
    )


async def test_an_observers_run_start_is_forbidden(interview: Interview, connect_client: Connect) -> None:
    observer = await member(connect_client, interview, "observer")
    await observer.send(run_start("obs-1"))
    error = await observer.recv_type("error")
    assert ("forbidden", "obs-1") == (error["code"], error["run_id"])
    assert [] == [m for m in observer.inbox if m["type"] == "run_started"]


async def test_a_candidate_is_refused_once_runs_are_turned_off(interview: Interview, connect_client: Connect) -> None:
    interviewer = await member(connect_client, interview, "interviewer")
    candidate = await member(connect_client, interview, "candidate")
    await candidate.send(run_start("before"))
    assert "before" == (await candidate.recv_type("run_started"))["run_id"]
    await candidate.send(run_end("before"))
    await candidate.recv_type("run_ended")
    await interviewer.send({"type": "allow_runs", "allowed": False})
    assert False is (await candidate.recv_type("runs_allowed"))["allowed"]
    await candidate.send(run_start("after"))
    error = await candidate.recv_type("error")
    assert ("forbidden", "after") == (error["code"], error["run_id"])


async def test_a_runs_output_reaches_the_other_members_and_no_other_room(
    interview: Interview, live: LiveServer, connect_client: Connect
) -> None:
    interviewer = await member(connect_client, interview, "interviewer")
    observer = await member(connect_client, interview, "observer")
    elsewhere: Client = await connect_client(live.ws(f"test-{uuid.uuid4().hex[:12]}"))
    assert "welcome" == (await say_hello(elsewhere, "elsewhere"))["type"]
    await interviewer.send(run_start("shown"))
    started = await observer.recv_type("run_started")
    assert ("shown", True) == (started["run_id"], started["username"].startswith("interviewer-"))
    await interviewer.recv_type("run_started")  # the runner runs only once it has its own
    await interviewer.send(run_output("shown", "hello from the run\n"))
    assert "hello from the run\n" == (await observer.recv_type("run_output"))["text"]
    await interviewer.send(run_end("shown"))
    for client in (interviewer, observer):
        ended = await client.recv_type("run_ended")
        assert ("shown", "ok", 7) == (ended["run_id"], ended["status"], ended["duration_ms"])
    assert [] == [m for m in interviewer.inbox if m["type"] == "run_output"]  # never echoed to its runner
    await elsewhere.expect_silence()


async def test_run_starts_are_rate_limited(live: LiveServer, connect_client: Connect) -> None:
    client: Client = await connect_client(live.ws(f"test-{uuid.uuid4().hex[:12]}"))
    await say_hello(client, "runner")
    for number in range(2):
        await client.send(run_start(f"run-{number}"))
        await client.recv_type("run_started")
        await client.send(run_end(f"run-{number}"))
        await client.recv_type("run_ended")
    await client.send(run_start("run-2"))
    error = await client.recv_type("error")
    assert ("rate_limited", "run-2", True) == (error["code"], error["run_id"], error["retry_after"] > 0)


async def test_reconnecting_from_the_same_address_does_not_refill_the_run_bucket(
    live: LiveServer, connect_client: Connect
) -> None:
    url = live.ws(f"test-{uuid.uuid4().hex[:12]}")
    first: Client = await connect_client(url)
    await say_hello(first, "runner")
    for number in range(2):
        await first.send(run_start(f"run-{number}"))
        await first.recv_type("run_started")
        await first.send(run_end(f"run-{number}"))
        await first.recv_type("run_ended")
    await first.close()
    again: Client = await connect_client(url)
    await say_hello(again, "a-new-client-id")
    await again.send(run_start("run-2"))
    error = await again.recv_type("error")
    assert ("rate_limited", "run-2") == (error["code"], error["run_id"])


async def test_output_beyond_the_cap_is_cut_and_the_run_marked_truncated(
    live: LiveServer, connect_client: Connect
) -> None:
    url = live.ws(f"test-{uuid.uuid4().hex[:12]}")
    runner: Client = await connect_client(url)
    watcher: Client = await connect_client(url)
    await say_hello(runner, "runner")
    await say_hello(watcher, "watcher")
    await runner.send(run_start("long"))
    await runner.recv_type("run_started")
    for _ in range(3):
        await runner.send(run_output("long", "x" * 40))
    await runner.send(run_end("long"))
    ended = await watcher.recv_type("run_ended")
    relayed = [m["text"] for m in watcher.inbox if m["type"] == "run_output"]
    assert (["x" * 40, "x" * 10], True) == (relayed, ended["truncated"])


async def test_a_late_joiner_sees_the_run_going_with_its_output_so_far_after_the_question(
    interview: Interview, connect_client: Connect
) -> None:
    interviewer = await member(connect_client, interview, "interviewer")
    await interviewer.send({"type": "question", "question_id": "two-sum"})
    picked = await interviewer.recv_type("question")
    assert ["javascript", "python"] == picked["test_languages"]
    version = (await interviewer.recv_type("update"))["version"]  # the starter code
    observer = await member(connect_client, interview, "observer")
    await observer.recv_type("question")
    await interviewer.send(run_start("going", version))
    await interviewer.recv_type("run_started")
    await interviewer.send(run_output("going", "so far\n"))
    assert "so far\n" == (await observer.recv_type("run_output"))["text"]  # the room has it
    late: Client = await connect_client(interview.ws)
    welcome = await say_hello(late, "late-observer", interview.tokens["observer"])
    burst = [await late.recv() for _ in range(3)]
    assert ("welcome", ["question", "run_started", "run_output"]) == (welcome["type"], [m["type"] for m in burst])
    question, started, printed = burst
    assert (None, ["javascript", "python"]) == (question["user_id"], question["test_languages"])
    assert ("going", version, True) == (
        started["run_id"],
        started["version"],
        started["username"].startswith("interviewer-"),
    )
    assert ("going", "stdout", "so far\n") == (printed["run_id"], printed["stream"], printed["text"])
    await interviewer.send(run_end("going"))
    ended = await late.recv_type("run_ended")
    assert ("going", "ok") == (ended["run_id"], ended["status"])
