"""Real Dovecot 2.3 IMAP with the project's ``dovecot/mailrouter.conf``, privately, on free loopback ports.

Used by ``mailrouter-sandbox`` and the test suite.  ``dovecot -F -c FILE`` with
a generated top-level file naming only what a private instance needs -- its
own ``base_dir``, ``state_dir`` and log, ``listen = 127.0.0.1``, IMAP (STARTTLS)
and IMAPS listeners on the given ports, the throwaway CA's certificate -- and
then ``!include`` of the shipped ``dovecot/mailrouter.conf`` with only the venv
bin dir and the config path re-pointed (:func:`render_shipped`).  Everything
else -- checkpassword + prefetch, TLS required before a password, the storage
uid range, the mbox locks shared with popa3d, Exim and the delivery hook -- is
the shipped file's.  Logins go through ``mailrouter-checkpassword`` (run by
Dovecot's auth process as ``dovecot``), which also tells Dovecot each user's
mail location in their format (mbox INBOX = the file delivery appends to,
Maildir = the directory delivery writes).  Nothing under /etc or /run is used.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port
from mailrouter.sandbox.tls import Certificates

DOVECOT = "/usr/sbin/dovecot"
SHIPPED_BIN = "/opt/mailrouter/venv/bin"
SHIPPED_CONFIG = "/etc/mailrouter/mailrouter.toml"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

TOP_LEVEL = """\
# Private Dovecot of mailrouter's sandbox/tests: nothing under /etc or /run is used.
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl_cert = <{cert}
ssl_key = <{key}
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
{extra}
# The shipped file, with only the bin dir and the config path re-pointed:
!include {shipped}
"""


def render_shipped(template: str, bin_dir: str, config_path: str) -> str:
    """``dovecot/mailrouter.conf`` with only the venv bin dir and the config path re-pointed."""
    if SHIPPED_BIN not in template or SHIPPED_CONFIG not in template:
        raise DaemonError("dovecot/mailrouter.conf no longer names the shipped bin dir and config")
    return template.replace(SHIPPED_BIN, bin_dir.rstrip("/")).replace(SHIPPED_CONFIG, config_path)


class Dovecot:
    """``dovecot -F`` with the shipped config on ``imap_port`` (STARTTLS) and ``imaps_port``."""

    def __init__(
        self,
        workdir: Path,
        config_path: Path,
        certificates: Certificates,
        *,
        root: Path,
        bin_dir: str | None = None,
        extra: str = "",
    ) -> None:
        """``config_path``: a mailrouter.toml whose secret the user ``dovecot`` can read.
        ``root``: the checkout holding dovecot/.  ``extra``: more top-level settings
        (the tests turn off the delay after a refused login)."""
        self.workdir = Path(workdir)
        self.config_path = config_path
        self.certificates = certificates
        self.root = root
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.extra = extra
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.conf = self.workdir / "dovecot.conf"
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        for name in ("run", "state"):
            (self.workdir / name).mkdir(mode=0o755, exist_ok=True)
        shipped = self.workdir / "90-mailrouter.conf"
        template = (self.root / "dovecot" / "mailrouter.conf").read_text(encoding="utf-8")
        shipped.write_text(render_shipped(template, self.bin_dir, str(self.config_path)), encoding="utf-8")
        self.conf.write_text(TOP_LEVEL.format(
            work=self.workdir, cert=self.certificates.cert, key=self.certificates.key,
            imap_port=self.imap_port, imaps_port=self.imaps_port, extra=self.extra, shipped=shipped,
        ), encoding="utf-8")

    def start(self) -> Dovecot:
        self.configure()
        with (self.workdir / "dovecot.stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
            )
        if not (wait_for_port(self.imaps_port, START_TIMEOUT, self.process)
                and wait_for_port(self.imap_port, START_TIMEOUT, self.process)):
            self.stop()
            raise DaemonError("dovecot did not start: " + self.log())
        return self

    def log(self) -> str:
        parts = []
        for name in ("dovecot.log", "dovecot.stderr"):
            try:
                parts.append((self.workdir / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # the master stops its children itself
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
