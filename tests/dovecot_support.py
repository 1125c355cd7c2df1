"""Test support for Dovecot IMAP: a private Dovecot with the shipped config for its version.

The version switch is the package's (``mailrouter.sandbox.dovecot``:
``installed_version``, ``is_24``, ``shipped_name``):
Dovecot 2.3 (Debian 12) runs ``dovecot/mailrouter.conf`` (checkpassword through
``mailrouter-checkpassword``); Dovecot 2.4 (Debian 13), which has no
checkpassword and a new configuration syntax, runs ``dovecot/mailrouter-2.4.conf``
(Dovecot's LDAP passdb binding as the user).  :class:`Dovecot` wraps either in a
private main config (its own base_dir, state_dir, log, IMAPS on a free loopback
port with a throwaway certificate; nothing under /etc or /run is used) and
includes the shipped file with only the paths of this test world re-pointed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conftest import BIN, ROOT
from mailrouter.sandbox import tls
from mailrouter.sandbox.configs import secret_path
from mailrouter.sandbox.dovecot import installed_version, is_24, shipped_name
from mailrouter.sandbox.slapd import free_port, wait_for_port

DOVECOT = "/usr/sbin/dovecot"
__all__ = ["Dovecot", "installed_version", "is_24", "shipped_config"]
MAIL_UID = MAIL_GID = 8  # Debian's "mail", the storage account


def shipped_config(version: tuple[int, int] | None = None) -> Path:
    """The project's file for this Dovecot (the package's one version switch)."""
    return ROOT / "dovecot" / shipped_name(version)


# What the shipped files name for a deployment, and what the test world puts there.
def _replacements(config_path: Path, ldap_uri: str, spool: Path) -> list[tuple[str, str]]:
    if is_24():
        return [
            ("ldap_uris = ldap://127.0.0.1/", f"ldap_uris = {ldap_uri.rstrip('/')}/"),
            ("/etc/dovecot/mailrouter-ldap.secret", str(dovecot_secret(config_path))),
            ("/var/mail/", f"{spool}/"),
        ]
    return [
        ("/opt/mailrouter/venv/bin", str(BIN)),  # the venv under test (Dovecot's user can run it)
        ("/etc/mailrouter/mailrouter.toml", str(config_path)),
    ]


def dovecot_secret(config_path: Path) -> Path:
    """The service password as 2.4's ``ldap_auth_dn_password = <FILE`` needs it: no newline."""
    path = config_path.with_name("dovecot-ldap.secret")
    path.write_text(secret_path(config_path).read_text().rstrip("\n"))
    path.chmod(0o600)
    return path


def render_shipped(work: Path, config_path: Path, ldap_uri: str, spool: Path) -> Path:
    text = shipped_config().read_text()
    for shipped, ours in _replacements(config_path, ldap_uri, spool):
        assert shipped in text, shipped
        text = text.replace(shipped, ours)
    path = work / "90-mailrouter.conf"
    path.write_text(text)
    return path


# Common to both versions: a private instance, IMAPS on a free port.  Test speed
# only: no growing penalty and no delay after each refused login.
_PRIVATE = """\
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
MAIN_23 = "# Private Dovecot 2.3 for the test suite.\n" + _PRIVATE + """\
ssl_cert = <{cert}
ssl_key = <{cert}
!include {shipped}
"""
# 2.4: the version lines come first (the shipped file repeats them, as a file
# under conf.d/ of a stock dovecot.conf would see them set already).
MAIN_24 = """\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
# Private Dovecot 2.4 for the test suite.
""" + _PRIVATE + """\
ssl_server_cert_file = {cert}
ssl_server_key_file = {cert}
auth_internal_failure_delay = 0
!include {shipped}
"""


class Dovecot:
    """A private Dovecot on ``work`` (world-traversable: the auth process and
    the mail processes run as ``dovecot`` and ``mail``)."""

    def __init__(
        self, work: Path, config_path: Path, ldap_uri: str, spool: Path, certificates: tls.Certificates
    ) -> None:
        self.work = work
        self.certificates = certificates
        self.port = free_port()
        self.conf = work / "dovecot.conf"
        for name in ("run", "state"):
            (work / name).mkdir(mode=0o755)
        main = MAIN_24 if is_24() else MAIN_23
        self.conf.write_text(
            main.format(
                work=work, cert=certificates.combined, port=self.port,
                shipped=render_shipped(work, config_path, ldap_uri, spool),
            )
        )
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=(work / "dovecot.stderr").open("wb"),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        if not wait_for_port(self.port, 15, self.process):
            self.stop()
            raise RuntimeError("dovecot did not start: " + self.log())

    def log(self) -> str:
        parts = []
        for name in ("dovecot.log", "dovecot.stderr"):
            try:
                parts.append((self.work / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # dovecot's master stops its children itself
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
