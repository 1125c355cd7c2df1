"""Test support for the delivery hook: spools, configs, and a tiny private Exim.

``MiniExim`` is deliberately NOT the project's Exim config (that is
exim/mailrouter.conf, see ``conftest.hub_exim``): it is the smallest standalone
config with two routers -- one to a pipe transport running ``mailrouter-deliver``
with the options the hook's docstring requires, one to a stock appendfile
transport -- so tests can compare the two byte for byte and see Exim's real
defer/retry behaviour around the hook.  It runs on the sandbox's Exim rig
(private spool and logs, a trusted-config copy of /etc/exim4 in a mount
namespace, the paniclog check).  The same cases also run through the shipped
config's transport (tests/integration/test_deliver.py, test_mbox_exim.py).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import BIN
from mailrouter.sandbox import configs
from mailrouter.sandbox.exim import Exim, Result

DELIVER = str(BIN / "mailrouter-deliver")
LMTPD = str(BIN / "mailrouter-lmtpd")
# The two ways exim/mailrouter.conf stores local mail (MAILROUTER_DELIVERY_VIA).
DELIVERY_PATHS = ["pipe", "lmtp"]
DELIVERY_TRANSPORTS = {"pipe": "mailrouter_delivery", "lmtp": "mailrouter_lmtp"}  # their transports
MAIL_UID = pwd.getpwnam("mail").pw_uid
MAIL_GID = grp.getgrnam("mail").gr_gid

FROM_LINE_DATE = re.compile(
    rb"^(From \S+ )(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$",
    re.MULTILINE,
)


DELIVERY_DATE = re.compile(rb"^Delivery-date: [^\n]*$", re.MULTILINE)


def normalise_dates(mbox_bytes: bytes) -> bytes:
    """Blank the From_ line and Delivery-date dates (two deliveries may straddle a second)."""
    return DELIVERY_DATE.sub(b"Delivery-date: DATE", FROM_LINE_DATE.sub(rb"\1DATE", mbox_bytes))


def make_root(prefix: str = "mr-deliver-") -> Path:
    """A world-traversable temp dir (pytest's tmp_path is 0700 root: mail could not enter)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def make_spool(path: Path) -> Path:
    """A spool directory like Debian's /var/mail: root:mail 2775."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, MAIL_GID)
    path.chmod(0o2775)
    return path


def write_config(path: Path, spool: Path, *, lock_timeout: float = 2.0,
                 stale_lock_age: float = 600.0, maildir_template: str | None = None,
                 mbox_template: str | None = None) -> Path:
    """A delivery-only config: the LDAP side is never contacted by the delivery hook."""
    return configs.write_config(
        path,
        uris=["ldap://127.0.0.1:9/"],
        mbox_template=mbox_template or f"{spool}/{{local}}@{{domain}}",
        maildir_template=maildir_template or f"{spool}/{{domain}}/{{local}}/Maildir",
        storage_user="mail",
        lock_timeout=lock_timeout,
        stale_lock_age=stale_lock_age,
    )


def address_data(mailbox: Path | str, *, fmt: str = "mbox", quota: str = "0",
                 uid: int = MAIL_UID, gid: int = MAIL_GID) -> str:
    return f"mailbox={mailbox} format={fmt} quota={quota} uid={uid} gid={gid}"


def from_line(sender: str = "sender@example.org") -> bytes:
    return f"From {sender} Tue Nov 24 20:40:45 2026\n".encode()


def run_deliver(config: Path, data: str, message: bytes, *, prefix: bytes | None = None,
                wrapper: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the installed hook as Exim's pipe transport would (From_ line + message on stdin)."""
    stdin = (from_line() if prefix is None else prefix) + message
    return subprocess.run(
        [*(wrapper or []), DELIVER, "--config", str(config), "--address-data", data],
        input=stdin, capture_output=True, timeout=timeout, check=False,
        env={"PATH": "/bin:/usr/bin", "MESSAGE_ID": "test"},
    )


EXIM_CONF = """\
exim_path = /usr/sbin/exim4
spool_directory = MAILROUTER_SPOOL_DIRECTORY
log_file_path = MAILROUTER_LOG_FILE_PATH
pid_file_path = MAILROUTER_PID_FILE_PATH
primary_hostname = mailhub.test
local_interfaces = 127.0.0.1
qualify_domain = example.com
domainlist local_domains = example.com
keep_environment =
acl_smtp_rcpt = acl_rcpt
acl_smtp_data = acl_data
never_users = root
trusted_users = root

begin acl
acl_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted
acl_data:
  accept

begin routers
to_hook:
  driver = accept
  domains = +local_domains
  local_parts = lsearch;{work}/hook_users
  address_data = $local_part_data
  transport = mailrouter_deliver
to_appendfile:
  driver = accept
  domains = +local_domains
  local_parts = lsearch;{work}/file_users
  address_data = $local_part_data
  transport = stock_appendfile
# mailrouter-lmtpd looks the user up in LDAP itself: no address data.
to_lmtp:
  driver = accept
  domains = +local_domains
  local_parts = lsearch;{work}/lmtp_users
  transport = mailrouter_lmtp

begin transports
# What the hook's docstring asks of the project's pipe transport.
mailrouter_deliver:
  driver = pipe
  command = {bin}/mailrouter-deliver --config {hook_config} --address-data "$address_data"
  user = ${{extract{{uid}}{{$address_data}}}}
  group = ${{extract{{gid}}{{$address_data}}}}
  message_suffix =
  temp_errors = 75
  return_fail_output
  log_defer_output
  log_fail_output
{headers}
# What exim/mailrouter.conf's mailrouter_lmtp transport sets.
mailrouter_lmtp:
  driver = lmtp
  socket = {lmtp_socket}
  batch_max = 100
  user = Debian-exim
{lmtp_headers}
# Debian's mail_spool transport, minus the options that differ per delivery.
stock_appendfile:
  driver = appendfile
  file = ${{extract{{mailbox}}{{$address_data}}}}
  user = mail
  group = mail
  mode = 0600
  mode_fail_narrower = false
{headers}
begin retry
*   *   F,1d,1m

begin rewrite
"""


class MiniExim(Exim):
    """Debian's Exim with a two-transport test config, on the sandbox's Exim rig.

    Spool, logs, the namespace with a trusted-config copy of /etc/exim4 and
    the paniclog check on :meth:`close` are the rig's (``mailrouter.sandbox.exim``).
    """

    def __init__(self, work: Path, hook_config: Path, *, hook_users: dict[str, str],
                 file_users: dict[str, str] | None = None, add_headers: bool = False,
                 bin_dir: Path = BIN, lmtp_users: list[str] | None = None,
                 lmtp_socket: Path | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self._write_users(work / "hook_users", hook_users)
        self._write_users(work / "file_users", file_users or {})
        # Local parts delivered through mailrouter-lmtpd on ``lmtp_socket`` (users in its LDAP).
        self._write_users(work / "lmtp_users", dict.fromkeys(lmtp_users or [], "lmtp"))
        # (Envelope-to names the recipient: the comparisons blank it.  The lmtp transport
        # leaves it to mailrouter-lmtpd, which writes one per recipient.)
        lmtp_headers = "  return_path_add\n  delivery_date_add\n" if add_headers else ""
        headers = lmtp_headers + "  envelope_to_add\n" if add_headers else ""
        config = work / "mini.conf"
        config.write_text(EXIM_CONF.format(
            work=work, bin=bin_dir, hook_config=hook_config, headers=headers, lmtp_headers=lmtp_headers,
            lmtp_socket=lmtp_socket or work / "no-lmtpd.sock",
        ))
        config.chmod(0o644)
        super().__init__(work, config)

    @staticmethod
    def _write_users(path: Path, users: dict[str, str]) -> None:
        path.write_text("".join(f"{local}: {data}\n" for local, data in users.items()))
        path.chmod(0o644)

    def submit(self, message: bytes, *recipients: str, sender: str = "sender@example.org") -> Result:
        """``exim -odi -oi -f SENDER RCPT...``: receive and deliver at once."""
        return self.run("-odi", "-oi", "-f", sender, *recipients, stdin=message)


class Lmtpd:
    """The installed ``mailrouter-lmtpd`` on ``workdir/lmtp.sock``, in its own process group.

    ``start()`` waits until it answers; ``stop()`` is SIGTERM, ``kill()`` SIGKILL of
    the whole group (the server and every worker), both by the recorded PID.
    """

    def __init__(self, workdir: Path, config: Path, *, workers: int = 2, extra: tuple[str, ...] = (),
                 wrapper: list[str] | None = None) -> None:
        self.workdir = workdir
        self.config = config
        self.socket = workdir / "lmtp.sock"
        self.log = workdir / "lmtpd.log"
        self.argv = [*(wrapper or []), LMTPD, "--config", str(config), "--socket", str(self.socket),
                     "--workers", str(workers), *extra]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Lmtpd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a killed server's socket stays behind
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailrouter-lmtpd did not start: {self.log.read_text()}")
            with contextlib.suppress(OSError):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(5)
                    probe.connect(str(self.socket))
                    if probe.recv(100).startswith(b"220 "):
                        probe.sendall(b"QUIT\r\n")
                        return self
            time.sleep(0.02)

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        self.process.wait(timeout=90)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9`` of the server and all its workers at once."""
        self._signal(signal.SIGKILL)

    def macros(self) -> dict[str, str]:
        """Exim macros that make exim/mailrouter.conf deliver through this server."""
        return {"MAILROUTER_DELIVERY_VIA": "lmtp", "MAILROUTER_LMTP_SOCKET": str(self.socket)}

    def __enter__(self) -> Lmtpd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
