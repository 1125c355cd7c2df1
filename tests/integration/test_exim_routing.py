"""Routing and SMTP policy of the shipped ``exim/mailrouter.conf``, with real Exim and slapd.

Every test runs Debian's Exim 4.96 with the project's config file (through
:class:`mailrouter.sandbox.exim.Exim`, a trusted-config copy of /etc/exim4 in
a mount namespace) and the installed ``mailrouter-lookup`` hook, against a
private slapd loaded from the project's ldap/ files plus the entries below.
``exim -bt`` shows routing (rc 0 routed, 2 undeliverable, 1 deferred);
``exim -bh`` runs a real SMTP session through the ACLs and routers (verify)
without queueing anything.  Remote addresses are routed to a closed loopback
port (MAILROUTER_RELAY_HOST), so nothing can leave the machine.

Every case runs twice, once per way the config asks LDAP
(``MAILROUTER_LOOKUP_VIA``): ``run`` (the ``mailrouter-lookup`` hook per
lookup) and ``socket`` (``${readsocket}`` to a real ``mailrouter-lookupd``
started by the fixture): the two must give identical outcomes.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import re
import shutil
import signal
import smtplib
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, IdleConnections, hook_config, hub_exim, needs_root, start_slapd
from dataset import LONG_LOCAL, Dataset
from deliver_support import DELIVERY_PATHS, DELIVERY_TRANSPORTS, Lmtpd
from mailrouter import entries, passwords
from mailrouter.errors import DaemonError
from mailrouter.sandbox import tls
from mailrouter.sandbox.configs import write_private
from mailrouter.sandbox.exim import EXIM_USER, Exim, Result, make_readable_dir
from mailrouter.sandbox.slapd import Slapd, free_port

pytestmark = needs_root

BASE = "o=top"
CLIENT = "192.0.2.10"  # not in host_accept_relay, not blacklisted
RELAY_CLIENT = "127.0.0.1"  # host_accept_relay in ldap/seed.ldif
BLACKLISTED_CLIENT = "192.0.2.66"  # blacklisted_hosts in ldap/seed.ldif
LOOKUPD = [sys.executable, "-m", "mailrouter.cmd.lookupd"]


def _user(local: str, domain: str, **kwargs: object) -> entries.Entry:
    return entries.user_entry(
        local,
        domain,
        BASE,
        password_hash=passwords.hash_password("x-" + local, "ssha"),
        uid_number=8,
        gid_number=8,
        mailbox=f"/var/mail/{local}@{domain}",
        **kwargs,  # type: ignore[arg-type]
    )


def _alias(name: str, domain: str, targets: list[str]) -> entries.Entry:
    return entries.alias_entry(name, domain, BASE, targets)


@dataclass
class World:
    workdir: Path
    slapd: Slapd
    exim: Exim
    data: Dataset
    spool: Path
    marker: Path
    admin_secret: Path
    via: str  # MAILROUTER_LOOKUP_VIA: run | socket
    lookupd: subprocess.Popen[bytes] | None = None
    close: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # at the world's end

    # -- Exim -----------------------------------------------------------------
    def route(self, *addresses: str) -> Result:
        return self.exim.address_test(*addresses)

    def smtp(
        self,
        rcpts: list[str],
        sender: str = "someone@remote.example",
        client: str = CLIENT,
        size: int | None = None,
        authenticated_id: str | None = None,
    ) -> list[str]:
        """Replies (code + text) to each RCPT of one ``exim -bh`` session."""
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if size is not None else "")
        lines = ["EHLO client.example", mail, *(f"RCPT TO:<{r}>" for r in rcpts), "QUIT"]
        result = self.exim.host_test(lines, client_ip=client, authenticated_id=authenticated_id)
        replies = [line for line in result.stdout.splitlines() if re.match(r"\d{3} ", line)]
        # 220 greeting, 250 EHLO (last line), 250 MAIL, then one per RCPT, then 221.
        assert replies[0].startswith("220") and replies[-1].startswith("221"), result.output
        assert replies[2].startswith("250"), result.output
        return replies[3:-1]

    def transaction(self, rcpts: list[str], body: bytes, sender: str = "someone@remote.example",
                    size: int | None = None) -> tuple[list[str], str]:
        """RCPT replies and the reply to the end of DATA of one ``exim -bh`` session
        ("" when no RCPT was accepted and DATA was refused before the message)."""
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if size is not None else "")
        head = ["EHLO client.example", mail, *(f"RCPT TO:<{r}>" for r in rcpts), "DATA"]
        script = "".join(line + "\r\n" for line in head).encode() + body + b"\r\n.\r\nQUIT\r\n"
        result = self.exim.run("-bh", CLIENT, stdin=script)
        replies = [line for line in result.stdout.splitlines() if re.match(r"\d{3} ", line)]
        assert replies[0].startswith("220") and replies[-1].startswith("221"), result.output
        rcpt_replies = replies[3 : 3 + len(rcpts)]
        rest = replies[3 + len(rcpts) : -1]
        if rest and rest[0].startswith("354"):
            return rcpt_replies, rest[1]
        return rcpt_replies, ""

    # -- LDAP changes as the global admin -------------------------------------
    def ldap(self, tool: str, ldif: str, *args: str) -> None:
        argv = [tool, "-x", "-H", self.slapd.uri, "-D", self.data.account("global-admin").dn]
        argv += ["-y", str(self.admin_secret), *args]
        done = subprocess.run(argv, input=ldif.encode(), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()

    def add(self, *new: entries.Entry) -> None:
        self.ldap("ldapadd", entries.to_ldif(list(new)))

    def delete(self, *dns: str) -> None:
        self.ldap("ldapdelete", "", *dns)


def routed(result: Result, address: str, router: str = "users") -> bool:
    """Whether ``-bt`` output routes ``address`` (a final delivery address) by ``router``."""
    pattern = rf"(?m)^{re.escape(address)}\n(?:    <-- .*\n)*  router = {router}, "
    return re.search(pattern, result.stdout + "\n") is not None


def start_lookupd(config: Path, sock: Path) -> subprocess.Popen[bytes]:
    """The real mailrouter-lookupd on ``sock`` (group Debian-exim, 0660), its own session."""
    process = subprocess.Popen(
        [*LOOKUPD, "--config", str(config), "--socket", str(sock), "--workers", "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"mailrouter-lookupd did not start (rc {process.poll()})")
        time.sleep(0.02)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's own session (lookupd and its workers), by its id."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module", params=["run", "socket"])
def world(request: pytest.FixtureRequest, dataset: Dataset) -> Iterator[World]:
    via: str = request.param
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the hooks run as Debian-exim.
    workdir = Path(tempfile.mkdtemp(prefix=f"mailrouter-exim-{via}-"))
    with contextlib.ExitStack() as cleanup:  # every step undone, even when one of them raises
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset)
        cleanup.callback(slapd.stop)
        # Like /var/mail: the storage account "mail" creates mailboxes, Exim's
        # SMTP processes (Debian-exim) may only look at their size.
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
        spool.chmod(0o775)
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
        # fulluser's mailbox already holds 2 KiB against a 1K quota; halffull's 60K of 100K.
        (spool / "fulluser@example.com").write_bytes(b"x" * 2048)
        (spool / "halffull@example.com").write_bytes(b"x" * 60 * 1024)
        admin_secret = write_private(
            workdir / "admin.secret", dataset.account("global-admin").password, group="root", mode=0o600
        )
        lookup_socket = workdir / "lookup.sock"
        lookupd = None
        if via == "socket":
            lookupd = start_lookupd(config, lookup_socket)
            cleanup.callback(stop_process, lookupd)
        exim = hub_exim(
            workdir,
            config,
            MAILROUTER_LOOKUP_VIA=via,
            MAILROUTER_LOOKUP_SOCKET=str(lookup_socket),
        ).prepare()
        cleanup.callback(exim.close)  # fails on a paniclog entry
        world = World(workdir, slapd, exim, dataset, spool, dataset.marker, admin_secret, via, lookupd)
        cleanup.enter_context(world.close)  # the variants' Exims
        yield world


# -- the configuration itself --------------------------------------------------

def test_config_parses_without_tls_files(world: World) -> None:
    result = world.exim.check_config()
    assert result.returncode == 0, result.output
    assert f"Configuration file is {world.exim.wrapper}" in result.stdout
    assert f".include {ROOT / 'exim' / 'mailrouter.conf'}" in world.exim.wrapper.read_text()


def test_a_paniclog_entry_fails_the_rigs_close(tmp_path: Path) -> None:
    """What makes every fixture that closes its Exim fail on a panic nobody looked at."""
    exim = Exim(tmp_path / "exim", ROOT / "exim" / "mailrouter.conf").prepare()
    exim.close()  # an empty (absent) paniclog: fine
    (exim.log_directory / "paniclog").write_text("2026-11-30 00:00:00 something panicked\n")
    with pytest.raises(DaemonError, match="something panicked"):
        exim.close()


# -- routing (exim -bt) ------------------------------------------------------------

def test_user_routes_to_the_delivery_pipe(world: World) -> None:
    result = world.route("alice@example.com")
    assert result.returncode == 0, result.output
    assert routed(result, "alice@example.com")
    assert "transport = mailrouter_delivery" in result.stdout


def test_alias_with_one_target(world: World) -> None:
    result = world.route("one@example.com")
    assert result.returncode == 0, result.output
    assert routed(result, "alice@example.com")
    assert "<-- one@example.com" in result.stdout


def test_alias_with_local_and_remote_targets(world: World) -> None:
    result = world.route("mixed@example.com")
    assert result.returncode == 0, result.output
    assert routed(result, "bob@example.com")
    assert routed(result, "someone@remote.example", router="remote")
    assert "host 127.0.0.1" in result.stdout  # the closed test relay, never the internet


def test_nested_alias_reaches_every_user(world: World) -> None:
    result = world.route("nested@example.com")
    assert result.returncode == 0, result.output
    assert routed(result, "alice@example.com") and routed(result, "bob@example.com")
    assert "<-- team@example.com" in result.stdout and "<-- nested@example.com" in result.stdout


def test_alias_loop_is_a_clean_failure(world: World) -> None:
    result = world.route("loopa@example.com")
    assert result.returncode == 2, result.output
    assert "undeliverable: 5.4.6 alias loop" in result.stdout
    assert "router = " not in result.stdout


def test_catchall_takes_only_unknown_local_parts(world: World) -> None:
    result = world.route("whoever@example.org", "dave@example.org", "info@example.org")
    assert result.returncode == 0, result.output
    assert "carol@example.org\n    <-- whoever@example.org" in result.stdout
    # A user and an alias of the catch-all's domain are never caught by it.
    assert result.stdout.count("carol@example.org") == 1
    assert routed(result, "dave@example.org")
    assert "<-- info@example.org" in result.stdout


def test_unknown_user_without_catchall_is_undeliverable(world: World) -> None:
    result = world.route("nobody@example.com")
    assert result.returncode == 2, result.output
    assert "nobody@example.com is undeliverable: 5.1.1 Unknown user" in result.stdout


def test_unknown_domain_routes_remote_and_is_refused_for_relay(world: World) -> None:
    result = world.route("user@unknown.example")
    assert routed(result, "user@unknown.example", router="remote"), result.output
    assert world.smtp(["user@unknown.example"]) == ["550 5.7.1 Relaying denied"]


def test_disabled_user_is_refused_not_caught(world: World) -> None:
    result = world.route("disabled@example.com", "dora@example.org")
    assert result.returncode == 2, result.output
    assert "disabled@example.com is undeliverable: 5.2.1 mailbox disabled" in result.stdout
    assert "dora@example.org is undeliverable: 5.2.1 mailbox disabled" in result.stdout
    assert "carol@example.org" not in result.stdout


def test_pipe_file_and_include_targets_are_never_used(world: World) -> None:
    result = world.route("hostile@example.com", "hostileonly@example.com")
    assert routed(result, "alice@example.com"), result.output
    assert "hostileonly@example.com is undeliverable: 5.1.1 address has no valid destination" in (
        result.stdout
    )
    for forbidden in ("transport = address_pipe", "transport = address_file", "|/", "blackhole"):
        assert forbidden not in result.stdout
    # Route it through a real SMTP session too: verification runs the same routers.
    assert world.smtp(["hostile@example.com", "hostileonly@example.com"]) == [
        "250 Accepted",
        "550 5.1.1 address has no valid destination",
    ]
    assert not world.marker.exists()


# -- SMTP policy (exim -bh) -----------------------------------------------------

def test_local_recipients_accepted_from_anyone(world: World) -> None:
    replies = world.smtp(["alice@example.com", "team@example.com", "whoever@example.org"])
    assert replies == ["250 Accepted"] * 3


def test_unknown_local_recipient_gets_550(world: World) -> None:
    assert world.smtp(["nobody@example.com"]) == ["550 5.1.1 Unknown user"]


def test_relay_allowed_only_for_relay_hosts(world: World) -> None:
    assert world.smtp(["x@remote.example"], client=RELAY_CLIENT) == ["250 Accepted"]
    assert world.smtp(["x@remote.example"], client=CLIENT) == ["550 5.7.1 Relaying denied"]


def test_backup_mx_domain_accepted_from_anyone(world: World) -> None:
    assert world.smtp(["anyone@backup.example"], client=CLIENT) == ["250 Accepted"]


def test_authenticated_client_may_relay_as_itself_or_its_alias(world: World) -> None:
    auth = "alice@example.com"
    assert world.smtp(["x@remote.example"], sender=auth, authenticated_id=auth) == ["250 Accepted"]
    # team@example.com is an alias that delivers to alice.
    assert world.smtp(["x@remote.example"], sender="team@example.com", authenticated_id=auth) == [
        "250 Accepted"
    ]
    assert world.smtp(["x@remote.example"], sender="bob@example.com", authenticated_id=auth) == [
        "550 5.7.1 Sender address does not belong to the authenticated user"
    ]


def test_blacklisted_host_is_refused(world: World) -> None:
    assert world.smtp(["alice@example.com"], client=BLACKLISTED_CLIENT) == [
        "550 5.7.1 Client host blacklisted"
    ]


def test_blacklisted_sender_and_sender_domain_are_refused(world: World) -> None:
    refused = ["550 5.7.1 Sender address blacklisted"]
    assert world.smtp(["alice@example.com"], sender="spammer@bad.example") == refused
    assert world.smtp(["alice@example.com"], sender="anyone@spam.example") == refused
    assert world.smtp(["alice@example.com"], sender="anyone@mx.spam.example") == refused
    assert world.smtp(["alice@example.com"], sender="friend@bad.example") == ["250 Accepted"]


# Spellings of one listed mailbox that Exim accepts in MAIL FROM and routes as
# spammer@bad.example: quoting (whole, partial), backslash escapes, case.
SPAMMER_SPELLINGS = [
    '"spammer"@bad.example',
    '"Spammer"@BAD.example',
    '"SPAMMER"@Bad.Example',
    "spam\\mer@bad.example",
    '"spam\\mer"@bad.example',
    "SpAmMeR@bAd.ExAmPlE",
]


@pytest.mark.parametrize("sender", SPAMMER_SPELLINGS)
def test_blacklisted_sender_is_refused_in_every_spelling(world: World, sender: str) -> None:
    assert world.smtp(["alice@example.com"], sender=sender) == ["550 5.7.1 Sender address blacklisted"]


@pytest.mark.parametrize("sender", ['"anyone"@SPAM.example', 'x@Mx.Spam.Example', '"a b"@spam.example'])
def test_blacklisted_domain_is_refused_in_every_spelling(world: World, sender: str) -> None:
    assert world.smtp(["alice@example.com"], sender=sender) == ["550 5.7.1 Sender address blacklisted"]


def test_quoting_that_names_another_mailbox_is_not_listed(world: World) -> None:
    # Routing tells these apart from spammer@bad.example, so the blacklist does too.
    for sender in ('"spammer "@bad.example', '"spammer.x"@bad.example', "spammerx@bad.example"):
        assert world.smtp(["alice@example.com"], sender=sender) == ["250 Accepted"], sender


def test_sender_ownership_compares_the_routed_form(world: World) -> None:
    auth = "alice@example.com"
    for own in ('"alice"@Example.COM', "ALICE@example.com", "al\\ice@example.com", '"Team"@example.com'):
        assert world.smtp(["x@remote.example"], sender=own, authenticated_id=auth) == ["250 Accepted"], own
    foreign_senders = ['"bob"@example.com', "b\\ob@EXAMPLE.com", '"alice"@example.org',
                       '"alice bob"@example.com']
    for foreign in foreign_senders:
        assert world.smtp(["x@remote.example"], sender=foreign, authenticated_id=auth) == [
            "550 5.7.1 Sender address does not belong to the authenticated user"
        ], foreign


@pytest.mark.slow
def test_full_mailbox_gets_452_directly_and_through_aliases(world: World) -> None:
    full = "452 4.2.2 Mailbox full"
    replies = world.smtp(["fulluser@example.com", "fullalias@example.com", "partlyfull@example.com"])
    assert replies == [full, full, full]
    # Alice has room for a small message; one larger than her whole 10M quota can never fit.
    assert world.smtp(["alice@example.com"], size=1000) == ["250 Accepted"]
    assert world.smtp(["alice@example.com"], size=11 * 1024 * 1024) == [
        "552 5.2.2 Message larger than the mailbox quota"
    ]
    # A declared size that fits the quota but not the room left now: 452.
    assert world.smtp(["halffull@example.com"], size=50 * 1024) == [full]


# -- quota at the end of DATA, for clients that declare no SIZE --------------------------

def body_of(size: int) -> bytes:
    """A message of about ``size`` octets (lines of 76 + CRLF)."""
    line = b"x" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


NEVER = "552 5.2.2 Message larger than a recipient's mailbox quota"
NOT_NOW = "452 4.2.2 Mailbox full"


def test_message_larger_than_the_quota_is_refused_at_end_of_data(world: World) -> None:
    # 11.5 MB to a 10 MB mailbox, no SIZE: refused before it is accepted (no bounce).
    rcpts, end = world.transaction(["alice@example.com"], body_of(int(11.5 * 1024 * 1024)))
    assert rcpts == ["250 Accepted"] and end == NEVER


def test_message_that_fits_only_later_gets_452_at_end_of_data(world: World) -> None:
    body = body_of(50 * 1024)  # 60K used + 50K > 100K, but 50K alone fits
    assert world.transaction(["halffull@example.com"], body) == (["250 Accepted"], NOT_NOW)
    assert world.transaction(["halfalias@example.com"], body) == (["250 Accepted"], NOT_NOW)  # an alias
    assert world.transaction(["alice@example.com"], body)[1].startswith("250 ")


def test_one_answer_for_every_recipient_of_the_message(world: World) -> None:
    body = body_of(50 * 1024)
    # Alice has room: the message is accepted for her alone ...
    assert world.transaction(["alice@example.com", "bob@example.com"], body)[1].startswith("250 ")
    # ... but one full mailbox makes the client try the whole message later (452),
    assert world.transaction(["alice@example.com", "halffull@example.com"], body) == (
        ["250 Accepted", "250 Accepted"], NOT_NOW)
    # and one it can never fit refuses it for good (552), even beside a full one.
    assert world.transaction(["alice@example.com", "halffull@example.com", "small@example.com"], body) == (
        ["250 Accepted"] * 3, NEVER)
    # Remote recipients are not ours to judge.
    rcpts, end = world.transaction(["x@remote.example", "alice@example.com"], body,
                                   sender="alice@example.com")
    assert rcpts == ["550 5.7.1 Relaying denied", "250 Accepted"] and end.startswith("250 ")


# -- hostile addresses through real SMTP ---------------------------------------------

def hostile_local_parts(marker: Path) -> list[str]:
    """Local parts that must never name an entry, run anything or build a path."""
    return [
    "a/b",
    "../alice",
    "..",
    "*",
    "alice*",
    '"(uid=*)"',
    '"alice)(uid=*"',
    '"a b"',
    '"alice "',
    '"a\\\\b"',
    '"a\\"b"',
    "a%00b",
    "${run{/usr/bin/touch${sg{}{}{ }}" + str(marker) + "}}",
    f'"|/usr/bin/touch {marker}"',
    f'"/{marker}"',
    f'":include:{marker}"',
    "alice%example.com",
    "alice!example.com",
    LONG_LOCAL + "x",
    ]


@pytest.mark.slow
def test_hostile_local_parts_are_refused_with_5xx(world: World) -> None:
    # example.org has a catch-all: the one place a hostile name could be swallowed.
    hostile = [f"{local}@example.org" for local in hostile_local_parts(world.marker)]
    # example.com has none: a few, to show the refusal does not depend on the catch-all.
    hostile += [f"{local}@example.com" for local in hostile_local_parts(world.marker)[:5]]
    replies = world.smtp(hostile)
    # One 5xx each: never handed to the catch-all, never run, never a file.
    assert len(replies) == len(hostile)
    for address, reply in zip(hostile, replies, strict=True):
        assert reply[:1] == "5", (address, reply)
    assert not world.marker.exists()


def test_hostile_local_parts_route_nowhere(world: World) -> None:
    addresses = [f"{local}@example.org" for local in hostile_local_parts(world.marker)[:6]]
    result = world.route(*addresses)
    assert result.returncode == 2, result.output
    assert "router = " not in result.stdout
    assert "carol@example.org" not in result.stdout


def test_case_and_quoting_variants_route_to_the_same_entry(world: World) -> None:
    result = world.route("ALICE@EXAMPLE.COM", '"alice"@example.com', "Team@Example.Com")
    assert result.returncode == 0, result.output
    assert routed(result, "ALICE@EXAMPLE.COM")  # Exim keeps the case it was given
    assert routed(result, "alice@example.com")
    assert "<-- Team@Example.Com" in result.stdout
    assert world.smtp(["ALICE@EXAMPLE.COM", "Alice@example.com"]) == ["250 Accepted"] * 2


def test_local_part_length_limits(world: World) -> None:
    assert len(LONG_LOCAL.encode()) == 64
    replies = world.smtp([f"{LONG_LOCAL}@example.com", f"{LONG_LOCAL}x@example.com"])
    assert replies == ["250 Accepted", "550 5.1.3 invalid local part"]


def test_overlong_domain_and_unicode_domain_are_refused(world: World) -> None:
    long_domain = ("a" * 63 + ".") * 4 + "example"
    replies = world.smtp([f"alice@{long_domain}", "hans@bücher.example"])
    assert len(replies) == 2 and all(reply.startswith("5") for reply in replies), replies
    # The A-label form is the one the directory stores, and it works.
    assert world.smtp(["hans@xn--bcher-kva.example"]) == ["250 Accepted"]


def test_unicode_domain_with_smtputf8_is_refused_not_relayed(world: World) -> None:
    lines = [
        "EHLO client.example",
        "MAIL FROM:<someone@remote.example> SMTPUTF8",
        "RCPT TO:<hans@bücher.example>",
        "QUIT",
    ]
    result = world.exim.host_test(lines, client_ip=CLIENT)
    rcpt_reply = [line for line in result.stdout.splitlines() if re.match(r"\d{3} ", line)][3]
    assert rcpt_reply.startswith("5"), result.output


def raw_session(world: World, mail_from: bytes, rcpts: list[bytes]) -> list[str]:
    """RCPT replies of one ``exim -bh`` session whose commands are raw octets."""
    lines = [b"EHLO client.example", b"MAIL FROM:<" + mail_from + b">"]
    lines += [b"RCPT TO:<" + rcpt + b">" for rcpt in rcpts]
    script = b"".join(line + b"\r\n" for line in [*lines, b"QUIT"])
    result = world.exim.run("-bh", CLIENT, stdin=script)
    replies = [line for line in result.stdout.splitlines() if re.match(r"\d{3} ", line)]
    assert replies[0].startswith("220") and replies[-1].startswith("221"), result.output
    return replies[2:-1]  # MAIL, then one per RCPT


def test_non_utf8_local_part_and_sender_get_one_permanent_answer(world: World) -> None:
    """Issue 13 item 6: octets that are not UTF-8 cannot name anything: a permanent
    answer on both lookup paths, never 451 (the socket path used to answer TEMP)."""
    # What the hooks answer for a local part that cannot be a name (routing.FAIL_BAD_LOCAL_PART).
    invalid = "550 5.1.3 invalid local part"
    replies = raw_session(world, b"someone@remote.example", [
        b"al\xffice@example.com",
        b"\xff@example.com",
        b"alice\xc3@example.com",  # a truncated UTF-8 sequence
        b"al\xffice@example.org",  # example.org has a catch-all, which never takes such a name
        b"alice@example.com",
    ])
    assert replies == ["250 OK", invalid, invalid, invalid, invalid, "250 Accepted"], replies
    # A non-UTF-8 sender: an ordinary sender, not blacklisted, not a TEMP...
    assert raw_session(world, b"al\xffice@remote.example", [b"alice@example.com"]) == [
        "250 OK", "250 Accepted",
    ]
    # ...and its domain is still checked against blacklisted_domains: no bypass.
    assert raw_session(world, b"\xff@spam.example", [b"alice@example.com"]) == [
        "250 OK", "550 5.7.1 Sender address blacklisted",
    ]
    # Routing (exim -bt; argv as octets): undeliverable (2), never deferred (1).
    routing = world.route("al\udcffice@example.com", "al\udcffice@example.org")
    assert routing.returncode == 2 and "cannot be resolved" not in routing.stdout, routing.output


# -- live changes in LDAP --------------------------------------------------------------

@pytest.mark.slow
def test_new_domain_user_and_alias_work_at_once_and_go_away(world: World) -> None:
    domain = "live.example"
    assert world.smtp([f"neo@{domain}"]) == ["550 5.7.1 Relaying denied"]
    world.add(entries.domain_entry(domain, BASE), _user("neo", domain))
    try:
        assert world.smtp([f"neo@{domain}", f"trinity@{domain}"]) == [
            "250 Accepted",
            "550 5.1.1 Unknown user",
        ]
        world.add(_alias("trinity", domain, [f"neo@{domain}"]))
        assert world.smtp([f"trinity@{domain}"]) == ["250 Accepted"]
        assert routed(world.route(f"trinity@{domain}"), f"neo@{domain}")
        world.delete(f"mailAlias=trinity,dc={domain},{BASE}")
        assert world.smtp([f"trinity@{domain}"]) == ["550 5.1.1 Unknown user"]
        world.delete(f"uid=neo,dc={domain},{BASE}")
        assert world.smtp([f"neo@{domain}"]) == ["550 5.1.1 Unknown user"]
    finally:
        subprocess.run(
            ["ldapdelete", "-x", "-c", "-r", "-H", world.slapd.uri, "-D",
             world.data.account("global-admin").dn, "-y", str(world.admin_secret),
             f"dc={domain},{BASE}"],
            capture_output=True, check=False,
        )
    assert world.smtp([f"neo@{domain}"]) == ["550 5.7.1 Relaying denied"]


# -- delivery through the pipe transport and through mailrouter-lmtpd -----------------------

MESSAGE = "From: someone@remote.example\nSubject: routing test {tag}\n\nbody {tag}\n"


def delivering_exim(world: World, delivery: str) -> Exim:
    """The world's Exim (the pipe transport), or a variant delivering through a running
    mailrouter-lmtpd (MAILROUTER_DELIVERY_VIA = lmtp)."""
    if delivery == "pipe":
        return world.exim
    server = Lmtpd(world.workdir / "lmtpd", world.workdir / "mailrouter.toml").start()
    world.close.callback(server.stop)
    return variant(world, "lmtp", **server.macros())


@pytest.mark.parametrize("delivery", DELIVERY_PATHS)
def test_alias_delivery_reaches_each_mailbox_and_remote_mail_stays_queued(
    world: World, delivery: str
) -> None:
    exim = delivering_exim(world, delivery)
    tag = f"t1-{delivery}"
    result = exim.deliver(
        MESSAGE.format(tag=tag), "team@example.com", "x@remote.example", sender="someone@remote.example"
    )
    assert result.returncode == 0, result.output
    for user in ("alice", "bob"):
        mailbox = world.spool / f"{user}@example.com"
        assert f"Subject: routing test {tag}" in mailbox.read_text(), user
        assert mailbox.stat().st_uid == 8  # written as the storage account, not root
    log = exim.main_log()
    assert f"R=users T={DELIVERY_TRANSPORTS[delivery]}" in log
    assert "x@remote.example R=remote T=remote_smtp defer" in log  # the closed test relay
    assert "** " not in log  # nothing bounced


# -- LDAP trouble: always temporary -------------------------------------------------------

def test_ldap_stopped_gives_451_and_deferred_routing(world: World) -> None:
    world.slapd.stop()
    try:
        result = world.route("alice@example.com", "team@example.com", "whoever@example.org")
        assert result.returncode == 1, result.output
        assert "cannot be resolved at this time" in result.stdout
        assert "undeliverable" not in result.stdout
        replies = world.smtp(["alice@example.com", "nobody@example.com", "x@remote.example"])
        assert [reply[:4] for reply in replies] == ["451 "] * 3, replies
        # A message taken in while LDAP is down waits in the queue: no delivery, no bounce.
        queued = world.exim.deliver(MESSAGE.format(tag="t2"), "carol@example.org", sender="a@b.example")
        assert queued.returncode == 0, queued.output
        assert "carol@example.org" in world.exim.queue_list().stdout
        assert not (world.spool / "carol@example.org").exists()
    finally:
        world.slapd.restart()
    assert world.smtp(["alice@example.com"]) == ["250 Accepted"]
    # Once LDAP is back, a queue run delivers it.
    assert world.exim.queue_run("-qff").returncode == 0
    assert "routing test t2" in (world.spool / "carol@example.org").read_text()
    assert "** " not in world.exim.main_log()


@pytest.mark.slow
def test_ldap_frozen_gives_451(world: World) -> None:
    world.slapd.freeze()
    try:
        replies = world.smtp(["alice@example.com"], client=RELAY_CLIENT)
        assert len(replies) == 1 and replies[0].startswith("451"), replies
    finally:
        world.slapd.thaw()
    assert world.smtp(["alice@example.com"]) == ["250 Accepted"]


# -- the switch between ${run} and ${readsocket} --------------------------------------------

def variant(world: World, name: str, **macros: str) -> Exim:
    """Another Exim on the world's config with some macros changed (in its wrapper
    file: Exim's -D handling breaks on these names when -bh re-executes Exim)."""
    private = {"MAILROUTER_SPOOL_DIRECTORY", "MAILROUTER_LOG_FILE_PATH", "MAILROUTER_PID_FILE_PATH"}
    base = {key: value for key, value in world.exim.macros.items() if key not in private}
    exim = Exim(world.workdir / f"exim-{name}", world.exim.config_file, {**base, **macros}).prepare()
    world.close.callback(exim.close)  # its paniclog is checked with the world's
    return exim


def rcpt_replies(exim: Exim, rcpt: str) -> list[str]:
    """RCPT reply of one ``exim -bh`` session from CLIENT."""
    lines = ["EHLO client.example", "MAIL FROM:<someone@remote.example>", f"RCPT TO:<{rcpt}>", "QUIT"]
    result = exim.host_test(lines, client_ip=CLIENT)
    replies = [line for line in result.stdout.splitlines() if re.match(r"\d{3} ", line)]
    assert replies and replies[0].startswith("220") and replies[-1].startswith("221"), result.output
    return replies[3:-1]


def test_the_switch_selects_the_way_lookups_are_made(world: World) -> None:
    # Without the hook executables, only the socket way can still answer.
    result = variant(world, "nobin", MAILROUTER_BIN="/nonexistent").address_test("alice@example.com")
    if world.via == "socket":
        assert result.returncode == 0, result.output
        assert routed(result, "alice@example.com")
    else:
        assert result.returncode == 1, result.output
        assert "cannot be resolved at this time" in result.stdout


def test_the_delivery_switch_selects_the_transport_and_a_typo_defers(world: World) -> None:
    lmtp = variant(world, "via-lmtp", MAILROUTER_DELIVERY_VIA="lmtp")
    assert "transport = mailrouter_lmtp" in lmtp.address_test("alice@example.com").stdout
    assert "transport = mailrouter_delivery" in world.exim.address_test("alice@example.com").stdout
    typo = variant(world, "via-typo", MAILROUTER_DELIVERY_VIA="lmpt")
    result = typo.address_test("alice@example.com")
    assert result.returncode == 1 and "undeliverable" not in result.stdout, result.output
    taken = typo.deliver(MESSAGE.format(tag="typo"), "alice@example.com", sender="someone@remote.example")
    assert taken.returncode == 0, taken.output
    assert "== alice@example.com" in typo.main_log() and "** " not in typo.main_log()
    alice = world.spool / "alice@example.com"
    assert not alice.exists() or "routing test typo" not in alice.read_text(errors="replace")


def test_unknown_switch_value_defers_everything(world: World) -> None:
    exim = variant(world, "typo", MAILROUTER_LOOKUP_VIA="sockets")
    result = exim.address_test("alice@example.com", "whoever@example.org")
    assert result.returncode == 1, result.output
    assert "undeliverable" not in result.stdout
    assert [r[:4] for r in rcpt_replies(exim, "alice@example.com")] == ["451 "]


class OddLookupd:
    """A socket that answers every request with one fixed reply (not mailrouter-lookupd)."""

    def __init__(self, path: Path, answer: bytes) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline(4096)
                self.wfile.write(answer)

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        path.chmod(0o666)  # Exim's SMTP processes run as Debian-exim
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("answer", [b"", b"MAYBE\n", b"OK\n", b"NO such thing\n", b"TEMP\n"])
def test_socket_trouble_or_unexpected_reply_defers(world: World, answer: bytes) -> None:
    if world.via != "socket":
        pytest.skip("socket replies: the socket way only")
    path = world.workdir / "odd.sock"
    odd = OddLookupd(path, answer)
    try:
        exim = variant(world, "odd", MAILROUTER_LOOKUP_SOCKET=str(path))
        result = exim.address_test("alice@example.com", "nobody@example.com")
        assert result.returncode == 1, result.output
        assert "undeliverable" not in result.stdout and "router = " not in result.stdout
        assert [r[:4] for r in rcpt_replies(exim, "alice@example.com")] == ["451 "]
    finally:
        odd.close()
        path.unlink()


def test_lookup_server_down_defers(world: World) -> None:
    if world.via != "socket":
        pytest.skip("a missing lookup socket: the socket way only")
    exim = variant(world, "nosocket", MAILROUTER_LOOKUP_SOCKET=str(world.workdir / "no-such.sock"))
    result = exim.address_test("alice@example.com", "team@example.com")
    assert result.returncode == 1, result.output
    assert "undeliverable" not in result.stdout
    assert [r[:4] for r in rcpt_replies(exim, "nobody@example.com")] == ["451 "]


def test_idle_peers_of_the_lookup_server_starve_no_smtp_session(world: World) -> None:
    """Issue 13 item 7: with 100 idle connections to mailrouter-lookupd (2 workers
    here), Exim's lookups are still answered: before, each idle peer held a worker
    for 10 s and RCPT waited past Exim's 30 s limit (451)."""
    if world.via != "socket":
        pytest.skip("the lookup server: the socket way only")
    with IdleConnections(world.workdir / "lookup.sock", 100) as idle:
        started = time.monotonic()
        assert world.smtp(["alice@example.com", "team@example.com", "nobody@example.com"]) == [
            "250 Accepted", "250 Accepted", "550 5.1.1 Unknown user",
        ]
        assert routed(world.route("alice@example.com"), "alice@example.com")
        assert time.monotonic() - started < 20.0  # liveness (generous), not a speed claim
    assert idle.opened >= 100


# -- SMTP AUTH over TLS, against the running daemon ------------------------------------------

class FakeAuthd:
    """Stands in for mailrouter-authd at the socket: records each request, answers by user.

    It checks the Exim side of the contract (request line format, what each
    reply token does), not password checking, which mailrouter.cmd.authd owns.
    """

    REPLIES = {"alice@example.com": "OK\n", "temp@example.com": "TEMP\n", "odd@example.com": "MAYBE\n"}

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(4096)
                outer.requests.append(line)
                parts = line.split(b" ")
                user = base64.b64decode(parts[1]).decode() if len(parts) == 3 else ""
                password = base64.b64decode(parts[2]).decode() if len(parts) == 3 else ""
                reply = outer.REPLIES.get(user, "NO\n") if password == "right pass" else "NO\n"
                self.wfile.write(reply.encode())

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        path.chmod(0o666)  # Exim's SMTP processes run as Debian-exim
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Daemon:
    exim: Exim
    submission_port: int
    smtps_port: int
    authd: FakeAuthd


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[Daemon]:
    certificates = tls.make_certificates(
        make_readable_dir(world.workdir / "tls"), host="hub.example.net", key_group=EXIM_USER
    )
    submission_port, smtps_port = free_port(), free_port()
    with contextlib.ExitStack() as cleanup:
        authd = FakeAuthd(world.workdir / "auth.sock")
        cleanup.callback(authd.close)
        exim = Exim(
            world.workdir / "exim-daemon",
            ROOT / "exim" / "mailrouter.conf",
            {
                **world.exim.macros,
                "MAILROUTER_TLS_CERT": str(certificates.cert),
                "MAILROUTER_TLS_KEY": str(certificates.key),
                "MAILROUTER_AUTH_SOCKET": str(authd.path),
                "MAILROUTER_SMTPS_PORTS": str(smtps_port),
            },
        )
        cleanup.callback(exim.close)  # fails on a paniclog entry
        exim.start_daemon([submission_port, smtps_port])
        yield Daemon(exim, submission_port, smtps_port, authd)


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway test certificate
    return context


def _auth_plain(client: smtplib.SMTP, user: str, password: str, authzid: str = "") -> tuple[int, bytes]:
    token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    return client.docmd("AUTH", "PLAIN " + token)


def test_auth_is_offered_only_after_tls(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHJpZ2h0")[0] == 503
        client.starttls(context=_tls_context())
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]


def test_auth_replies_map_to_smtp_codes(daemon: Daemon) -> None:
    daemon.authd.requests.clear()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=30) as client:
        client.starttls(context=_tls_context())
        client.ehlo("client.example")
        assert _auth_plain(client, "alice@example.com", "wrong")[0] == 535
        code, text = _auth_plain(client, "odd@example.com", "right pass")
        assert code == 435 and b"MAYBE" not in text
        assert _auth_plain(client, "temp@example.com", "right pass")[0] == 435
        # An authorization identity other than the user never reaches the socket.
        before = len(daemon.authd.requests)
        assert _auth_plain(client, "alice@example.com", "right pass", authzid="bob@example.com")[0] == 535
        assert len(daemon.authd.requests) == before
        assert _auth_plain(client, "alice@example.com", "right pass")[0] == 235
        # Authenticated: relaying as herself is allowed, as someone else is not.
        assert client.docmd("MAIL", "FROM:<bob@example.com>")[0] == 250
        assert client.docmd("RCPT", "TO:<x@remote.example>")[0] == 550
        client.rset()
        assert client.docmd("MAIL", "FROM:<alice@example.com>")[0] == 250
        assert client.docmd("RCPT", "TO:<x@remote.example>")[0] == 250
        client.rset()
    # The exact request line the authd helper must parse: AUTH b64(user) b64(password)\n
    assert daemon.authd.requests[0] == (
        b"AUTH " + base64.b64encode(b"alice@example.com") + b" " + base64.b64encode(b"wrong") + b"\n"
    )


def test_auth_login_on_the_tls_on_connect_port(daemon: Daemon) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", daemon.smtps_port, timeout=30, context=_tls_context()) as client:
        client.ehlo("client.example")
        assert "LOGIN" in client.esmtp_features["auth"].split()
        client.user, client.password = "alice@example.com", "right pass"
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235


# -- the daemon: no paniclog flood, no held mail ------------------------------------------

def test_ldap_outage_defers_every_rcpt_without_a_paniclog_line(world: World, daemon: Daemon) -> None:
    rcpts = [f"user{n}@example.com" for n in range(20)] + [f"x{n}@remote.example" for n in range(15)]
    rcpts += [f'"Q{n}"@Example.ORG' for n in range(10)] + ["alice@example.com"] * 5
    assert len(rcpts) == 50
    # (The daemon shares the world's spool and logs: its macros name them.)
    logged_before = world.exim.main_log().count("temporarily rejected RCPT")
    world.slapd.stop()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=60) as client:
            client.ehlo("client.example")
            assert client.docmd("MAIL", "FROM:<someone@remote.example>")[0] == 250
            codes = [client.docmd("RCPT", f"TO:<{rcpt}>") for rcpt in rcpts]
    finally:
        world.slapd.restart()
    assert [code for code, _ in codes] == [451] * 50
    assert {text for _, text in codes} == {b"4.3.0 Directory temporarily unavailable, please try again later"}
    assert world.exim.panic_log() == ""
    assert world.exim.main_log().count("temporarily rejected RCPT") - logged_before == 50


def test_every_message_of_a_long_connection_is_delivered_at_once(world: World, daemon: Daemon) -> None:
    """No queue runner here: Exim's default would hold the 11th and later messages."""
    tag = f"conn-{time.monotonic_ns()}"
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=60) as client:
        client.ehlo("client.example")
        for n in range(15):
            message = f"Subject: {tag} {n}\r\n\r\nmessage {n}\r\n"
            client.sendmail("someone@remote.example", ["bob@example.com"], message)
    mailbox = world.spool / "bob@example.com"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = mailbox.read_text() if mailbox.exists() else ""
        if text.count(f"Subject: {tag} ") == 15:
            break
        time.sleep(0.2)
    assert all(f"Subject: {tag} {n}\n" in text for n in range(15)), text.count(tag)
    assert "no immediate delivery" not in world.exim.main_log()
