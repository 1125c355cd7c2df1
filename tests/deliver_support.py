"""Test support for the delivery hook: spools, configs, and a tiny private Exim.

``MiniExim`` is deliberately NOT the project's Exim config (that is
``mailrouter.sandbox.exim``, owned elsewhere): it is the smallest standalone
config with two routers -- one to a pipe transport running ``mailrouter-deliver``
with the options the hook's docstring requires, one to a stock appendfile
transport -- so tests can compare the two byte for byte and see Exim's real
defer/retry behaviour around the hook.

Exim only delivers with a private config (``-C``) if the file is listed in
``/etc/exim4/trusted_configs``.  Without touching the host's /etc, every Exim
command runs in ``unshare -m`` with a copy of /etc/exim4 (plus our
``trusted_configs``) bind-mounted over /etc/exim4.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)
DELIVER = f"{VENV_BIN}/mailrouter-deliver"
EXIM = "/usr/sbin/exim"
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
    maildir = maildir_template or f"{spool}/{{domain}}/{{local}}/Maildir"
    mbox = mbox_template or f"{spool}/{{local}}@{{domain}}"
    path.write_text(
        "[ldap]\n"
        'uris = ["ldap://127.0.0.1:9/"]\n'  # never contacted by the delivery hook
        "[spool]\n"
        f'mbox_template = "{mbox}"\n'
        f'maildir_template = "{maildir}"\n'
        'storage_user = "mail"\n'
        f"lock_timeout = {lock_timeout}\n"
        f"stale_lock_age = {stale_lock_age}\n"
    )
    path.chmod(0o644)
    return path


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
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
pid_file_path = {work}/exim.pid
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


class MiniExim:
    """A private Exim 4 (Debian exim4-daemon-heavy) with a two-transport test config."""

    def __init__(self, work: Path, hook_config: Path, *, hook_users: dict[str, str],
                 file_users: dict[str, str] | None = None, add_headers: bool = False,
                 bin_dir: str = VENV_BIN) -> None:
        self.work = work
        (work / "spool").mkdir(parents=True, exist_ok=True)
        (work / "log").mkdir(exist_ok=True)
        exim_uid = pwd.getpwnam("Debian-exim").pw_uid
        exim_gid = grp.getgrnam("Debian-exim").gr_gid
        for sub in ("spool", "log"):
            os.chown(work / sub, exim_uid, exim_gid)
            (work / sub).chmod(0o750)
        self._write_users("hook_users", hook_users)
        self._write_users("file_users", file_users or {})
        # envelope_to_add is left out: it names the (different) recipient of each copy.
        headers = "  return_path_add\n  delivery_date_add\n" if add_headers else ""
        self.config = work / "exim.conf"
        self.config.write_text(EXIM_CONF.format(
            work=work, bin=bin_dir, hook_config=hook_config, headers=headers))
        self.config.chmod(0o644)
        self.etc = work / "etc-exim4"
        shutil.copytree("/etc/exim4", self.etc, symlinks=True)
        (self.etc / "trusted_configs").write_text(f"{self.config}\n")
        (self.etc / "trusted_configs").chmod(0o644)

    def _write_users(self, name: str, users: dict[str, str]) -> None:
        path = self.work / name
        path.write_text("".join(f"{local}: {data}\n" for local, data in users.items()))
        path.chmod(0o644)

    def command(self, *args: str) -> list[str]:
        return [
            "unshare", "-m", "--", "sh", "-c",
            'mount --bind "$1" /etc/exim4 && shift && exec "$@"', "sh",
            str(self.etc), EXIM, "-C", str(self.config), *args,
        ]

    def run(self, *args: str, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(*args), input=stdin, capture_output=True,
                              timeout=timeout, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def submit(self, message: bytes, *recipients: str,
               sender: str = "sender@example.org") -> subprocess.CompletedProcess[bytes]:
        """``exim -odi -oi -f SENDER RCPT...``: receive and deliver at once."""
        return self.run("-odi", "-oi", "-f", sender, *recipients, stdin=message)

    def daemon(self, port: int) -> subprocess.Popen[bytes]:
        """``exim -bdf`` (foreground daemon) on 127.0.0.1:PORT; the caller terminates it."""
        return subprocess.Popen(
            self.command("-bdf", "-oX", str(port), "-oP", str(self.work / "daemon.pid")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def queue_run(self) -> subprocess.CompletedProcess[bytes]:
        return self.run("-qf")

    def queue_size(self) -> int:
        done = self.run("-bpc")
        return int(done.stdout.strip() or b"0")

    def mainlog(self) -> str:
        path = self.work / "log" / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""
