"""Running the room's code, and the room's question: the run half of `rooms.room.Room`.

Code runs in the browser of the member who presses Run (a Web Worker: Pyodide for Python); the
room decides who may run, relays what the run prints, judges test results and stores each run
that ended. A run goes:

* ``run_start`` from a member the table lets run (`Act.RUN`): the room checks, in this order,
  that the run's id is new, the version is one the document reached, for ``kind: "tests"`` that
  the room's question has tests in that language, that the member has no run going and the room
  fewer than ``max_active_runs_per_room``, and last that the member's run bucket
  (``runs_per_minute``, see `RunControl.run_bucket_key`) has a token, so a refused start costs
  none. Then every versioned member gets ``run_started``, and the runner, for tests,
  ``run_cases`` (the inputs only): the runner starts only once it has its own ``run_started``.
* ``run_output`` from the runner: kept and relayed to the others up to ``max_run_output_chars``
  characters a run; beyond, nothing more of that run is kept or relayed, and it is ``truncated``.
* ``run_end`` from the runner: test results are judged here (`rooms.questions.judge`) against
  the expected values, which only those who may see the answers (`Act.ANSWERS`) are ever sent;
  the others get each case's pass or fail and error. The results are what the runner's browser
  reports: the room cannot check that the code it judged produced them, so ``run_started`` and
  ``run_ended`` name the runner's role. The run is stored (`RunRecord`, taken by
  `Room.take_write`) and its ``run_ended`` waits for that commit, like everything shown.
* a runner that leaves, or a run not ended within ``run_timeout_seconds`` plus
  `RUN_START_GRACE_SECONDS` (checked on the heartbeat), ends the run ``lost``.

A run's messages go to the versioned sessions of its own room only; full-text clients never see
any. The room's question (``access.question``) and whether members may run (``access.runs_allowed``)
are stored with its access state, durable before anyone is told.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from rooms.access import Act, allowed, refusal
from rooms.document import ClientId, Document, Update
from rooms.errors import InvalidMessage, RoomError, RunRefused
from rooms.limits import TokenBucket
from rooms.presence import Presence
from rooms.protocol import Language, WireProtocol
from rooms.questions import Question, Questions, judge
from rooms.room_access import AccessControl
from rooms.room_rebase import Made
from rooms.run_protocol import (
    RUN_LANGUAGES,
    AllowRuns,
    CaseInput,
    QuestionOut,
    RunCasesOut,
    RunEnd,
    RunEndedOut,
    RunKind,
    RunLanguage,
    RunMessage,
    RunOutput,
    RunOutputOut,
    RunsAllowedOut,
    RunStart,
    RunStartedOut,
    RunStatus,
    SetQuestion,
)
from rooms.session import Send, Session
from rooms.store import RunRecord

log = structlog.get_logger("collab.rooms")

# A run not ended this long after its timeout is lost: the page loads its runtime (Pyodide,
# several megabytes) before the timeout starts counting.
RUN_START_GRACE_SECONDS = 30.0
# A member may start this many runs at once before `runs_per_minute` applies.
RUN_BURST = 5
# The client_id of the updates that put a question's starter code into an empty document (their
# seq is the version they make, as a restore's).
QUESTION_CLIENT = "question"


@dataclass(eq=False, slots=True)
class ActiveRun:
    """A run going on in a member's browser."""

    run_id: str
    session: Session
    author: str
    color: str
    language: RunLanguage
    kind: RunKind
    version: int
    started: float  # wall clock: when it started, as stored
    began: float  # the room's clock: when it is overdue
    question: Question | None  # the question whose cases it runs (kind "tests")
    output: list[list[str]] = field(default_factory=list)  # [stream, text], adjacent streams merged
    chars: int = 0
    truncated: bool = False


class RunControl(AccessControl):
    """The run and question decisions of a `Room` (see the module docstring)."""

    document: Document
    language: str
    presence: Presence
    clock: Callable[[], float]
    questions: Questions
    runs: dict[str, ActiveRun]
    finished_runs: list[RunRecord]

    @abstractmethod
    def _language(self, session: Session, message: Language) -> None: ...

    @abstractmethod
    def _publish(self, session: Session | None, update: Update, made: Made) -> None: ...

    def init_runs(self, questions: Questions | None) -> None:
        self.questions = questions if questions is not None else Questions()
        self.runs = {}  # run_id -> the run, while it goes
        self.finished_runs = []  # runs that ended since the last `take_write`
        # The ids of the last runs that ended (as many as the store keeps): never reused.
        self.ended_run_ids: OrderedDict[str, None] = OrderedDict()
        # Run buckets by who the member is across connections (`run_bucket_key`): leaving and
        # coming back does not refill one. A bucket full again is forgotten (`end_overdue_runs`).
        self.run_buckets: dict[str, TokenBucket] = {}

    def run_message(self, session: Session, message: RunMessage) -> None:
        """Apply a run or question message (already checked against the table); a refusal
        carries the run's id."""
        try:
            match message:
                case RunStart():
                    self._run_start(session, message)
                case RunOutput():
                    self._run_output(session, message)
                case RunEnd():
                    self._run_end(session, message)
                case SetQuestion():
                    self._set_question(session, message.question_id)
                case AllowRuns():
                    self._allow_runs(session, message.allowed)
        except RoomError as error:
            if isinstance(message, RunStart | RunOutput | RunEnd):
                error.run_id = message.run_id
            raise

    # Runs

    def _run_start(self, session: Session, message: RunStart) -> None:
        settings = self.settings
        run_id = message.run_id
        if run_id in self.runs or run_id in self.ended_run_ids:
            raise RunRefused(f"run {run_id} exists already: give every run a new run_id")
        version = self.document.version
        if message.version > version:
            raise InvalidMessage(f"version {message.version} is ahead of the document's version {version}")
        question = None
        if message.kind == "tests":
            question = self.questions.get(self.access.question or "")
            if question is None or not question.has_tests(message.language):
                raise RunRefused(f"the room's question has no tests in {message.language}: pick one that has")
        going = next((run.run_id for run in self.runs.values() if run.session is session), None)
        if going is not None:
            raise RunRefused(f"run {going} of yours is still going: stop it before starting another")
        if len(self.runs) >= settings.max_active_runs_per_room:
            raise RunRefused(f"the room has {len(self.runs)} runs going, the most it may have; try again when one ends")
        now = self.clock()
        key = self.run_bucket_key(session)
        bucket = self.run_buckets.get(key)
        if bucket is None:
            rate = settings.runs_per_minute
            bucket = self.run_buckets[key] = TokenBucket.full(rate / 60, min(RUN_BURST, rate), now)
        bucket.take(now)  # `RateLimited`: too many runs started lately (last: a refused start costs none)
        member = self.presence.get(session.user_id)
        run = ActiveRun(
            run_id,
            session,
            member.username if member is not None else "",
            member.color if member is not None else "",
            message.language,
            message.kind,
            message.version,
            self.wall_clock(),
            now,
            question,
        )
        self.runs[run_id] = run
        self._to_versioned(self._run_started(run), "run_started")
        if question is not None:
            cases = [CaseInput(**case) for case in question.inputs()]
            function = question.functions[run.language]
            self._send(Send(session, RunCasesOut(run_id=run_id, function=function, cases=cases).encode(), "run_cases"))
        log.info("run_started", room_id=self.room_id, user_id=session.user_id, run_id=run_id, kind=run.kind)

    @staticmethod
    def run_bucket_key(session: Session) -> str:
        """Whose run bucket a start is charged to: who the member is across connections, since a
        client may reconnect, and mint a new client_id, at will. In a private room its link (so
        the members of one role share a bucket); in an open room its client's address as the
        limits per address count it (an IPv6 client's /64); its client_id only when the address
        is unknown (a test client, a Unix socket)."""
        if session.link_id is not None:
            return f"link:{session.link_id}"
        if session.address:
            return f"address:{session.address}"
        return f"client:{session.client_id}"

    @staticmethod
    def _run_started(run: ActiveRun) -> str:
        return RunStartedOut(
            run_id=run.run_id,
            user_id=run.session.user_id,
            username=run.author,
            color=run.color,
            language=run.language,
            version=run.version,
            kind=run.kind,
            role=run.session.role,
        ).encode()

    def _own_run(self, session: Session, run_id: str) -> ActiveRun:
        """The session's run ``run_id``, going; `RunRefused` otherwise."""
        if session.revoked:
            raise refusal(session.role, Act.RUN)
        run = self.runs.get(run_id)
        if run is None or run.session is not session:
            raise RunRefused(f"no run {run_id} of yours is going (it ended, or was never started)")
        return run

    def _run_output(self, session: Session, message: RunOutput) -> None:
        run = self._own_run(session, message.run_id)
        if run.truncated:
            return
        text = message.text
        left = self.settings.max_run_output_chars - run.chars
        if len(text) > left:
            text, run.truncated = text[:left], True
        if not text:
            return
        run.chars += len(text)
        if run.output and run.output[-1][0] == message.stream:
            run.output[-1][1] += text
        else:
            run.output.append([message.stream, text])
        relay = RunOutputOut(run_id=run.run_id, stream=message.stream, text=text).encode()
        self._to_versioned(relay, "run_output", but=session)

    def _run_end(self, session: Session, message: RunEnd) -> None:
        run = self._own_run(session, message.run_id)
        results = message.results
        judged = None
        if run.question is None:
            if results is not None:
                raise InvalidMessage("results are for runs of kind tests only")
        elif results is not None:
            try:
                judged = judge(run.question, results)
            except ValueError as exc:
                raise InvalidMessage(f"invalid results: {exc}") from None
        elif message.status == "ok":
            raise InvalidMessage(f"a tests run that ended ok needs one result per case ({len(run.question.cases)})")
        tests = None
        if judged is not None and run.question is not None:
            tests = [
                {"name": r.name, "passed": r.passed, "error": r.error, **case, "actual": r.actual}
                for r, case in zip(judged, run.question.hidden(), strict=True)
            ]
        self._finish(run, message.status, message.duration_ms, tests)

    def _finish(self, run: ActiveRun, status: RunStatus, duration_ms: int, tests: list[dict[str, Any]] | None) -> None:
        """Store the run that ended, and tell everyone once it is stored."""
        del self.runs[run.run_id]
        self.ended_run_ids[run.run_id] = None
        while len(self.ended_run_ids) > self.settings.max_stored_runs_per_room:
            self.ended_run_ids.popitem(last=False)
        session = run.session
        self.finished_runs.append(
            RunRecord(
                run_id=run.run_id,
                version=run.version,
                user_id=session.user_id,
                author=run.author,
                color=run.color,
                language=run.language,
                kind=run.kind,
                started=run.started,
                duration_ms=duration_ms,
                status=status,
                truncated=run.truncated,
                output=json.dumps(run.output, ensure_ascii=False),
                tests="" if tests is None else json.dumps(tests, ensure_ascii=False),
            )
        )
        self.mark_changed()  # durable before visible: the run_ended messages wait for the commit
        brief = None if tests is None else [{key: test[key] for key in ("name", "passed", "error")} for test in tests]
        ended = RunEndedOut(
            run_id=run.run_id,
            role=session.role,
            status=status,
            duration_ms=duration_ms,
            truncated=run.truncated,
            passed=None if tests is None else sum(test["passed"] for test in tests),
            total=None if tests is None else len(tests),
            tests=brief,
        )
        everyone = ended.encode()
        answers = everyone if tests is None else ended.model_copy(update={"tests": tests}).encode()
        for other in list(self.sessions.values()):
            if other.protocol is WireProtocol.VERSIONED:
                self._send(Send(other, answers if self.sees_answers(other) else everyone, "run_ended"))
        log.info("run_ended", room_id=self.room_id, user_id=session.user_id, run_id=run.run_id, status=status)

    def end_runs_of(self, session: Session) -> None:
        """The session left: its runs end lost (its browser may go on, but no one is told). Its
        run bucket stays: coming back does not refill it."""
        for run in [run for run in self.runs.values() if run.session is session]:
            self._lose(run)

    def end_overdue_runs(self) -> None:
        """The heartbeat's part: end lost every run not ended within its timeout and the start
        grace, and forget the run buckets that are full again (a new one would be the same), so
        the table holds only those who ran lately."""
        now = self.clock()
        deadline = now - self.settings.run_timeout_seconds - RUN_START_GRACE_SECONDS
        for run in [run for run in self.runs.values() if run.began < deadline]:
            self._lose(run)
        for key, bucket in list(self.run_buckets.items()):
            if bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst:
                del self.run_buckets[key]

    def _lose(self, run: ActiveRun) -> None:
        self._finish(run, "lost", max(0, round((self.clock() - run.began) * 1000)), None)

    @staticmethod
    def sees_answers(session: Session) -> bool:
        """Whether a member is sent test cases' expected values (`Act.ANSWERS`): interviewers,
        and everyone in an open room (there are no roles there)."""
        return allowed(session.role, Act.ANSWERS)

    # The room's question, and whether members may run code

    def _set_question(self, session: Session, question_id: str | None) -> None:
        question = None
        if question_id is not None:
            question = self.questions.get(question_id)
            if question is None:
                raise InvalidMessage(f"there is no question {question_id!r}; the room's question did not change")
        # An empty document gets the starter code, in the room's language if the question has
        # one for it; otherwise the room switches to Python (or the question's only language).
        language, update = self.language, None
        if question is not None and not self.document.text.strip():
            starters = question.starters
            if language not in starters:
                language = "python" if "python" in starters else next(iter(starters))
            document = self.document
            # Applied first: a starter over the size limit raises here, before anything changed.
            starter = starters[language]
            update = document.replace(starter, ClientId(QUESTION_CLIENT), document.version + 1, session.user_id)
        if question_id != self.access.question:
            self.access.question = question_id
            self._access_changed()
            for other in list(self.sessions.values()):
                if other.protocol is WireProtocol.VERSIONED:
                    self._send(Send(other, self.question_message(other, session.user_id), "question"))
            log.info("question_set", room_id=self.room_id, user_id=session.user_id, question_id=question_id)
        if language != self.language:
            self._language(session, Language(type="language", language=language))
        if update is not None:
            self._publish(session, update, Made(text=starter, if_empty=True, seq_is_version=True))

    def question_message(self, session: Session, user_id: str | None) -> str:
        """The room's ``question`` message as the member sees it."""
        question = self.questions.get(self.access.question or "")
        if question is None:
            return QuestionOut(question_id=None, test_languages=[], user_id=user_id).encode()
        cases = question.hidden() if self.sees_answers(session) else None
        tests = sorted(language for language in RUN_LANGUAGES if question.has_tests(language))
        return QuestionOut(**question.brief(), test_languages=tests, user_id=user_id, cases=cases).encode()

    def _allow_runs(self, session: Session, allowed: bool) -> None:
        if self.access.runs_allowed == allowed:
            return
        self.access.runs_allowed = allowed  # runs going on go on: only new ones are refused
        self._access_changed()
        self._to_versioned(RunsAllowedOut(allowed=allowed, user_id=session.user_id).encode(), "runs_allowed")
        log.info("runs_allowed" if allowed else "runs_disallowed", room_id=self.room_id, user_id=session.user_id)

    def welcome_runs(self) -> dict[str, Any]:
        """The welcome's fields about running code."""
        settings = self.settings
        return {
            "runs_allowed": self.access.runs_allowed,
            "run_timeout_seconds": settings.run_timeout_seconds,
            "max_run_output_chars": settings.max_run_output_chars,
        }

    def welcome_question(self, session: Session) -> str | None:
        """The question message a joining member gets after its welcome, when there is one."""
        if self.questions.get(self.access.question or "") is None:
            return None
        return self.question_message(session, None)

    def welcome_runs_going(self) -> list[tuple[str, str]]:
        """What a joining member gets after its welcome about each run going, by type: its
        ``run_started``, then what it printed so far as ``run_output`` (a part per stream change,
        so at most one per character kept), so that it sees the run as those who were there."""
        messages: list[tuple[str, str]] = []
        for run in self.runs.values():
            messages.append(("run_started", self._run_started(run)))
            messages.extend(
                ("run_output", RunOutputOut(run_id=run.run_id, stream=stream, text=text).encode())
                for stream, text in run.output
            )
        return messages
