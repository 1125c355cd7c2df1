"""mbox bytes: mailrouter-deliver against Exim's stock appendfile, through real Exim.

Every corpus message is delivered with ONE Exim run to two recipients: one
routed to a stock appendfile transport, one to our delivery -- the pipe
transport running mailrouter-deliver, or the lmtp transport feeding
mailrouter-lmtpd (each test runs over both, ``DELIVERY_PATHS``).  Both
mailboxes must be byte-identical except for the dates in the From_ and
Delivery-date lines (the two deliveries may straddle a second) and the
recipient an Envelope-to line names.  Twice:

* with the smallest private config (``deliver_support.MiniExim``: the pipe
  transport with exactly the options the hook's docstring requires, the lmtp
  transport as exim/mailrouter.conf sets it), and
* with the shipped exim/mailrouter.conf: its LDAP routers and its
  ``mailrouter_delivery`` / ``mailrouter_lmtp`` transport, unchanged; only a
  router and a stock transport for the comparison copy are added in front of them.
"""

from __future__ import annotations

import mailbox
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, hook_config, hub_exim, needs_root
from dataset import Dataset
from deliver_support import (
    DELIVERY_PATHS,
    DELIVERY_TRANSPORTS,
    Lmtpd,
    MiniExim,
    address_data,
    make_root,
    make_spool,
    normalise_dates,
    write_config,
)
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd

pytestmark = needs_root

# Each message is what a client hands to `exim -odi -oi` on stdin.
CORPUS: list[bytes] = [
    b"Subject: plain\n\nhello\n",
    b"Subject: from lines\n\nFrom the start\nmiddle\nFrom again\nFrom\nFromage\n From indented\n",
    b"Subject: already escaped\n\n>From x\n>>From y\n>From \n",
    b"Subject: lower case\n\nfrom here\nFROM there\nfRom x\n",
    b"Subject: no final newline\n\nlast line has no newline",
    b"Subject: crlf\r\n\r\nline one\r\nFrom crlf\r\n",
    b"Subject: nul\n\nbefore\0after\nFrom \0\n\0\n",
    b"Subject: long\n\n" + b"x" * 10_000 + b"\nFrom " + b"y" * 10_000 + b"\n",
    b"Subject: empty body\n\n",
    b"Subject: only headers\n",
    b"Subject: blank lines at end\n\nbody\n\n\n",
    b"Subject: lone cr\n\na\rFrom x\n",
    b"Subject: dot\n\n.\n..\n.From\n",
]

# One SMTP session (CRLF, dot-stuffing) through `exim -bs`.
SMTP_DATA = (
    b"Subject: via smtp\r\n\r\nFrom smtp\r\n..leading dot\r\n>From kept\r\nfrom low\r\n"
    b"bare\rcr\r\n" + b"z" * 9_000 + b"\r\n"
)

ENVELOPE_TO = re.compile(rb"^Envelope-to: [^\n]*$", re.MULTILINE)


def comparable(mbox_bytes: bytes) -> bytes:
    return ENVELOPE_TO.sub(b"Envelope-to: RCPT", normalise_dates(mbox_bytes))


def deliver_corpus(exim: Exim, ours: str, stock: str) -> None:
    for message in CORPUS:
        done = exim.run("-odi", "-oi", "-f", "sender@example.org", ours, stock, stdin=message)
        assert done.returncode == 0, (done, exim.main_log())
    smtp = (
        b"EHLO client.test\r\nMAIL FROM:<smtp@example.org>\r\n"
        + f"RCPT TO:<{ours}>\r\nRCPT TO:<{stock}>\r\n".encode()
        + b"DATA\r\n" + SMTP_DATA + b".\r\nQUIT\r\n"
    )
    done = exim.run("-bs", "-odi", stdin=smtp)
    assert "250 OK id=" in done.stdout, done
    assert exim.queue_count() == 0, exim.main_log()


def assert_identical(ours: Path, stock: Path) -> None:
    mine, theirs = ours.read_bytes(), stock.read_bytes()
    assert comparable(mine) == comparable(theirs)
    # Not vacuous: escaping happened, and every message is one mbox entry.
    assert b"\n>From the start\n" in mine and b"\n>>From y\n" in mine
    assert b"\nfrom here\n" in mine
    parsed = mailbox.mbox(str(ours), create=False)
    try:
        subjects = [m["Subject"] for m in parsed]
    finally:
        parsed.close()
    assert len(subjects) == len(CORPUS) + 1
    assert subjects[-1] == "via smtp"


@pytest.fixture
def workdir() -> Iterator[Path]:
    root = make_root("mr-mbox-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_byte_identical_to_appendfile(workdir: Path) -> None:
    spool = make_spool(workdir / "spool")
    config = write_config(workdir / "mailrouter.toml", spool)
    ours, stock = spool / "ours@example.com", spool / "stock@example.com"
    exim = MiniExim(workdir / "exim", config,
                    hook_users={"ours": address_data(ours)},
                    file_users={"stock": address_data(stock)},
                    add_headers=True)
    try:
        deliver_corpus(exim, "ours@example.com", "stock@example.com")
    finally:
        exim.close()
    assert_identical(ours, stock)


def test_lmtp_byte_identical_to_appendfile(workdir: Path, slapd: Slapd, dataset: Dataset) -> None:
    """The same corpus and config through mailrouter-lmtpd (which finds alice in LDAP)."""
    spool = make_spool(workdir / "spool")
    config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
    ours, stock = spool / "alice@example.com", spool / "stock@example.com"
    with Lmtpd(workdir / "lmtpd", config) as server:
        exim = MiniExim(workdir / "exim", config, hook_users={}, file_users={"stock": address_data(stock)},
                        lmtp_users=["alice"], lmtp_socket=server.socket, add_headers=True)
        try:
            deliver_corpus(exim, "alice@example.com", "stock@example.com")
            assert "R=to_lmtp T=mailrouter_lmtp" in exim.main_log()
        finally:
            exim.close()
    assert_identical(ours, stock)


# Added in front of the shipped routers and transports; nothing shipped is changed.
STOCK_ROUTER = """\
stock_copy:
  driver = accept
  domains = example.com
  local_parts = stock
  transport = stock_appendfile

"""
STOCK_TRANSPORT = """\
stock_appendfile:
  driver = appendfile
  file = {file}
  user = mail
  group = mail
  mode = 0600
  mode_fail_narrower = false
  return_path_add
  delivery_date_add
  envelope_to_add

"""


def with_stock_copy(shipped: str, stock_file: Path) -> str:
    for section, text in (("routers", STOCK_ROUTER), ("transports", STOCK_TRANSPORT.format(file=stock_file))):
        marker = f"\nbegin {section}\n"
        assert shipped.count(marker) == 1, section
        shipped = shipped.replace(marker, marker + "\n" + text)
    return shipped


@pytest.mark.slow
@pytest.mark.parametrize("via", DELIVERY_PATHS)
def test_shipped_transport_is_byte_identical_to_appendfile(
    workdir: Path, slapd: Slapd, dataset: Dataset, via: str
) -> None:
    spool = make_spool(workdir / "spool")
    config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
    stock = spool / "stock-copy"
    exim_config = workdir / "mailrouter-with-stock-copy.conf"
    exim_config.write_text(with_stock_copy((ROOT / "exim" / "mailrouter.conf").read_text(), stock))
    exim_config.chmod(0o644)
    server = Lmtpd(workdir / "lmtpd", config).start() if via == "lmtp" else None
    exim = hub_exim(workdir, config, config_file=exim_config, **(server.macros() if server else {}))
    try:
        deliver_corpus(exim, "alice@example.com", "stock@example.com")
        # the shipped router and transport
        assert f"R=users T={DELIVERY_TRANSPORTS[via]}" in exim.main_log()
    finally:
        exim.close()
        if server is not None:
            server.stop()
    assert_identical(spool / "alice@example.com", stock)
