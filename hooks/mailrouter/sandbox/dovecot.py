"""Real Dovecot IMAP with the project's shipped config for its version, privately, on free loopback ports.

Used by ``mailrouter-sandbox`` and the test suite.  The ONE version switch
(:func:`installed_version`, :func:`is_24`, :func:`shipped_name`): Dovecot 2.3
(Debian 12) runs ``dovecot/mailrouter.conf`` (checkpassword through
``mailrouter-checkpassword``); Dovecot 2.4 (Debian 13), which has no
checkpassword and a new configuration syntax, runs ``dovecot/mailrouter-2.4.conf``
(Dovecot's LDAP passdb binding as the user).

``dovecot -F -c FILE`` with a generated top-level file naming only what a
private instance needs -- its own ``base_dir``, ``state_dir`` and log,
``listen = 127.0.0.1``, IMAP (STARTTLS) and IMAPS listeners on the given ports,
the throwaway CA's certificate -- and then ``!include`` of the shipped file with
only the paths of this world re-pointed (:func:`render_shipped`: 2.3 the venv
bin dir and the config path; :func:`render_shipped_24`: the LDAP URI, the
service password file and the spool).  Everything else -- how a login is
decided, TLS required before a password, the storage uid range, the mbox locks
shared with popa3d, Exim and the delivery hook -- is the shipped file's.  On 2.3
``mailrouter-checkpassword`` also tells Dovecot each user's mail location in
their format (mbox INBOX = the file delivery appends to, Maildir = the
directory delivery writes); the 2.4 file serves the mbox a delivery appends to
(its Maildir lines are commented: one format per deployment).  Nothing under
/etc or /run is used.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.configs import secret_path
from mailrouter.sandbox.slapd import free_port, wait_for_port
from mailrouter.sandbox.tls import Certificates

DOVECOT = "/usr/sbin/dovecot"
SHIPPED_BIN = "/opt/mailrouter/venv/bin"
SHIPPED_CONFIG = "/etc/mailrouter/mailrouter.toml"
# What mailrouter-2.4.conf names for a deployment (re-pointed by render_shipped_24).
SHIPPED_LDAP_URIS = "ldap_uris = ldap://127.0.0.1/"
SHIPPED_SECRET = "/etc/dovecot/mailrouter-ldap.secret"
SHIPPED_SPOOL = "/var/mail/"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

def installed_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the installed Dovecot, ``None`` when there is none."""
    if not os.path.exists(DOVECOT):
        return None
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"(\d+)\.(\d+)", out)
    if match is None:
        raise DaemonError(f"unexpected dovecot --version: {out!r}")
    return int(match.group(1)), int(match.group(2))


def is_24(version: tuple[int, int] | None = None) -> bool:
    """Dovecot 2.4 or later (the installed one unless ``version`` is given)."""
    version = version or installed_version()
    return version is not None and version >= (2, 4)


def shipped_name(version: tuple[int, int] | None = None) -> str:
    """The project's file under dovecot/ for this Dovecot: one per configuration syntax."""
    return "mailrouter-2.4.conf" if is_24(version) else "mailrouter.conf"


TOP_LEVEL = """\
# Private Dovecot 2.3 of mailrouter's sandbox/tests: nothing under /etc or /run is used.
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

# 2.4: the version lines come first (the shipped file repeats them, as a file
# under conf.d/ of a stock dovecot.conf would see them set already).
TOP_LEVEL_24 = """\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
# Private Dovecot 2.4 of mailrouter's sandbox/tests: nothing under /etc or /run is used.
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl_server_cert_file = {cert}
ssl_server_key_file = {key}
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
{extra}
# The shipped file, with only the LDAP URI, the secret and the spool re-pointed:
!include {shipped}
"""


def render_shipped(template: str, bin_dir: str, config_path: str) -> str:
    """``dovecot/mailrouter.conf`` with only the venv bin dir and the config path re-pointed."""
    if SHIPPED_BIN not in template or SHIPPED_CONFIG not in template:
        raise DaemonError("dovecot/mailrouter.conf no longer names the shipped bin dir and config")
    return template.replace(SHIPPED_BIN, bin_dir.rstrip("/")).replace(SHIPPED_CONFIG, config_path)


def render_shipped_24(template: str, ldap_uri: str, secret_file: str, spool: str) -> str:
    """``dovecot/mailrouter-2.4.conf`` with only the LDAP URI, the password file and the spool re-pointed."""
    for shipped in (SHIPPED_LDAP_URIS, SHIPPED_SECRET, SHIPPED_SPOOL):
        if shipped not in template:
            raise DaemonError(f"dovecot/mailrouter-2.4.conf no longer names {shipped!r}")
    return (template.replace(SHIPPED_LDAP_URIS, f"ldap_uris = {ldap_uri.rstrip('/')}/")
            .replace(SHIPPED_SECRET, secret_file)
            .replace(SHIPPED_SPOOL, spool.rstrip("/") + "/"))


def write_ldap_secret(config_path: Path, path: Path) -> Path:
    """The service password of ``config_path`` as 2.4's ``ldap_auth_dn_password = <FILE``
    needs it: without the newline (Dovecot keeps it), 0600 (its config process is root)."""
    password = secret_path(config_path).read_text(encoding="utf-8").rstrip("\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password)
    return path


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
        ldap_uri: str | None = None,
        spool: Path | None = None,
    ) -> None:
        """``config_path``: a mailrouter.toml whose secret the user ``dovecot`` can read.
        ``root``: the checkout holding dovecot/.  ``extra``: more top-level settings
        (the tests turn off the delay after a refused login).  ``ldap_uri`` and
        ``spool`` (the directory of the mbox files): what Dovecot 2.4's own LDAP
        passdb and its mail location need (2.3 reads both from ``config_path``)."""
        self.workdir = Path(workdir)
        self.config_path = config_path
        self.certificates = certificates
        self.root = root
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.extra = extra
        self.ldap_uri = ldap_uri
        self.spool = spool
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
        template = (self.root / "dovecot" / shipped_name()).read_text(encoding="utf-8")
        if is_24():
            if self.ldap_uri is None or self.spool is None:
                raise DaemonError("Dovecot 2.4 needs the LDAP URI and the spool directory")
            secret = write_ldap_secret(self.config_path, self.workdir / "mailrouter-ldap.secret")
            text = render_shipped_24(template, self.ldap_uri, str(secret), str(self.spool))
            top_level = TOP_LEVEL_24
        else:
            text = render_shipped(template, self.bin_dir, str(self.config_path))
            top_level = TOP_LEVEL
        shipped.write_text(text, encoding="utf-8")
        self.conf.write_text(top_level.format(
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
