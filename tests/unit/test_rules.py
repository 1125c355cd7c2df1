"""mailrouter.rules: what Exim is given for vacation replies and Sieve filters, and what may be stored."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from mailrouter import rules
from mailrouter.mailbox import maildir

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split())


# -- vacation -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    (None, "7d"), ("", "7d"), ("7d", "7d"), ("12h", "12h"), (" 2W ", "2w"), ("90s", "90s"), ("365d", "365d"),
])
def test_interval_is_an_exim_time(text: str | None, expected: str) -> None:
    assert rules.interval(text) == expected


@pytest.mark.parametrize("text", ["soon", "7", "0d", "-1d", "1d12h", "366d", "53w", "7 d", "1y"])
def test_interval_refuses_anything_else(text: str) -> None:
    with pytest.raises(rules.RuleError):
        rules.interval(text)


def test_vacation_dates_are_inclusive_and_utc() -> None:
    attributes = {rules.VACATION_ACTIVE: "TRUE", rules.VACATION_TEXT: "away",
                  rules.VACATION_START: "20261130120000Z", rules.VACATION_END: "20261130120000Z"}
    vacation = rules.vacation_from(attributes)
    assert vacation.in_effect(NOW)
    assert not vacation.in_effect(NOW.replace(second=1))
    assert not vacation.in_effect(NOW.replace(minute=0, hour=11))


@pytest.mark.parametrize("attributes", [
    {rules.VACATION_ACTIVE: "FALSE", rules.VACATION_TEXT: "away"},
    {rules.VACATION_TEXT: "away"},
    {rules.VACATION_ACTIVE: "TRUE"},  # no text: nothing to send
    {rules.VACATION_ACTIVE: "TRUE", rules.VACATION_TEXT: "away", rules.VACATION_END: "2026-12-01"},  # garbled
])
def test_no_reply_without_a_usable_vacation(attributes: dict[str, str | None]) -> None:
    assert not rules.vacation_from(attributes).in_effect(NOW)


def test_the_answer_carries_subject_and_text_base64_encoded() -> None:
    vacation = rules.Vacation(True, "Abwesend \u2013 zurück am Montag\r\nBcc: x@y", "Grüße\r\nRégis",
                              None, None)
    fields = _fields(rules.vacation_answer("anna@example.org", vacation, "7d"))
    assert fields["address"] == "anna@example.org" and fields["repeat"] == "7d"
    subject = base64.b64decode(fields["subject"]).decode("ascii")
    assert subject.startswith("=?utf-8?") and "\n" not in subject  # one ASCII line: no header injection
    assert base64.b64decode(fields["text"]).decode() == "Grüße\nRégis\n"


def test_a_missing_subject_gets_the_default() -> None:
    vacation = rules.Vacation(True, None, "x", None, None)
    fields = _fields(rules.vacation_answer("a@example.org", vacation, "7d"))
    assert base64.b64decode(fields["subject"]) == b"Out of office"


def test_subject_and_text_checks() -> None:
    assert rules.check_subject("  Away  ") == "Away"
    for bad in ("a\nBcc: x@y", "x" * 201):
        with pytest.raises(rules.RuleError):
            rules.check_subject(bad)
    assert rules.check_text("a\r\nb") == "a\nb"
    for bad_text in ("", "  \n", "x\x00y", "x" * 8001):
        with pytest.raises(rules.RuleError):
            rules.check_text(bad_text)


# -- Sieve ---------------------------------------------------------------------------------

def test_tokens_skip_comments_and_read_strings() -> None:
    script = ('# a comment "redirect"\n/* redirect "x@y.example" */\nrequire ["fileinto"];\n'
              'if header :contains "subject" "a\\"b" { fileinto text:\nJunk\n..dot\n.\n; }\n')
    kinds = [(t.kind, t.value) for t in rules.tokens(script)]
    assert ("string", 'a"b') in kinds
    assert ("string", "Junk\n.dot") in kinds
    assert ("id", "redirect") not in kinds
    assert ("tag", ":contains") in kinds


@pytest.mark.parametrize("script", ['"open', "text:\nno end\n", "@"])
def test_tokens_refuse_what_no_parser_reads(script: str) -> None:
    with pytest.raises(rules.RuleError):
        rules.tokens(script)


def test_a_good_script_is_summarised() -> None:
    script = ('require ["fileinto", "copy"];\nif header :contains "subject" "x" { fileinto "Lists/exim"; }\n'
              'redirect :copy "Boss@Example.ORG";\nkeep;\n')
    summary = rules.check_script(script, maildir=True)
    assert summary.extensions == ("fileinto", "copy")
    assert summary.redirects == ("Boss@example.org",)
    assert summary.folders == ("Lists/exim",)


@pytest.mark.parametrize(("script", "maildir", "reason"), [
    ('require "vacation";\n', True, "vacation"),
    ('vacation "away";\n', True, "vacation"),
    ('require "reject";\n', True, "backscatter"),
    ('reject "no";\n', True, "backscatter"),
    ('ereject "no";\n', True, "backscatter"),
    ('require "enotify";\n', True, "not available"),
    ('require "imap4flags";\n', True, "not available"),
    ('redirect "|/bin/sh";\n', True, "plain local@domain"),
    ('redirect "/etc/passwd";\n', True, "plain local@domain"),
    ('redirect ":include:/etc/aliases";\n', True, "plain local@domain"),
    ('redirect "a@b@example.org";\n', True, "plain local@domain"),
    ('redirect "nobody";\n', True, "plain local@domain"),
    ("redirect;\n", True, "plain local@domain"),
    ("".join(f'redirect "r{i}@example.org";\n' for i in range(6)), True, "at most 5"),
    ('require "fileinto";\nfileinto "Junk";\n', False, "needs a Maildir"),
    ('require "fileinto";\nfileinto "../../etc";\n', True, "no '..'"),
    ('require "fileinto";\nfileinto ".hidden";\n', True, "no leading dot"),
    ('require "fileinto";\nfileinto "/abs";\n', True, "no empty part"),
    ('require "fileinto";\nfileinto "INBOX";\n', True, "use keep"),
    ("keep;\x00", True, "NUL"),
    ("#" * (rules.MAX_SCRIPT + 1), True, "longer than"),
])
def test_scripts_that_break_a_rule(script: str, maildir: bool, reason: str) -> None:
    with pytest.raises(rules.RuleError, match=reason):
        rules.check_script(script, maildir=maildir)


@pytest.mark.parametrize(("name", "directory"), [
    ("Junk", ".Junk"), ("Lists/exim", ".Lists.exim"), ("Lists.exim", ".Lists.exim"),
    ("Spam 2026", ".Spam 2026"),
])
def test_folder_names_become_maildirplusplus_directories(name: str, directory: str) -> None:
    assert rules.folder_directory(name) == directory
    assert maildir.is_folder_directory(directory)


@pytest.mark.parametrize("name", ["", "..", "a/../b", "a//b", ".x", "x.", " x", "a\nb", "a\x00b", "x" * 201,
                                  "inbox", "Inbox"])
def test_folder_names_that_could_leave_the_maildir_are_refused(name: str) -> None:
    with pytest.raises(rules.RuleError):
        rules.folder_directory(name)


@pytest.mark.parametrize("name", ["", ".", "..", "..x", "x", ".a/b", ".a..b", ".a."])
def test_maildir_refuses_anything_but_one_folder_entry(name: str) -> None:
    assert not maildir.is_folder_directory(name)


def test_the_filter_text_starts_with_the_sieve_marker_once() -> None:
    assert rules.exim_filter_text("keep;\r\n") == "# Sieve filter\nkeep;\n"
    assert rules.exim_filter_text("#Sieve Filter\nkeep;\n") == "# Sieve filter\nkeep;\n"
    # An Exim filter marker in the script is only a Sieve comment after ours.
    assert rules.exim_filter_text("# Exim filter\nsave /tmp/x\n").startswith("# Sieve filter\n# Exim filter")


def test_the_sieve_answer_is_one_line() -> None:
    line = rules.sieve_answer("keep;\n", "mailbox=/var/mail/a@b.example format=mbox quota=0 uid=8 gid=8")
    first, _, rest = line.partition(" ")
    assert first.startswith("sieve=") and "\n" not in line
    assert base64.b64decode(first[len("sieve="):]) == b"# Sieve filter\nkeep;\n"
    assert rest.startswith("mailbox=")
