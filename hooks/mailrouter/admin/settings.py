"""System settings: ``mailSetting=NAME,BASE`` with its ``mailSettingValue`` values.

NAME is one of :data:`~mailrouter.admin.normalise.SETTINGS`; values are checked
per setting (IP or network, domain, address, rate limit, an interval); a setting of
:data:`~mailrouter.admin.normalise.SINGLE_VALUED_SETTINGS` (``default_rate_limit``,
``vacation_interval``) holds at most one value.  Only global admins may change
them (ldap/acl.conf).  Functions take a bound
:class:`~mailrouter.admin.session.AdminSession` first and return JSON-ready data;
they raise only AdminError, DirectoryUnavailable or TemporaryFailure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailrouter import entries
from mailrouter.admin.normalise import SETTINGS, SINGLE_VALUED_SETTINGS, normalise_setting_value, setting_name
from mailrouter.admin.session import AdminSession, Changes
from mailrouter.directory import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE
from mailrouter.directory import values as attribute_values
from mailrouter.errors import AdminError

MODES = ("set", "add", "remove")


def _read(s: AdminSession, name: str) -> list[str] | None:
    attributes = s.read(s.setting_dn(name), "mailSetting", ["mailSetting", "mailSettingValue"])
    return None if attributes is None else attribute_values(attributes, "mailSettingValue")


def list_settings(s: AdminSession) -> list[dict[str, Any]]:
    """Every setting with its values (empty when unset)."""
    return [{"setting": name, "values": _read(s, name) or []} for name in SETTINGS]


def get_setting(s: AdminSession, name: str) -> dict[str, Any]:
    checked = setting_name(name)
    return {"setting": checked, "values": _read(s, checked) or []}


def change_setting(s: AdminSession, name: str, mode: str, values: Iterable[str]) -> dict[str, Any]:
    """``mode`` ``"set"`` (replace every value), ``"add"`` or ``"remove"`` (values
    compared case-insensitively); returns the values the setting holds afterwards."""
    checked = setting_name(name)
    if mode not in MODES:
        raise AdminError(f"mode must be one of {', '.join(MODES)}, not {mode!r}", field="mode")
    wanted: list[str] = []
    for raw in values:
        value = normalise_setting_value(checked, raw)
        if value not in wanted:
            wanted.append(value)
    current = _read(s, checked)
    if checked in SINGLE_VALUED_SETTINGS and mode != "remove" and (
        len(wanted) > 1 or (mode == "add" and current and wanted and wanted[0].lower() != current[0].lower())
    ):
        raise AdminError(f"{checked} holds one value: use 'set' to replace it", field="values")
    action = f"change system settings ({checked})"
    dn = s.setting_dn(checked)
    if current is None:
        if mode == "remove":
            return {"ok": True, "message": f"{checked} has no values", "setting": checked, "values": []}
        entry = entries.Entry(dn, {"objectClass": ["mailSetting"], "mailSetting": [checked],
                                   "mailSettingValue": wanted})
        s.add(entry, action, f"setting {checked}")
        s.commit()
        return {"ok": True, "message": f"{checked} = {', '.join(wanted)}", "setting": checked,
                "values": wanted}
    lowered = {v.lower(): v for v in current}
    change: Changes
    if mode == "set":
        result = wanted
        change = {"mailSettingValue": (MODIFY_REPLACE, wanted)}
    elif mode == "add":
        fresh = [v for v in wanted if v.lower() not in lowered]
        result = current + fresh
        change = {"mailSettingValue": (MODIFY_ADD, fresh)} if fresh else {}
    else:
        gone = [lowered[v.lower()] for v in wanted if v.lower() in lowered]
        result = [v for v in current if v not in gone]
        change = {"mailSettingValue": (MODIFY_DELETE, gone)} if gone else {}
    if change:
        s.modify(dn, change, None, action, f"setting {checked}")
    return {"ok": True, "message": f"{checked} = {', '.join(result) or '(none)'}", "setting": checked,
            "values": result}
