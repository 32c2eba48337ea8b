"""Members, colours and selections mapped through changes."""

from __future__ import annotations

from rooms.changes import ChangeSet
from rooms.presence import PALETTE, Presence, Selection, UserId, pick_color


def test_colours_are_distinct_until_the_palette_runs_out() -> None:
    presence = Presence()
    colours = [presence.add(UserId(f"u{i}"), f"user{i}").color for i in range(len(PALETTE))]
    assert len(PALETTE) == len(set(colours))
    assert PALETTE[0] == presence.add(UserId("extra"), "extra").color


def test_pick_color_reuses_a_freed_colour_first() -> None:
    assert PALETTE[1] == pick_color([PALETTE[0], PALETTE[2]])


def test_members_keep_join_order_and_describe_as_wire_dicts() -> None:
    presence = Presence()
    presence.add(UserId("b"), "bob")
    presence.add(UserId("a"), "ann")
    assert ["bob", "ann"] == [m["username"] for m in presence.describe()]
    assert {"user_id", "username", "color"} == set(presence.describe()[0])


def test_remove_is_idempotent() -> None:
    presence = Presence()
    presence.add(UserId("a"), "ann")
    assert presence.remove(UserId("a")) is not None
    assert presence.remove(UserId("a")) is None
    assert 0 == len(presence)


def test_selection_moves_with_text_inserted_before_it() -> None:
    changes = ChangeSet.of_replace(10, 2, 2, "😀")
    assert Selection(7, 9) == Selection(5, 7).mapped(changes)


def test_selection_inside_deleted_text_collapses_to_the_deletion() -> None:
    changes = ChangeSet.of_replace(10, 2, 8, "")
    assert Selection(2, 2) == Selection(4, 6).mapped(changes)


def test_cursor_at_an_insertion_point_stays_before_the_remote_text() -> None:
    changes = ChangeSet.of_replace(4, 2, 2, "xx")
    assert Selection(2, 2) == Selection(2, 2).mapped(changes)


def test_map_selections_updates_every_member_with_a_selection() -> None:
    presence = Presence()
    presence.add(UserId("a"), "ann")
    presence.add(UserId("b"), "bob")
    presence.set_selection(UserId("a"), Selection(3, 3))
    presence.map_selections(ChangeSet.of_replace(5, 0, 0, "ab"))
    assert Selection(5, 5) == presence.members[UserId("a")].selection
    assert presence.members[UserId("b")].selection is None
