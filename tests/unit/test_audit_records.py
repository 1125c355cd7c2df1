"""How mailrouter.admin.audit reads slapd's accesslog values (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailrouter.admin.audit import parse_changes, parse_since
from mailrouter.errors import AdminError


def test_changes_grouped_per_attribute_and_operation_without_bookkeeping() -> None:
    mods = [b"mail:= a@example.com", b"mailAliasedName:+ x@example.com", b"mailAliasedName:+ y@example.com",
            b":", b"mailAliasedName:- z@example.com", b"description:=", "userPassword:= <withheld>",
            b"entryCSN:= 20261130080709.204282Z#000000#000#000000", b"modifiersName:= uid=admin,o=top",
            b"modifyTimestamp:= 20261130080709Z", b"pwdChangedTime:= 20261130080708Z"]
    assert parse_changes(mods) == [
        {"attribute": "mail", "op": "replace", "values": ["a@example.com"]},
        {"attribute": "mailAliasedName", "op": "add", "values": ["x@example.com", "y@example.com"]},
        {"attribute": "mailAliasedName", "op": "delete", "values": ["z@example.com"]},
        {"attribute": "description", "op": "replace", "values": []},
        {"attribute": "userPassword", "op": "replace", "values": ["<withheld>"]},
    ]


def test_since_relative_and_absolute() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_since("12h", now) == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert parse_since("30m", now) == datetime(2026, 11, 30, 11, 30, tzinfo=UTC)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00+01:00", now) == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    with pytest.raises(AdminError) as refused:
        parse_since("yesterday", now)
    assert refused.value.field == "since"
