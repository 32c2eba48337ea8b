"""One exception tree for the domain.

Every error keeps its data in fields and builds a lowercase message from the real values. The
transports turn a `RoomError` into a wire ``error`` message using its stable ``code``; nothing
below this module knows about the wire.
"""

from __future__ import annotations


class RoomError(Exception):
    """Base class of every domain error. ``code`` is the stable wire error code."""

    # The seq of the push refused, where the error answers one (`TooComplex`, `Resync`).
    seq: int | None = None
    # The run a refused ``run_start``, ``run_output`` or ``run_end`` was about.
    run_id: str | None = None

    code = "room_error"
    # The type of the message that failed, when it is known: it tells a connection that has
    # not joined yet which protocol's error format to answer in.
    message_type: str | None = None


class InvalidChanges(RoomError):
    """A ChangeSet is malformed, or does not fit the document it is applied to."""

    code = "invalid_changes"


class InvalidMessage(RoomError):
    """A message is not one the protocol knows, or fails validation."""

    code = "invalid_message"


class DocumentTooLarge(RoomError):
    """Applying a change would make the document longer than the configured limit."""

    code = "too_large"

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"document would be {length} characters, the limit is {limit}; the change was not applied")


class VersionTooOld(RoomError):
    """A push or hello refers to a version the kept history no longer reaches back to."""

    code = "version_too_old"

    def __init__(self, version: int, oldest: int, current: int) -> None:
        self.version = version
        self.oldest = oldest
        self.current = current
        super().__init__(
            f"version {version} is older than the oldest kept version {oldest} "
            f"(current is {current}); resynchronise with hello"
        )


class VersionFromFuture(RoomError):
    """A push refers to a version the document has not reached."""

    code = "invalid_version"

    def __init__(self, version: int, current: int) -> None:
        self.version = version
        self.current = current
        super().__init__(f"version {version} is ahead of the document's version {current}")


class RateLimited(RoomError):
    """A connection sent more messages than its token bucket allows."""

    code = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many messages; retry in {retry_after:.2f} s")


class InvalidJson(RoomError):
    """A frame is not a JSON object."""

    code = "invalid_json"


class MessageTooLarge(RoomError):
    """A frame is larger than the configured message size limit."""

    code = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message is {size} bytes, the limit is {limit}")


class RoomFull(RoomError):
    """A room already has as many members as it may."""

    code = "room_full"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the room already has {limit} members, the most it may have")


class SeqReused(RoomError):
    """A push reuses a ``seq`` its client already spent on different changes.

    A resend carries the seq of the batch that was in flight, so it is never below the last
    applied seq and, when equal, it is the same change. Anything else means two copies of one
    client (a duplicated browser tab) are pushing under the same ``client_id``: applying or
    ignoring the push would both make that copy's replica diverge.
    """

    code = "seq_reused"

    def __init__(self, seq: int, last: int) -> None:
        self.seq = seq
        self.last = last
        super().__init__(
            f"seq {seq} was already used by this client_id (last applied: {last}) for other changes; "
            "reset with a new client_id and re-apply unconfirmed edits"
        )


class ClientIdInUse(RoomError):
    """Another live connection in the room already speaks for this ``client_id``."""

    code = "client_id_in_use"

    def __init__(self) -> None:
        super().__init__(
            "another connection in this room uses this client_id; send hello with a new client_id, "
            "or with the resume_token of the connection to take it over"
        )


class Forbidden(RoomError):
    """The member's role may not do what the message asks (see `rooms.access.allowed`), or a
    credential is missing, unknown or revoked. Nothing changed; the connection stays open."""

    code = "forbidden"


class UnknownRoom(Forbidden):
    """No room has this id, and none is made here (a link, the rooms API, ``OPEN_ROOMS=false``)."""

    def __init__(self) -> None:
        super().__init__("there is no room with this id")


class NoOpenRooms(Forbidden):
    """A room that is not private, on a server with ``OPEN_ROOMS=false``."""

    def __init__(self) -> None:
        super().__init__("this server has no open rooms: create a room from the start page")


class ReadOnly(Forbidden):
    """An edit from a member for whom the editor is read-only (an observer, a locked or ended
    room); nothing changed."""

    code = "read_only"


class RunRefused(RoomError):
    """A run message the room cannot take now: too many runs going, the member has one going
    already, no question with tests, or no such run of the member's. Nothing changed."""

    code = "run_refused"


class InternalError(RoomError):
    """The server failed to handle a message (a bug); the room and the connection go on."""

    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("the server failed to handle this message; it was not applied")


class ServerStopping(RoomError):
    """The server is shutting down and admits no one; reconnect in a moment."""

    code = "server_restarting"

    def __init__(self) -> None:
        super().__init__("the server is restarting; reconnect in a moment")


class StorageUnavailable(RoomError):
    """The room's store could not be read or written; nothing was lost, reconnect in a moment."""

    code = "storage_unavailable"

    def __init__(self) -> None:
        super().__init__("the room's storage is unavailable; reconnect in a moment")


class TooComplex(RoomError):
    """A push holds more parts than one message may; no work was done on it."""

    code = "too_complex"

    def __init__(self, parts: int, limit: int) -> None:
        self.parts = parts
        self.limit = limit
        super().__init__(
            f"changes have {parts} parts, the limit is {limit}; send them as one replacement of the span they touch"
        )


class Resync(RoomError):
    """A push is too far behind to be rebased here; the client catches up and pushes again."""

    code = "resync"

    def __init__(self, behind: int, steps: int, max_versions: int, max_steps: int) -> None:
        self.behind = behind
        self.steps = steps
        self.max_versions = max_versions
        self.max_steps = max_steps
        super().__init__(
            f"push is {behind} versions behind and needs {steps} steps to rebase "
            f"(the limits are {max_versions} versions and {max_steps} steps); "
            "catch up with hello, then push the same edits again"
        )


class ServerBusy(RoomError):
    """The server holds as many rooms in memory as it may, and none can be unloaded for this one."""

    code = "server_busy"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the server has {limit} rooms open, the most it may have; try again later")


class TooManyNewRooms(RateLimited):
    """One address created more rooms in the last minute than it may (``rate_limited`` on the wire)."""

    def __init__(self, limit: int, retry_after: float) -> None:
        self.limit = limit
        RoomError.__init__(
            self, f"too many new rooms from this address (at most {limit} a minute); retry in {retry_after:.2f} s"
        )
        self.retry_after = retry_after


class TooManyFailedLinks(RateLimited):
    """A client address presented too many unknown or revoked links within a minute."""

    def __init__(self, quota: int, retry_after: float) -> None:
        self.quota = quota
        self.retry_after = retry_after
        RoomError.__init__(
            self,
            f"{quota} unknown or revoked links from this address within a minute; retry in {retry_after:.0f} s",
        )


class TooManyConnections(ServerBusy):
    """A client address already holds as many connections as it may (``server_busy``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        RoomError.__init__(self, f"your address already has {limit} connections, the most it may have; close some")
