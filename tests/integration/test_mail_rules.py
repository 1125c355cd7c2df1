"""Per-user mail rules (issue 16): vacation replies and Sieve filters, through real Exim and slapd.

The shipped ``exim/mailrouter.conf`` with its mail-rules routers (vacation:
Exim's autoreply; Sieve: Exim's own interpreter) and the installed hooks,
against a private slapd with the suite's data set.  Mailboxes are Maildirs
(``spool.format = maildir``), so Sieve ``fileinto`` has folders to fill.
Each test adds users of its own (``World.user``), so no test sees another's
rules.  A reply to a local sender lands in that sender's Maildir, where the
test reads it; a reply to a remote sender is queued for the closed test
relay, where the test finds it in Exim's log (``== SENDER R=remote``).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import grp
import io
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import BIN, hook_config, hub_exim, needs_root, start_slapd
from dataset import ACL_A, ACL_VICTIM_PASSWORD, Dataset, acl_password
from dovecot_support import Dovecot
from mailrouter import entries, passwords, rules
from mailrouter.admin import cli as admin_cli
from mailrouter.admin import rules as admin_rules
from mailrouter.sandbox import demo, tls
from mailrouter.sandbox.configs import write_private
from mailrouter.sandbox.dovecot import is_24
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd
from test_checkpassword_dovecot import imap
from test_exim_routing import start_lookupd, stop_process

pytestmark = needs_root

BASE = "o=top"
DOMAIN = "example.com"


@dataclass
class World:
    workdir: Path
    slapd: Slapd
    exim: Exim
    data: Dataset
    spool: Path
    admin_secret: Path
    config: Path
    counter: int = 0

    # -- LDAP as the global admin -----------------------------------------------
    def ldap(self, tool: str, ldif: str, *args: str) -> None:
        argv = [tool, "-x", "-H", self.slapd.uri, "-D", self.data.account("global-admin").dn]
        argv += ["-y", str(self.admin_secret), *args]
        done = subprocess.run(argv, input=ldif.encode(), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()

    def user(self, stem: str, quota: str | None = None, **rules: str) -> str:
        """A new user ``<stem><n>@example.com`` with the given rule attributes; its address."""
        self.counter += 1
        local = f"{stem}{self.counter}"
        entry = entries.user_entry(
            local, DOMAIN, BASE, password_hash=passwords.hash_password("pw-" + local, "ssha"),
            uid_number=8, gid_number=8, mailbox="/nonexistent", quota=quota,
        )
        entry.attributes.update({name: [value] for name, value in rules.items()})
        self.ldap("ldapadd", entries.to_ldif([entry]))
        return f"{local}@{DOMAIN}"

    def modify(self, address: str, **rules: str | None) -> None:
        local = address.split("@")[0]
        lines = [f"dn: uid={local},dc={DOMAIN},{BASE}", "changetype: modify"]
        for name, value in rules.items():
            lines += [f"replace: {name}", *([f"{name}: {value}"] if value is not None else []), "-"]
        self.ldap("ldapmodify", "\n".join(lines) + "\n")

    def setting(self, name: str, value: str | None) -> None:
        dn = f"mailSetting={name},{BASE}"
        subprocess.run(
            ["ldapdelete", "-x", "-H", self.slapd.uri, "-D", self.data.account("global-admin").dn,
             "-y", str(self.admin_secret), dn],
            capture_output=True, check=False,
        )
        if value is not None:
            self.ldap("ldapadd", f"dn: {dn}\nobjectClass: mailSetting\nmailSetting: {name}\n"
                                 f"mailSettingValue: {value}\n")

    # -- mail ---------------------------------------------------------------------
    def send(self, sender: str, recipients: list[str], headers: dict[str, str] | None = None,
             body: str = "hello\n", envelope_sender: str | None = None) -> None:
        """Submit one message (``exim -odi``): delivered, and any reply generated, at once."""
        message = EmailMessage()
        message["From"] = sender
        for name, value in (headers or {"To": ", ".join(recipients)}).items():
            message[name] = value
        if "Subject" not in message:
            message["Subject"] = "test message"
        message["Message-ID"] = f"<{time.monotonic_ns()}@remote.example>"
        message.set_content(body)
        result = self.exim.deliver(
            message.as_bytes(), *recipients,
            sender=envelope_sender if envelope_sender is not None else sender,
        )
        assert result.returncode == 0, result.output

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.spool / domain / local / "Maildir"

    def messages(self, address: str, folder: str = "") -> list[email.message.Message]:
        new = self.maildir(address) / folder / "new"
        if not new.is_dir():
            return []
        return [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        ]

    def replies_to(self, sender: str) -> int:
        """Autoreplies Exim generated for a remote ``sender`` (queued for the closed relay)."""
        return len(re.findall(rf"(?m) == {re.escape(sender)} R=remote ", self.exim.main_log()))


@pytest.fixture(scope="module")
def world(dataset: Dataset) -> Iterator[World]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the hooks run as Debian-exim.
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-rules-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset)
        cleanup.callback(slapd.stop)
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
        spool.chmod(0o775)
        config = hook_config(
            workdir / "mailrouter.toml", dataset, [slapd.uri], spool_format="maildir",
            maildir_template=f"{spool}/{{domain}}/{{local}}/Maildir",
        )
        admin_secret = write_private(
            workdir / "admin.secret", dataset.account("global-admin").password, group="root", mode=0o600
        )
        exim = hub_exim(workdir, config).prepare()
        cleanup.callback(exim.close)  # fails on a paniclog entry
        yield World(workdir, slapd, exim, dataset, spool, admin_secret, config)


def _vacation(text: str = "I am away until Monday.", **extra: str) -> dict[str, str]:
    return {"mailVacationActive": "TRUE", "mailVacationSubject": "Away", "mailVacationText": text, **extra}


# -- vacation ---------------------------------------------------------------------------------

def test_vacation_replies_once_per_sender_and_the_original_is_delivered(world: World) -> None:
    away = world.user("away", **_vacation("Back on Monday.\nRégis"))
    writer = world.user("writer")
    world.send(writer, [away], {"To": away, "Subject": "lunch?"})
    assert [m["Subject"] for m in world.messages(away)] == ["lunch?"]
    (reply,) = world.messages(writer)
    assert reply["From"] == away
    assert reply["To"] == writer
    assert reply["Subject"] == "Away"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Return-path"] == "<>"  # sent from the null sender: nobody answers it
    assert reply["References"]  # autoreply adds it (RFC 3834)
    assert reply.get_content().strip() == "Back on Monday.\nRégis"
    # The same sender again: delivered, not answered again within the interval.
    world.send(writer, [away], {"To": away, "Subject": "lunch? (2)"})
    assert len(world.messages(away)) == 2
    assert len(world.messages(writer)) == 1
    # Another sender gets their own reply.
    other = world.user("other")
    world.send(other, [away], {"Cc": away, "To": "someone@remote.example"})
    assert len(world.messages(other)) == 1


def test_the_interval_is_a_setting(world: World) -> None:
    away = world.user("interval", **_vacation())
    writer = world.user("writer")
    world.setting("vacation_interval", "8s")
    try:
        started = time.monotonic()
        world.send(writer, [away])
        world.send(writer, [away])
        assert time.monotonic() - started < 8, "too slow to test an 8 s interval"
        assert len(world.messages(writer)) == 1
        time.sleep(max(0.0, started + 9 - time.monotonic()))
        world.send(writer, [away])
        assert len(world.messages(writer)) == 2
        assert len(world.messages(away)) == 3
    finally:
        world.setting("vacation_interval", None)


@pytest.mark.parametrize(
    ("case", "headers", "envelope", "replied"),
    [
        ("plain", {}, None, True),
        ("in Cc", {"To": "x@remote.example", "Cc": "{away}"}, None, True),
        ("Auto-Submitted: no", {"Auto-Submitted": "no"}, None, True),
        ("null sender", {}, "", False),
        ("List-Id", {"List-Id": "<list.remote.example>"}, None, False),
        ("List-Unsubscribe", {"List-Unsubscribe": "<mailto:leave@remote.example>"}, None, False),
        ("Precedence: bulk", {"Precedence": "bulk"}, None, False),
        ("Precedence: list", {"Precedence": "list"}, None, False),
        ("Precedence: junk", {"Precedence": "junk"}, None, False),
        ("Auto-Submitted: auto-generated", {"Auto-Submitted": "auto-generated"}, None, False),
        ("Auto-Submitted: auto-replied", {"Auto-Submitted": "auto-replied"}, None, False),
        ("not in To or Cc (Bcc)", {"To": "x@remote.example"}, None, False),
        ("robot sender", {}, "owner-list@remote.example", False),
    ],
)
def test_who_gets_no_reply(world: World, case: str, headers: dict[str, str], envelope: str | None,
                           replied: bool) -> None:
    away = world.user("rules", **_vacation())
    sender = f"s{world.counter}@remote.example"
    fields = {"To": away, **{name: value.format(away=away) for name, value in headers.items()}}
    world.send(sender, [away], fields, envelope_sender=envelope)
    assert len(world.messages(away)) == 1, case  # always delivered
    replies = world.replies_to(envelope if envelope else sender)
    assert replies == (1 if replied else 0), (case, world.exim.main_log()[-2000:])


def test_start_and_end_dates_are_honoured(world: World) -> None:
    future = world.user("future", **_vacation(mailVacationStart="20991231000000Z"))
    past = world.user("past", **_vacation(mailVacationEnd="20200101000000Z"))
    now = world.user("now", **_vacation(mailVacationStart="20200101000000Z",
                                        mailVacationEnd="20991231235959Z"))
    inactive = world.user("inactive", **{**_vacation(), "mailVacationActive": "FALSE"})
    writer = world.user("writer")
    for address in (future, past, now, inactive):
        world.send(writer, [address])
        assert len(world.messages(address)) == 1
    assert [m["From"] for m in world.messages(writer)] == [now]


def test_two_vacationing_users_never_answer_each_other_twice(world: World) -> None:
    first = world.user("pingpong", **_vacation("first is away"))
    second = world.user("pingpong", **_vacation("second is away"))
    world.send(first, [second], {"To": second, "Subject": "are you there?"})
    assert world.exim.queue_run("-qff").returncode == 0
    # second has the original; first has second's reply and nothing else; the reply,
    # sent from <>, got no reply of its own.
    assert [m["Subject"] for m in world.messages(second)] == ["are you there?"]
    (reply,) = world.messages(first)
    assert reply["From"] == second and reply["Auto-Submitted"] == "auto-replied"
    queued = world.exim.queue_list().stdout
    assert first not in queued and second not in queued, queued


def test_a_garbled_interval_defers_and_nothing_is_lost(world: World) -> None:
    away = world.user("garbled", **_vacation())
    writer = world.user("writer")
    world.setting("vacation_interval", "soon")
    try:
        world.send(writer, [away])
        assert world.messages(away) == [] and world.messages(writer) == []
        assert f"{away}" in world.exim.queue_list().stdout
    finally:
        world.setting("vacation_interval", None)
    assert world.exim.queue_run("-qff").returncode == 0
    assert len(world.messages(away)) == 1 and len(world.messages(writer)) == 1
    assert "** " not in world.exim.main_log()


# -- Sieve -----------------------------------------------------------------------------------

FILTER = """require ["fileinto"];
if header :contains "subject" "[spam]" { fileinto "Junk"; stop; }
if header :contains "subject" "[list]" { fileinto "Lists/exim"; stop; }
if header :contains "subject" "[drop]" { discard; stop; }
if header :contains "subject" "[fwd]" { redirect "{target}"; stop; }
if header :contains "subject" "[copy]" { redirect "{target}"; keep; }
"""


def _filter(target: str) -> str:
    return FILTER.replace("{target}", target)


def test_sieve_keep_fileinto_discard_and_redirect(world: World) -> None:
    target = world.user("target")
    filtered = world.user("sieve", mailSieveScript=_filter(target))
    writer = world.user("writer")
    for subject in ("hello", "[spam] pills", "[list] release", "[drop] noise", "[fwd] for you",
                    "[copy] both"):
        world.send(writer, [filtered], {"To": filtered, "Subject": subject})
    assert [m["Subject"] for m in world.messages(filtered)] == ["hello", "[copy] both"]
    assert [m["Subject"] for m in world.messages(filtered, ".Junk")] == ["[spam] pills"]
    assert [m["Subject"] for m in world.messages(filtered, ".Lists.exim")] == ["[list] release"]
    assert (world.maildir(filtered) / ".Junk" / "maildirfolder").is_file()
    assert [m["Subject"] for m in world.messages(target)] == ["[fwd] for you", "[copy] both"]
    log = world.exim.main_log()
    assert "** " not in log  # nothing bounced, the discarded message included
    assert "R=mailrouter_sieve T=mailrouter_sieve_folder" in log


@pytest.mark.parametrize(
    ("case", "script"),
    [
        ("syntax error (Exim's parser)", 'require ["fileinto"];\nif header :contains "subject" "x" {\n'),
        ("unknown extension", 'require "reject";\nreject "go away";\n'),
        ("vacation (our rule)", 'require "vacation";\nvacation "away";\n'),
        ("folder leaving the Maildir", 'require "fileinto";\nfileinto "../../evil";\n'),
        ("pipe target", 'redirect "|/bin/sh -c id";\n'),
        ("file target", 'redirect "/etc/passwd";\n'),
        ("too many redirects", "".join(f'redirect "r{i}@remote.example";\n' for i in range(6))),
        ("run-time failure", 'require "fileinto";\nif address :is "from" "\\\\x" { keep; }\n'
                             'redirect "unqualified";\n'),
    ],
)
def test_a_broken_or_refused_script_delivers_to_the_inbox(world: World, case: str, script: str) -> None:
    """Written around our tools (raw LDAP): the mail still reaches the inbox, and only there."""
    filtered = world.user("broken", mailSieveScript=script)
    writer = world.user("writer")
    world.send(writer, [filtered], {"To": filtered, "Subject": case})
    assert [m["Subject"] for m in world.messages(filtered)] == [case]
    log = world.exim.main_log()
    assert "** " not in log and "remote.example R=remote" not in log.split(f"for {filtered}")[-1]
    assert not list(world.maildir(filtered).glob(".*/new/*")), case
    assert not Path("/tmp/evil").exists()


def test_fileinto_obeys_the_quota_of_the_whole_maildir(world: World) -> None:
    filtered = world.user("quota", quota="6K", mailSieveScript=_filter("nobody@example.com"))
    writer = world.user("writer")
    world.send(writer, [filtered], {"To": filtered, "Subject": "[spam] one"}, body="x" * 4000 + "\n")
    assert len(world.messages(filtered, ".Junk")) == 1
    world.send(writer, [filtered], {"To": filtered, "Subject": "[spam] two"}, body="y" * 4000 + "\n")
    assert len(world.messages(filtered, ".Junk")) == 1  # the folder counts: the second waits
    assert "mailbox full" in world.exim.main_log() or "maildir full" in world.exim.main_log()
    assert filtered in world.exim.queue_list().stdout


def test_vacation_and_sieve_together(world: World) -> None:
    """The reply is independent of the filter; the filter still files the original."""
    both = world.user("both", mailSieveScript=_filter("nobody@example.com"), **_vacation())
    writer = world.user("writer")
    world.send(writer, [both], {"To": both, "Subject": "[spam] offer"})
    assert [m["Subject"] for m in world.messages(both, ".Junk")] == ["[spam] offer"]
    assert [m["From"] for m in world.messages(writer)] == [both]


def test_ldap_down_defers_rules_and_all(world: World) -> None:
    both = world.user("down", mailSieveScript=_filter("nobody@example.com"), **_vacation())
    writer = world.user("writer")
    world.slapd.stop()
    try:
        world.send(writer, [both], {"To": both, "Subject": "[spam] while down"})
        assert world.messages(both, ".Junk") == [] and world.messages(both) == []
        assert both in world.exim.queue_list().stdout
    finally:
        world.slapd.restart()
    assert world.exim.queue_run("-qff").returncode == 0
    assert [m["Subject"] for m in world.messages(both, ".Junk")] == ["[spam] while down"]
    assert len(world.messages(writer)) == 1


# -- administration: the library and CLI, slapd's ACLs, validation by our rules and Exim's parser ---

def admin(world: World, who: str, password: str, *argv: str) -> tuple[int, str, str]:
    """``mailrouter-admin`` (its ``main``) bound as ``who`` (an address or DN)."""
    secret = world.workdir / f"pw-{abs(hash(who))}"
    write_private(secret, password + "\n", group="root", mode=0o600)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = admin_cli.main(["--config", str(world.config), "--bind-dn", who, "--password-file", str(secret),
                             *argv])
    return rc, out.getvalue(), err.getvalue()


ALICE_A = f"alice@{ACL_A}"


def test_who_may_set_a_users_rules(world: World) -> None:
    """Self-service and the domain's admins write; another domain's admin and another user do not."""
    actors = {
        "self": (ALICE_A, acl_password("user_a"), True),
        "postmaster": (f"postmaster@{ACL_A}", acl_password("postmaster_a"), True),
        "admin group member": (f"boss@{ACL_A}", acl_password("admin_a"), True),
        "global admin": (world.data.account("global-admin").dn, world.data.account("global-admin").password,
                         True),
        "other domain's admin": ("boss@b.example", acl_password("admin_b"), False),
        "another user of the domain": (f"pwvictim@{ACL_A}", ACL_VICTIM_PASSWORD, False),
    }
    for case, (who, password, allowed) in actors.items():
        text = f"away, set by {case}"
        rc, out, err = admin(world, who, password, "user", "vacation", "set", ALICE_A, "--text", text,
                             "--subject", "Away", "--end", "2099-12-31")
        assert (rc == 0) == allowed, (case, out, err)
        script = _sieve_file(world, f'# by {case}\nrequire "copy";\n'
                                    'redirect :copy "someone@remote.example";\n')
        rc, out, err = admin(world, who, password, "user", "sieve", "set", ALICE_A, script)
        assert (rc == 0) == allowed, (case, out, err)
        rc, out, err = admin(world, who, password, "--json", "user", "vacation", "show", ALICE_A)
        if allowed:
            shown = json.loads(out)
            assert shown["text"] == text and shown["active"] and shown["end"] == "2099-12-31T23:59:59Z", case
            rc, out, err = admin(world, who, password, "user", "sieve", "show", ALICE_A)
            assert out.startswith(f"# by {case}\n"), (case, out, err)
        else:
            # Another tenant does not exist; another user sees no rule values at all.
            assert rc != 0 or json.loads(out)["text"] is None, (case, out, err)
    rc, out, err = admin(world, ALICE_A, acl_password("user_a"), "user", "vacation", "off", ALICE_A)
    assert rc == 0 and "is off" in out, err


def _sieve_file(world: World, text: str) -> str:
    path = world.workdir / f"script-{world.counter}-{abs(hash(text))}.sieve"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('require ["copy", "fileinto"];\nif header :contains "subject" "x" {\n  fileinto "Junk";\n',
         "Exim refuses the script: expecting command or closing brace in line 4"),
        ('require "reject";\nreject "no";\n', "reject is not supported"),
        ('require "enotify";\n', "extension 'enotify' is not available"),
        ('require "vacation";\nvacation "away";\n', "Sieve vacation is not available"),
        ('redirect "|/bin/sh";\n', "a target must be a plain local@domain address"),
        ('require "fileinto";\nfileinto "../x";\n', "no '..'"),
        ("".join(f'redirect "r{i}@remote.example";\n' for i in range(6)), "at most 5 redirect"),
        ('redirect "nobody";\n', "a target must be a plain local@domain address"),
        ('if header :is "x:y" "z" { keep; }\n', "Exim refuses the script: invalid header field"),
    ],
)
def test_a_script_is_checked_when_written(world: World, script: str, message: str) -> None:
    owner = world.user("checked")
    admin_dn = world.data.account("global-admin")
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "user", "sieve", "set", owner,
                         _sieve_file(world, script))
    assert rc == 1, (out, err)
    assert message in err, err
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "--json", "user", "sieve", "show", owner)
    assert json.loads(out)["script"] is None  # nothing stored


def test_a_good_script_is_stored_shown_and_removed(world: World) -> None:
    owner = world.user("stored")
    admin_dn = world.data.account("global-admin")
    script = _filter("someone@remote.example")
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "user", "sieve", "set", owner,
                         _sieve_file(world, script))
    assert rc == 0, err
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "user", "sieve", "show", owner)
    assert out == script
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "user", "sieve", "remove", owner)
    assert rc == 0 and "removed" in out


def test_the_sandbox_seeds_one_vacation_and_one_filter_that_work(world: World) -> None:
    """mailrouter.sandbox.demo's examples pass the checks a writer must pass, and do what they say."""
    assert demo.RULES["carol@example.org"][rules.SIEVE_SCRIPT] == demo.SIEVE_SCRIPT
    seeded = demo.build(scheme="ssha", with_rules=True).ldif
    assert "mailVacationActive: TRUE" in seeded and "mailSieveScript:: " in seeded
    assert "mailSieveScript" not in world.data.ldif  # the tests' data set stays rule-free
    rules.check_script(demo.SIEVE_SCRIPT, maildir=False)
    admin_rules.exim_check(demo.SIEVE_SCRIPT)
    vacationer = world.user("dave", **demo.VACATION)
    filtered = world.user("carol", mailSieveScript=demo.SIEVE_SCRIPT.replace("dave@example.org", vacationer))
    writer = world.user("writer")
    for subject in ("hello", "[junk] offer", "[for dave] notes"):
        world.send(writer, [filtered], {"To": filtered, "Subject": subject})
    assert [m["Subject"] for m in world.messages(filtered)] == ["hello"]
    assert [m["Subject"] for m in world.messages(vacationer)] == ["[for dave] notes"]
    assert world.messages(writer) == []  # dave was not in To: the redirected copy gets no reply
    world.send(writer, [vacationer], {"To": vacationer})
    assert [m["Subject"] for m in world.messages(writer)] == ["Out of office"]


# -- the socket way (mailrouter-lookupd), and each rule router's own lookup trouble ------------

class FailingProxy:
    """A lookup socket in front of the real mailrouter-lookupd that answers TEMP for the
    kinds in ``failing`` and relays every other request: trouble in one router's lookup only."""

    def __init__(self, path: Path, upstream: Path, failing: set[str]) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(1 << 16)
                if line.split(b" ", 1)[0].decode() in failing:
                    self.wfile.write(b"TEMP\n")
                    return
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(str(upstream))
                    client.sendall(line)
                    while chunk := client.recv(1 << 16):
                        self.wfile.write(chunk)

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        path.chmod(0o666)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def lookupd(world: World) -> Iterator[Path]:
    sock = world.workdir / "lookup.sock"
    process = start_lookupd(world.config, sock)
    try:
        yield sock
    finally:
        stop_process(process)


def socket_exim(world: World, name: str, sock: Path) -> Exim:
    private = {"MAILROUTER_SPOOL_DIRECTORY", "MAILROUTER_LOG_FILE_PATH", "MAILROUTER_PID_FILE_PATH"}
    macros = {key: value for key, value in world.exim.macros.items() if key not in private}
    macros.update(MAILROUTER_LOOKUP_VIA="socket", MAILROUTER_LOOKUP_SOCKET=str(sock))
    return Exim(world.workdir / f"exim-{name}", world.exim.config_file, macros).prepare()


def test_the_socket_way_gives_the_same_rules(world: World, lookupd: Path) -> None:
    exim = socket_exim(world, "socket", lookupd)
    try:
        both = world.user("socket", mailSieveScript=_filter("nobody@example.com"), **_vacation())
        writer = world.user("writer")
        message = f"From: {writer}\nTo: {both}\nSubject: [spam] via the socket\n\nhi\n"
        assert exim.deliver(message, both, sender=writer).returncode == 0
        assert [m["Subject"] for m in world.messages(both, ".Junk")] == ["[spam] via the socket"]
        assert [m["From"] for m in world.messages(writer)] == [both]
        assert "R=mailrouter_vacation T=mailrouter_vacation_reply" in exim.main_log()
    finally:
        exim.close()


@pytest.mark.parametrize("kind", ["vacation", "sieve"])
def test_trouble_in_a_rule_lookup_defers_the_message(world: World, lookupd: Path, kind: str) -> None:
    """Not "no rule": a router that declined here would deliver without the filter or the reply."""
    proxy_path = world.workdir / f"proxy-{kind}.sock"
    proxy = FailingProxy(proxy_path, lookupd, {kind})
    exim = socket_exim(world, f"proxy-{kind}", proxy_path)
    try:
        both = world.user("trouble", mailSieveScript=_filter("nobody@example.com"), **_vacation())
        writer = world.user("writer")
        message = f"From: {writer}\nTo: {both}\nSubject: [spam] in trouble\n\nhi\n"
        assert exim.deliver(message, both, sender=writer).returncode == 0
        assert world.messages(both) == [] and world.messages(both, ".Junk") == []
        assert world.messages(writer) == []
        assert both in exim.queue_list().stdout
        assert "** " not in exim.main_log()
    finally:
        exim.close()
        proxy.close()
        proxy_path.unlink()


def test_the_interval_setting_is_checked_when_written(world: World) -> None:
    admin_dn = world.data.account("global-admin")
    for bad in (["soon"], ["7d", "8d"], ["0d"]):
        rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "setting", "set", "vacation_interval",
                             *bad)
        assert rc == 1 and "vacation_interval" in err + out, (bad, out, err)
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "setting", "set", "vacation_interval", "3D")
    assert rc == 0 and "vacation_interval = 3d" in out, err
    rc, out, err = admin(world, admin_dn.dn, admin_dn.password, "--json", "user", "vacation", "show",
                         world.user("shown", **_vacation()))
    assert json.loads(out)["interval"] == "3d"
    world.setting("vacation_interval", None)


# -- the delivery hook's folder rule, directly ---------------------------------------------------

@pytest.mark.parametrize(("folder", "stored_in", "note"), [
    ("inbox", "", ""),
    ("INBOX", "", ""),
    ("Junk", ".Junk", ""),
    ("Lists/exim", ".Lists.exim", ""),
    ("../../escape", "", "refused, filed into the inbox"),
    ("/etc/cron.d/x", "", "refused, filed into the inbox"),
    (".hidden", "", "refused, filed into the inbox"),
    ("a/./b", "", "refused, filed into the inbox"),
])
def test_the_delivery_hook_files_only_into_folders_of_the_maildir(world: World, folder: str, stored_in: str,
                                                                   note: str) -> None:
    address = world.user("folders")
    data = f"mailbox={world.maildir(address)} format=maildir quota=0 uid=8 gid=8"
    done = subprocess.run(
        [str(BIN / "mailrouter-deliver"), "--config", str(world.config), "--address-data", data,
         "--folder-from-environment"],
        input=b"From a@remote.example Mon Nov 30 10:00:00 2026\nSubject: hook\n\nbody\n",
        env={"MAILROUTER_FOLDER": folder, "PATH": "/usr/bin:/bin"}, capture_output=True, check=False,
    )
    assert done.returncode == 0, done.stdout
    assert note in done.stdout.decode()
    assert [m["Subject"] for m in world.messages(address, stored_in)] == ["hook"]
    assert sorted(p.name for p in world.maildir(address).iterdir() if p.name.startswith(".")) == (
        [stored_in] if stored_in else [])
    assert not (world.spool.parent / "escape").exists()


def test_the_delivery_hook_needs_the_folder_when_told_so(world: World) -> None:
    address = world.user("nofolder")
    data = f"mailbox={world.maildir(address)} format=maildir quota=0 uid=8 gid=8"
    done = subprocess.run(
        [str(BIN / "mailrouter-deliver"), "--config", str(world.config), "--address-data", data,
         "--folder-from-environment"],
        input=b"From a@remote.example Mon Nov 30 10:00:00 2026\nSubject: hook\n\nbody\n",
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=False,
    )
    assert done.returncode == 75 and b"MAILROUTER_FOLDER" in done.stdout
    assert world.messages(address) == []


def test_vacation_text_and_subject_are_never_expanded_by_exim(world: World) -> None:
    marker = world.workdir / "expanded"
    hostile = f"${{run{{/usr/bin/touch {marker}}}}} $local_part ${{readfile{{/etc/hostname}}}}"
    away = world.user("literal", **{**_vacation(hostile), "mailVacationSubject": hostile})
    writer = world.user("writer")
    world.send(writer, [away])
    (reply,) = world.messages(writer)
    assert reply.get_content().strip() == hostile
    assert reply["Subject"] == hostile
    assert not marker.exists()


@pytest.mark.skipif(is_24(), reason="Dovecot 2.4: no checkpassword; mailrouter-2.4.conf serves mbox")
def test_imap_shows_the_folders_sieve_filled(world: World) -> None:
    """fileinto's Maildir++ folders are what Dovecot's maildir layout lists as folders."""
    owner = world.user("imap", mailSieveScript=_filter("nobody@example.com"))
    writer = world.user("writer")
    for subject in ("[spam] one", "[list] two", "plain three"):
        world.send(writer, [owner], {"To": owner, "Subject": subject})
    work = world.workdir / "dovecot"
    work.mkdir(mode=0o755)
    (work / "conf").mkdir(mode=0o755)
    conf = hook_config(  # the secret for checkpassword, run as dovecot
        work / "conf" / "mailrouter.toml", world.data, [world.slapd.uri], spool_format="maildir",
        maildir_template=f"{world.spool}/{{domain}}/{{local}}/Maildir", group="dovecot",
    )
    server = Dovecot(work, conf, world.slapd.uri, world.spool, tls.make_certificates(work / "tls"))
    try:
        client = imap(server)
        try:
            assert client.login(owner, "pw-" + owner.split("@")[0])[0] == "OK", server.log()
            typ, listed = client.list()
            names = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in listed if line}
            assert {"INBOX", "Junk", "Lists.exim"} <= names, listed
            for folder, count in (("INBOX", b"1"), ("Junk", b"1"), ("Lists.exim", b"1")):
                assert client.select(folder, readonly=True) == ("OK", [count]), (folder, server.log())
        finally:
            client.logout()
    finally:
        server.stop()


def test_a_non_ascii_subject_and_text_reach_the_sender_intact(world: World) -> None:
    away = world.user("unicode", **{**_vacation("Je suis absent jusqu'à lundi — Grüße\n"),
                                   "mailVacationSubject": "Abwesend – zurück am Montag"})
    writer = world.user("writer")
    world.send(writer, [away])
    (reply,) = world.messages(writer)
    assert reply["Subject"] == "Abwesend – zurück am Montag"
    assert reply.get_content().strip() == "Je suis absent jusqu'à lundi — Grüße"
