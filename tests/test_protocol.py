"""Parsing client frames and encoding server messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from rooms.changes import ChangeSet
from rooms.document import ClientId, Update
from rooms.errors import InvalidJson, InvalidMessage, MessageTooLarge
from rooms.protocol import (
    CodeChange,
    CodeChangeOut,
    ErrorOut,
    Hello,
    Join,
    Notes,
    Push,
    UpdateOut,
    Welcome,
    _client_adapter,
    parse_client_message,
)
from rooms.room_messages import encode_update_for


def test_hello_parses_with_optional_version() -> None:
    message = parse_client_message('{"type":"hello","client_id":"c","username":"ann","version":null}', 1000)
    assert Hello(type="hello", client_id="c", username="ann", version=None) == message


def test_unknown_fields_are_ignored() -> None:
    message = parse_client_message('{"type":"join","username":"ann","avatar":"x.png"}', 1000)
    assert Join(type="join", username="ann") == message


def test_code_change_keeps_cursor_position_as_given() -> None:
    message = parse_client_message('{"type":"code_change","code":"x","cursor_position":{"line":1}}', 1000)
    assert isinstance(message, CodeChange)
    assert {"line": 1} == message.cursor_position


def test_bytes_frames_are_accepted() -> None:
    assert isinstance(parse_client_message(b'{"type":"push","version":0,"seq":1,"changes":[]}', 1000), Push)


@pytest.mark.parametrize("frame", ["{", "", "nan", '"text"', "[]", "1"])
def test_non_objects_are_invalid_json(frame: str) -> None:
    with pytest.raises(InvalidJson):
        parse_client_message(frame, 1000)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "template",
    [
        '{"type":"push","version":0,"seq":1,"changes":[%s]}',
        '{"type":"hello","client_id":"tab","username":%s}',
        '{"type":"code_change","code":"x","cursor_position":%s}',
        '{"type":"run_end","run_id":"r1","status":"ok","duration_ms":1,"results":[{"actual":%s}]}',
        '{"type":"ping","extra":[%s]}',
    ],
    ids=["push", "hello", "code_change", "run_end", "ignored_field"],
)
def test_nan_and_infinity_are_not_json_in_any_message(template: str, constant: str) -> None:
    with pytest.raises(InvalidJson, match=f"{constant} is not JSON"):
        parse_client_message(template % constant, 1000)


def test_deeply_nested_json_is_refused_cleanly() -> None:
    with pytest.raises(InvalidJson):
        parse_client_message("[" * 100_000 + "]" * 100_000, 10**6)


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"dance"}',
        '{"kind":"push"}',
        '{"type":["push"]}',
        '{"type":"push","version":-1,"seq":1,"changes":[]}',
        '{"type":"push","version":0,"seq":1,"changes":"abc"}',
        '{"type":"hello","client_id":"","username":"x"}',
        '{"type":"cursor","version":0,"anchor":-1,"head":0}',
    ],
)
def test_invalid_messages_raise_invalid_message(frame: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_client_message(frame, 1000)


def test_validation_errors_do_not_echo_input() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_client_message('{"type":"hello","client_id":"' + "s3cr3t" * 30 + '"}', 10_000)
    assert "s3cr3t" not in str(caught.value)
    assert "client_id" in str(caught.value)


def test_oversize_frame_is_refused_before_parsing() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        parse_client_message("x" * 101, 100)
    assert (101, 100) == (caught.value.size, caught.value.limit)


def test_update_encodes_without_absent_fields() -> None:
    update = UpdateOut(version=3, client_id="c", seq=1, changes=[1, [0, "a"]])
    assert {"type": "update", "version": 3, "client_id": "c", "seq": 1, "changes": [1, [0, "a"]]} == json.loads(
        update.encode()
    )


def test_welcome_omits_doc_when_resuming() -> None:
    welcome = Welcome(user_id="u", version=2, members=[], language="python", epoch="e", resume_token="t")
    assert "doc" not in json.loads(welcome.encode())


def test_full_text_code_change_keeps_null_cursor_position() -> None:
    message = CodeChangeOut(code="x", cursor_position=None, user_id="u")
    assert {"type": "code_change", "code": "x", "cursor_position": None, "user_id": "u"} == json.loads(message.encode())


def test_error_encodes_code_and_message() -> None:
    assert {"type": "error", "code": "invalid_json", "message": "m"} == json.loads(
        ErrorOut(code="invalid_json", message="m").encode()
    )


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"hello","client_id":"\\ud800","username":"x"}',
        '{"type":"code_change","code":"x","cursor_position":"\\udfff"}',
        '{"type":"push","version":0,"seq":1,"changes":[[0,"a\\ud83d"]]}',
    ],
)
def test_lone_surrogate_escapes_are_refused(frame: str) -> None:
    with pytest.raises(InvalidMessage, match="lone surrogate"):
        parse_client_message(frame, 1000)


def test_escaped_surrogate_pairs_are_valid_text() -> None:
    message = parse_client_message('{"type":"code_change","code":"\\ud83d\\ude00","cursor_position":0}', 1000)
    assert isinstance(message, CodeChange)
    assert "😀" == message.code


def test_a_large_cursor_position_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="200 bytes"):
        parse_client_message(json.dumps({"type": "code_change", "code": "x", "cursor_position": "p" * 300}), 10_000)


def test_binary_frames_must_be_utf8() -> None:
    with pytest.raises(InvalidJson, match="not UTF-8"):
        parse_client_message(b'{"type":"ping","x":"\xff"}', 1000)


# The fast encoder of every update must give exactly the model's text.

_lines = st.lists(
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"])), min_size=1, max_size=3
)


@given(
    keep=st.integers(0, 50),
    deleted=st.integers(0, 5),
    lines=_lines,
    client_id=st.text(min_size=1, max_size=20),
    seq=st.integers(0, 2**40),
    user_id=st.sampled_from(["", "9c2e51a07b3d"]),
    to_author=st.booleans(),
)
def test_update_encoding_matches_the_protocol_model(
    keep: int, deleted: int, lines: list[str], client_id: str, seq: int, user_id: str, to_author: bool
) -> None:
    parts: list[object] = [keep] if keep else []
    parts.append([deleted, *lines])
    parts.append(7)
    changes = ChangeSet.from_json(parts)
    update = Update(version=12, client_id=ClientId(client_id), seq=seq, changes=changes, user_id=user_id)

    expected = UpdateOut(
        version=12,
        client_id=client_id if to_author else None,
        seq=seq,
        changes=changes.to_json(),
        user_id=user_id or None,
    ).encode()
    recipient = ClientId(client_id) if to_author else None
    assert expected == encode_update_for(update, recipient)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6,
)


@given(
    version=_json_values | st.integers(0, 2**40),
    seq=_json_values | st.integers(0, 2**40),
    changes=_json_values | st.lists(_json_values, max_size=4),
    extra=st.dictionaries(st.sampled_from(["client_id", "x"]), _json_values, max_size=2),
)
def test_a_push_parses_as_the_model_validates_it(
    version: object, seq: object, changes: object, extra: dict[str, object]
) -> None:
    raw = json.dumps({"type": "push", "version": version, "seq": seq, "changes": changes, **extra})
    data = json.loads(raw)
    try:
        expected: object = _client_adapter.validate_python(data)
    except ValidationError:
        expected = InvalidMessage
    try:
        parsed: object = parse_client_message(raw, 1_000_000)
    except InvalidMessage:
        parsed = InvalidMessage
    assert expected == parsed


def test_an_update_for_anyone_but_its_author_has_no_client_id() -> None:
    update = Update(version=3, client_id=ClientId("tab-a"), seq=1, changes=ChangeSet.from_json([[0, "x"]]), user_id="u")

    assert "client_id" in json.loads(encode_update_for(update, ClientId("tab-a")))
    assert "client_id" not in json.loads(encode_update_for(update, ClientId("tab-b")))
    assert "client_id" not in json.loads(encode_update_for(update, None))


# Integers on the wire stay within JavaScript's safe range (0 .. 2^53 - 1).


@pytest.mark.parametrize("field", ["version", "seq"])
@pytest.mark.parametrize("value", [2**53, 2**63, 2**64 + 1])
def test_a_push_with_an_integer_beyond_the_safe_range_is_invalid(field: str, value: int) -> None:
    message = {"type": "push", "version": 0, "seq": 1, "changes": [[0, "x"]], field: value}
    with pytest.raises(InvalidMessage):
        parse_client_message(json.dumps(message), 1_000_000)


def test_a_push_at_the_largest_safe_integer_parses() -> None:
    raw = json.dumps({"type": "push", "version": 2**53 - 1, "seq": 2**53 - 1, "changes": []})
    assert Push(type="push", version=2**53 - 1, seq=2**53 - 1, changes=[]) == parse_client_message(raw, 1_000_000)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "hello", "client_id": "c", "version": 2**53},
        {"type": "cursor", "version": 2**53, "anchor": 0, "head": 0},
        {"type": "cursor", "version": 0, "anchor": 2**63, "head": 0},
        {"type": "cursor", "version": 0, "anchor": 0, "head": 2**53},
    ],
    ids=["hello-version", "cursor-version", "cursor-anchor", "cursor-head"],
)
def test_other_integers_beyond_the_safe_range_are_invalid(message: dict[str, object]) -> None:
    with pytest.raises(InvalidMessage):
        parse_client_message(json.dumps(message), 1_000_000)


@given(
    version=st.integers(-(2**65), 2**65),
    seq=st.integers(-(2**65), 2**65),
)
def test_the_push_fast_path_bounds_integers_as_the_model_does(version: int, seq: int) -> None:
    raw = json.dumps({"type": "push", "version": version, "seq": seq, "changes": []})
    valid = 0 <= version <= 2**53 - 1 and 0 <= seq <= 2**53 - 1
    try:
        parse_client_message(raw, 1_000_000)
        parsed = True
    except InvalidMessage:
        parsed = False
    assert valid == parsed


def test_an_ack_encodes_as_its_model() -> None:
    from rooms.protocol import AckOut, encode_ack

    assert AckOut(seq=7, version=12).encode() == encode_ack(7, 12)
    assert {"type": "ack", "seq": 7, "version": 12} == json.loads(encode_ack(7, 12))


def test_notes_built_on_the_server_refuse_a_lone_surrogate() -> None:
    # A page's notes panel builds the message itself, without the frame parser's check.
    with pytest.raises(ValidationError, match="lone surrogate"):
        Notes(type="notes", text="x\ud800y")
