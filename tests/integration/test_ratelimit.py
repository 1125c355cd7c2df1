"""Outbound rate limits (issue 16, item 1) through the real Exim daemon.

A real ``exim -bd`` with the shipped ``exim/mailrouter.conf``, STARTTLS on a
submission port, SMTP AUTH checked by the real ``mailrouter-authd`` against a
private slapd, and the limit asked of LDAP both ways the config can
(``MAILROUTER_LOOKUP_VIA`` ``socket``: the real ``mailrouter-lookupd``;
``run``: the ``mailrouter-lookup`` hook).  Recipients are remote addresses
(relayed because the client authenticated); no DATA is ever sent, so nothing
is queued.  Exim keeps the measured rates in its hints database
(``spool/db/ratelimit``), shared by every connection: each case uses its own
sender.

The accounts (domain ``rl.example``, limited to 5 / 1h as a domain):

====================  ===================  ====================================
account               mailRateLimit        what it shows
====================  ===================  ====================================
own@rl.example        3 / 1h               the 4th recipient in the window: 450
other@rl.example      (none: the domain's)  unaffected by own's refusals
free@rl.example       unlimited            lifts the domain's limit
hundred@rl.example    100 / 1h             the issue's own numbers: the 101st
slide@rl.example      3 / 6s               the window slides
garbled@rl.example    100/1h (raw LDAP)    an unreadable limit defers, never "no limit"
tls@rl.example        2 / 1h               enforced on the TLS-on-connect port (465) too
dflt@plain.example    (none, no domain's)  the setting default_rate_limit, 2 / 1h
====================  ===================  ====================================
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import hook_config, hub_exim, needs_root, start_slapd
from dataset import Dataset
from mailrouter import passwords
from mailrouter.sandbox import tls
from mailrouter.sandbox.exim import EXIM_USER, Exim, make_readable_dir
from mailrouter.sandbox.slapd import Slapd, free_port
from test_authd import Authd
from test_exim_routing import start_lookupd, stop_process

pytestmark = needs_root

PASSWORD = "rate-limit-pw-1"
EXIM_DUMPDB = "/usr/sbin/exim_dumpdb"
DOMAIN_LIMIT = "5 / 1h"
LIMITS = {
    "own": "3 / 1h",
    "other": None,
    "free": "unlimited",
    "hundred": "100 / 1h",
    "slide": "3 / 6s",
    "garbled": "100/1h",  # written past the admin tools: the stored syntax wants "100 / 1h"
    "down": None,
    "tls": "2 / 1h",
}


def _ldif() -> str:
    hashed = passwords.hash_password(PASSWORD, "ssha")
    blocks = [
        "dn: dc=rl.example,o=top\nobjectClass: mailDomain\ndc: rl.example\n"
        f"mailRateLimit: {DOMAIN_LIMIT}\n",
        "dn: dc=plain.example,o=top\nobjectClass: mailDomain\ndc: plain.example\n",
        "dn: mailSetting=default_rate_limit,o=top\nobjectClass: mailSetting\n"
        "mailSetting: default_rate_limit\nmailSettingValue: 2 / 1h\n",
    ]
    accounts = [(local, "rl.example", limit) for local, limit in LIMITS.items()]
    accounts.append(("dflt", "plain.example", None))
    for local, domain, limit in accounts:
        block = (
            f"dn: uid={local},dc={domain},o=top\nobjectClass: mailUser\nobjectClass: posixAccount\n"
            f"uid: {local}\ndc: {domain}\nmail: {local}@{domain}\ncn: {local}\n"
            f"uidNumber: 8\ngidNumber: 8\nhomeDirectory: /nonexistent\nloginShell: /usr/sbin/nologin\n"
            f"userPassword: {hashed}\n"
        )
        if limit is not None:
            block += f"mailRateLimit: {limit}\n"
        blocks.append(block)
    return "\n".join(blocks)


@dataclass
class Hub:
    workdir: Path
    slapd: Slapd
    exim: Exim
    port: int
    smtps_port: int
    via: str

    def client(self, user: str, tls_on_connect: bool = False) -> smtplib.SMTP:
        """A submission session authenticated (PLAIN) as ``user``: STARTTLS on the
        submission port, or the TLS-on-connect port (465)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a throwaway test certificate
        if tls_on_connect:
            client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", self.smtps_port, timeout=60, context=context)
        else:
            client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
            client.starttls(context=context)
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", "PLAIN " + token)
        assert code == 235, (code, text)
        return client


def rcpts(client: smtplib.SMTP, sender: str, count: int, tag: str) -> list[tuple[int, str]]:
    """A new message from ``sender`` with ``count`` remote recipients: each RCPT's reply."""
    client.rset()
    code, text = client.docmd("MAIL", f"FROM:<{sender}>")
    assert code == 250, (code, text)
    return [
        (reply[0], reply[1].decode())
        for reply in (client.docmd("RCPT", f"TO:<{tag}{n}@remote.example>") for n in range(count))
    ]


def codes(replies: list[tuple[int, str]]) -> list[int]:
    return [code for code, _ in replies]


@pytest.fixture(scope="module", params=["socket", "run"])
def hub(request: pytest.FixtureRequest, dataset: Dataset) -> Iterator[Hub]:
    via: str = request.param
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the hooks run as Debian-exim.
    workdir = Path(tempfile.mkdtemp(prefix=f"mailrouter-ratelimit-{via}-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset, extra_ldif=_ldif())
        cleanup.callback(slapd.stop)
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], timeouts=2.0)
        authd = Authd(make_readable_dir(workdir / "authd"), config)
        cleanup.callback(authd.stop)
        lookup_socket = workdir / "lookup.sock"
        if via == "socket":
            cleanup.callback(stop_process, start_lookupd(config, lookup_socket))
        certificates = tls.make_certificates(
            make_readable_dir(workdir / "tls"), host="hub.example.net", key_group=EXIM_USER
        )
        port, smtps_port = free_port(), free_port()
        exim = hub_exim(
            workdir,
            config,
            MAILROUTER_LOOKUP_VIA=via,
            MAILROUTER_LOOKUP_SOCKET=str(lookup_socket),
            MAILROUTER_AUTH_SOCKET=str(authd.socket_path),
            MAILROUTER_TLS_CERT=str(certificates.cert),
            MAILROUTER_TLS_KEY=str(certificates.key),
            MAILROUTER_SMTPS_PORTS=str(smtps_port),
        )
        cleanup.callback(exim.close)  # fails on a paniclog entry
        exim.start_daemon([port, smtps_port])
        yield Hub(workdir, slapd, exim, port, smtps_port, via)


def test_the_recipient_over_the_limit_gets_450_and_a_log_line(hub: Hub) -> None:
    with hub.client("own@rl.example") as client:
        # Recipients are counted, not messages or connections: 2 + 1 here ...
        assert codes(rcpts(client, "own@rl.example", 2, "a")) == [250, 250]
    with hub.client("own@rl.example") as client:
        assert codes(rcpts(client, "own@rl.example", 1, "b")) == [250]
        # ... so the 4th recipient of the window, in a third message, is refused,
        # and so is every one after it (a retry does not help within the window).
        replies = rcpts(client, "own@rl.example", 3, "c")
    assert codes(replies) == [450, 450, 450], replies
    # (Exim folds a long reply into continuation lines, each with the enhanced code.)
    assert replies[0][1].replace("\n4.7.1 ", " ") == (
        "4.7.1 Rate limit exceeded: own@rl.example may send to at most 3 recipients per 1h, try again later"
    )
    log = hub.exim.main_log()
    assert log.count("rate limit exceeded by own@rl.example: ") == 3, log
    assert "(limit 3)" in log
    # Exim's own hints database holds the measured rate, keyed by period, mode and
    # user: just under 3 (the accepted ones, decayed a little), the refused three
    # not counted ("leaky").
    dump = subprocess.run([EXIM_DUMPDB, str(hub.exim.spool_directory), "ratelimit"], capture_output=True,
                          text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    found = re.search(r"(?m) rate: +([0-9.]+) key: 1h/per_rcpt/own@rl\.example$", dump.stdout)
    assert found is not None and 2.9 <= float(found.group(1)) <= 3.0, dump.stdout


def test_the_limit_holds_on_the_tls_on_connect_port_too(hub: Hub) -> None:
    with hub.client("tls@rl.example", tls_on_connect=True) as client:
        assert codes(rcpts(client, "tls@rl.example", 4, "r")) == [250, 250, 450, 450]


def test_another_user_is_unaffected(hub: Hub) -> None:
    if hub.via != "socket":
        pytest.skip("the socket way only: the ${run} way is proven by the cases above and below")
    with hub.client("own@rl.example") as client:  # over the limit since the test above, or now
        rcpts(client, "own@rl.example", 4, "d")
        assert codes(rcpts(client, "own@rl.example", 1, "e")) == [450]
    # Same client address, same domain: other's own count (the domain's 5 / 1h).
    with hub.client("other@rl.example") as client:
        assert codes(rcpts(client, "other@rl.example", 6, "f")) == [250] * 5 + [450]


def test_unlimited_lifts_the_domains_limit(hub: Hub) -> None:
    if hub.via != "socket":
        pytest.skip("the socket way only: the ${run} way is proven by the cases above and below")
    with hub.client("free@rl.example") as client:
        assert codes(rcpts(client, "free@rl.example", 12, "g")) == [250] * 12


def test_the_system_default_applies_when_user_and_domain_have_none(hub: Hub) -> None:
    with hub.client("dflt@plain.example") as client:
        assert codes(rcpts(client, "dflt@plain.example", 3, "h")) == [250, 250, 450]


def test_the_101st_recipient_of_100_per_hour_is_refused(hub: Hub) -> None:
    if hub.via != "socket":
        pytest.skip("the socket way only: 100 RCPTs through ${run} hooks take minutes")
    with hub.client("hundred@rl.example") as client:
        # Two messages: Exim's recipients_max (100) caps one message.
        first = rcpts(client, "hundred@rl.example", 60, "i")
        second = rcpts(client, "hundred@rl.example", 42, "j")
    assert codes(first) == [250] * 60
    assert codes(second) == [250] * 40 + [450, 450]


def test_the_window_slides(hub: Hub) -> None:
    if hub.via != "socket":
        pytest.skip("the socket way only: a 6 s window needs RCPTs much faster than ${run} hooks")
    with hub.client("slide@rl.example") as client:
        assert codes(rcpts(client, "slide@rl.example", 4, "k")) == [250, 250, 250, 450]
        assert codes(rcpts(client, "slide@rl.example", 1, "l")) == [450]  # still inside the window
        # Exim smooths the rate over the period (an exponentially weighted
        # average): after two periods of silence it has fallen to e^-2, 14%.
        time.sleep(12)
        assert codes(rcpts(client, "slide@rl.example", 2, "m")) == [250, 250]


def test_an_unreadable_limit_defers_never_sends_without_one(hub: Hub) -> None:
    with hub.client("garbled@rl.example") as client:
        replies = rcpts(client, "garbled@rl.example", 2, "n")
    assert replies == [(451, "4.3.0 Directory temporarily unavailable, please try again later")] * 2


def test_ldap_down_at_rcpt_is_4xx_never_5xx(hub: Hub) -> None:
    with hub.client("down@rl.example") as client:
        hub.slapd.stop()
        try:
            replies = rcpts(client, "down@rl.example", 3, "o")
        finally:
            hub.slapd.restart()
        assert {code for code, _ in replies} == {451}, replies
        assert codes(rcpts(client, "down@rl.example", 1, "p")) == [250]
    assert hub.exim.panic_log() == ""

