"""A user's mail rules (issue 16): the vacation reply and the Sieve script.

Functions take a bound :class:`~mailrouter.admin.session.AdminSession` first and
return JSON-ready data; they raise only AdminError, DirectoryUnavailable or
TemporaryFailure.  What may be stored is :mod:`mailrouter.rules` (the same
rules the lookup hook applies before Exim gets anything); who may store it is
slapd's (``ldap/acl.conf`` rule 2b: the user themself, their domain's admins,
global admins).

Vacation: ``vacation_set`` stores the text (and subject, dates) and switches
the reply on; ``vacation_off`` switches it off and keeps the text for next
time.  Dates are UTC: ``YYYY-MM-DD`` (a start date means its first second, an
end date its last), ``YYYY-MM-DDTHH:MM`` or a GeneralizedTime; an empty
string clears one.

Sieve: ``sieve_set`` refuses a script that breaks our rules (the message says
which line and why) or that Exim's own Sieve parser refuses -- checked with
``exim -bf`` on a test message, quoting Exim's error.  Exim runs as
``nobody`` when this runs as root, in a private temporary directory, with the
script in a file (never on a command line) and an empty environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mailrouter import rules
from mailrouter.admin import users
from mailrouter.admin.eximcmd import EXIM
from mailrouter.admin.normalise import normalise_address
from mailrouter.admin.session import AdminSession
from mailrouter.directory import MODIFY_REPLACE, first
from mailrouter.errors import AdminError, TemporaryFailure

EXIM_CHECK_TIMEOUT = 20.0
# The message a script is tried on; a parse error is reported whatever the message.
TEST_MESSAGE = (
    b"From: sender@example.net\nTo: user@example.org\nSubject: mailrouter script check\n"
    b"Message-ID: <check@mailrouter.invalid>\n\nThis message checks a Sieve script.\n"
)
_SIEVE_ERROR = re.compile(r"(?m)^Sieve error: (.*?)(?: in line ([0-9]+))?$")


def _user_dn(s: AdminSession, address: str) -> tuple[str, str]:
    local, domain = normalise_address(address)
    return f"{local}@{domain}", s.user_dn(local, domain)


def _read(s: AdminSession, address: str) -> tuple[str, str, dict[str, str | None]]:
    canonical, dn = _user_dn(s, address)
    found = s.read(dn, "mailUser", ["uid", *rules.ATTRIBUTES])
    if found is None:
        raise AdminError(f"no such user {canonical}", kind="not_found")
    return canonical, dn, {name: first(found, name) for name in rules.ATTRIBUTES}


def _interval(s: AdminSession) -> str:
    found = s.read(s.setting_dn(rules.INTERVAL_SETTING), "mailSetting", ["mailSettingValue"])
    value = first(found, "mailSettingValue") if found else None
    try:
        return rules.interval(value)
    except rules.RuleError:
        return f"{value} (unusable: replies wait until it is fixed)"


def parse_date(text: str, *, end: bool, field: str) -> datetime | None:
    """A date typed by a person (module docstring); ``None`` for an empty one."""
    value = text.strip()
    if not value:
        return None
    for layout, whole_day in (("%Y-%m-%d", True), ("%Y-%m-%dT%H:%M", False), ("%Y-%m-%d %H:%M", False),
                              (rules.GENERALIZED_TIME, False)):
        try:
            moment = datetime.strptime(value, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
        if whole_day and end:
            moment += timedelta(days=1, seconds=-1)
        return moment
    raise AdminError(f"invalid date {text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)", field=field)


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def vacation_show(s: AdminSession, address: str) -> dict[str, Any]:
    canonical, _dn, found = _read(s, address)
    vacation = rules.vacation_from(found)
    return {
        "address": canonical,
        "active": vacation.active,
        "in_effect": vacation.in_effect(datetime.now(UTC)),
        "subject": found[rules.VACATION_SUBJECT],
        "text": found[rules.VACATION_TEXT],
        "start": _iso(vacation.start),
        "end": _iso(vacation.end),
        "interval": _interval(s),
    }


def vacation_set(
    s: AdminSession,
    address: str,
    text: str,
    subject: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    """Store the reply and switch it on.  ``start``/``end`` ``None`` keep what is stored,
    ``""`` clears it; ``subject`` ``None`` or empty means the default subject."""
    canonical, dn, found = _read(s, address)
    try:
        body = rules.check_text(text)
    except rules.RuleError as exc:
        raise AdminError(str(exc), field="text") from None
    try:
        title = rules.check_subject(subject) if subject else ""
    except rules.RuleError as exc:
        raise AdminError(str(exc), field="subject") from None
    begins = (parse_date(start, end=False, field="start") if start is not None
              else rules.vacation_from(found).start)
    ends = parse_date(end, end=True, field="end") if end is not None else rules.vacation_from(found).end
    if begins is not None and ends is not None and ends < begins:
        raise AdminError("the end is before the start", field="end")
    changes = {
        rules.VACATION_ACTIVE: (MODIFY_REPLACE, ["TRUE"]),
        rules.VACATION_TEXT: (MODIFY_REPLACE, [body]),
        rules.VACATION_SUBJECT: (MODIFY_REPLACE, [title] if title else []),
        rules.VACATION_START: (MODIFY_REPLACE, [rules.format_time(begins)] if begins else []),
        rules.VACATION_END: (MODIFY_REPLACE, [rules.format_time(ends)] if ends else []),
    }
    s.modify(dn, changes, None, f"set the vacation reply of {canonical}", f"user {canonical}",
             f"no such user {canonical}")
    when = ""
    if begins or ends:
        when = f" from {_iso(begins) or 'now'} until {_iso(ends) or 'switched off'}"
    shown = vacation_show(s, canonical)
    if not shown["in_effect"]:
        when += " (not replying now: outside these dates)"
    return {"ok": True, "message": f"vacation reply of {canonical} is on{when}", **shown}


def vacation_off(s: AdminSession, address: str) -> dict[str, Any]:
    """Switch the reply off (the text stays for next time)."""
    canonical, dn, found = _read(s, address)
    if (found[rules.VACATION_ACTIVE] or "").upper() != "TRUE":
        return {"ok": True, "changed": False, "message": f"vacation reply of {canonical} is already off",
                "address": canonical}
    s.modify(dn, {rules.VACATION_ACTIVE: (MODIFY_REPLACE, ["FALSE"])}, None,
             f"switch off the vacation reply of {canonical}", f"user {canonical}")
    return {"ok": True, "changed": True, "message": f"vacation reply of {canonical} is off",
            "address": canonical}


def sieve_show(s: AdminSession, address: str) -> dict[str, Any]:
    canonical, _dn, found = _read(s, address)
    return {"address": canonical, "script": found[rules.SIEVE_SCRIPT]}


def exim_check(script: str) -> None:
    """Exim's own Sieve parser on ``script`` (``exim -bf``): AdminError quoting its error.

    TemporaryFailure when Exim cannot be run (the script is then not stored)."""
    text = rules.exim_filter_text(script)
    shift = text.count("\n") - script.replace("\r\n", "\n").count("\n")
    with tempfile.TemporaryDirectory(prefix="mailrouter-sieve-") as workdir:
        os.chmod(workdir, 0o755)  # noqa: S103 - nobody must reach the file; nothing else is in here
        path = Path(workdir) / "script.sieve"
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        who: dict[str, Any] = {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}
        try:
            done = subprocess.run(
                [EXIM, "-C", "/dev/null", "-bf", str(path)], input=TEST_MESSAGE, capture_output=True,
                timeout=EXIM_CHECK_TIMEOUT, cwd=workdir, env={"PATH": "/usr/sbin:/usr/bin:/bin"},
                check=False, **who,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TemporaryFailure(f"cannot check the script with {EXIM} -bf: {exc}") from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    error = _SIEVE_ERROR.search(output)
    if error:
        where = f" in line {max(1, int(error.group(2)) - shift)}" if error.group(2) else ""
        raise AdminError(f"Exim refuses the script: {error.group(1)}{where}", field="script")
    if done.returncode != 0 or "Testing Sieve filter file" not in output:
        raise TemporaryFailure(f"cannot check the script with {EXIM} -bf (rc {done.returncode}): "
                               + " ".join(output.split())[:300])


def check_script(script: str, *, maildir: bool) -> rules.ScriptSummary:
    """Our rules (``fileinto`` only for a Maildir user), then Exim's parser; AdminError
    (field ``script``) when either refuses."""
    if not script.strip():
        raise AdminError("the script is empty (remove it instead)", field="script")
    try:
        summary = rules.check_script(script, maildir=maildir)
    except rules.RuleError as exc:
        raise AdminError(f"script refused: {exc}", field="script") from None
    exim_check(script)
    return summary


def sieve_set(s: AdminSession, address: str, script: str) -> dict[str, Any]:
    canonical, dn, _found = _read(s, address)
    body = script.replace("\r\n", "\n")
    # fileinto is for Maildir users: the format delivery uses for this user (a
    # garbled mailMessageFormat counts as not Maildir; its mail waits anyway).
    found = s.read(dn, "mailUser", [users.FORMAT])
    mailbox_format = users.format_of(s, first(found, users.FORMAT) if found else None)
    summary = check_script(body, maildir=mailbox_format == "maildir")
    s.modify(dn, {rules.SIEVE_SCRIPT: (MODIFY_REPLACE, [body])}, None,
             f"set the Sieve script of {canonical}", f"user {canonical}")
    return {"ok": True, "message": f"Sieve script of {canonical} stored ({len(body)} characters)",
            "address": canonical, "redirects": list(summary.redirects), "folders": list(summary.folders)}


def sieve_remove(s: AdminSession, address: str) -> dict[str, Any]:
    canonical, dn, found = _read(s, address)
    if not found[rules.SIEVE_SCRIPT]:
        return {"ok": True, "changed": False, "message": f"{canonical} has no Sieve script",
                "address": canonical}
    s.modify(dn, {rules.SIEVE_SCRIPT: (MODIFY_REPLACE, [])}, None,
             f"remove the Sieve script of {canonical}", f"user {canonical}")
    return {"ok": True, "changed": True, "message": f"removed the Sieve script of {canonical}",
            "address": canonical}
