"""Real Exim with the project's ``exim/`` configuration, in a private directory.

Used by the test suite and by ``mailrouter-sandbox``.  Nothing here touches the
host's /etc or a system service.  Why a mount namespace: Debian's Exim honours
``-C FILE`` for real deliveries (``-odi``, ``-bs``, ``-bd``) only when FILE is
listed in ``/etc/exim4/trusted_configs``.  So :class:`Exim` copies /etc/exim4
into its work directory, adds a ``trusted_configs`` naming the config, and runs
every Exim command as ``unshare -m`` + a bind mount of that copy on /etc/exim4:
the host's /etc stays untouched and other processes never see the change.

Everything Exim writes lives in the work directory: the spool
(``MAILROUTER_SPOOL_DIRECTORY``), the logs (``MAILROUTER_LOG_FILE_PATH``) and
the daemon's PID file (``-oP``).  Macros: Exim accepts at most ten ``-D``
options, so the constructor's macros go into a small generated wrapper,
``WORKDIR/exim.conf`` (macro lines, then ``.include`` of the real config
file, which is read unchanged); that wrapper is the ``-C`` file and the one
listed in ``trusted_configs``.  Per-command ``macros=`` are still passed with
``-D``.  The work directory must be traversable by ``Debian-exim``: hooks run
as that user.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port

EXIM = "/usr/sbin/exim4"
EXIM_USER = "Debian-exim"
HOST_EXIM_ETC = Path("/etc/exim4")
UNSHARE = "/usr/bin/unshare"
COMMAND_TIMEOUT = 120.0
START_TIMEOUT = 15.0

# Runs inside the new mount namespace: bind our copy over /etc/exim4, then exec Exim.
_NAMESPACE_SCRIPT = 'mount --bind "$1" /etc/exim4 && shift && exec "$@"'


@dataclass(frozen=True)
class Result:
    """One finished Exim command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def make_readable_dir(path: Path, group: str = EXIM_USER) -> Path:
    """Create ``path`` (mode 0750, root:group) so Exim and its hooks can read it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    path.chmod(0o750)
    return path


def write_private(path: Path, text: str, group: str = EXIM_USER, mode: int = 0o640) -> Path:
    """Write ``text`` to ``path`` as root:group with ``mode`` (default 0640, for secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    path.chmod(mode)
    return path


def toml_string(value: str) -> str:
    """A TOML basic string (JSON string escaping is valid TOML)."""
    return json.dumps(value)


def write_service_config(
    path: Path,
    *,
    uris: Sequence[str],
    base_dn: str,
    bind_dn: str,
    password: str,
    mbox_template: str,
    maildir_template: str | None = None,
    spool_format: str = "mbox",
    storage_user: str = "mail",
    per_user_ids: bool = False,
    min_uid: int = 100,
    sender_ownership: bool = True,
    auth_socket: str | None = None,
    connect_timeout: float = 2.0,
    operation_timeout: float = 2.0,
    group: str = EXIM_USER,
) -> Path:
    """A mailrouter.toml for the hooks (0644: the delivery hook reads it as the
    storage user), with the service secret beside it (0640 root:group, for the
    hooks that bind to LDAP as Debian-exim)."""
    secret = write_private(path.with_name(path.stem + ".secret"), password + "\n", group)
    lines = [
        "[ldap]",
        f"uris = [{', '.join(toml_string(u) for u in uris)}]",
        f"base_dn = {toml_string(base_dn)}",
        f"bind_dn = {toml_string(bind_dn)}",
        f"bind_password_file = {toml_string(str(secret))}",
        f"connect_timeout = {connect_timeout}",
        f"operation_timeout = {operation_timeout}",
        "",
        "[spool]",
        f"format = {toml_string(spool_format)}",
        f"mbox_template = {toml_string(mbox_template)}",
        f"storage_user = {toml_string(storage_user)}",
        f"per_user_ids = {'true' if per_user_ids else 'false'}",
        f"min_uid = {min_uid}",
    ]
    if maildir_template:
        lines.append(f"maildir_template = {toml_string(maildir_template)}")
    lines += ["", "[auth]", f"sender_ownership = {'true' if sender_ownership else 'false'}"]
    if auth_socket:
        lines.append(f"auth_socket = {toml_string(auth_socket)}")
    return write_private(path, "\n".join(lines) + "\n", group, mode=0o644)


class Exim:
    """Exim 4 with a private config, spool, logs and trusted-config list.

    ``config_file`` is the Exim configuration (normally the project's
    ``exim/mailrouter.conf``); ``macros`` are ``-D`` definitions added to the
    ones this class sets for the private directories.
    """

    def __init__(
        self,
        workdir: Path,
        config_file: Path,
        macros: Mapping[str, str] | None = None,
        exim: str = EXIM,
    ) -> None:
        self.workdir = Path(workdir)
        self.config_file = Path(config_file).resolve()
        self.exim = exim
        self.etc = self.workdir / "etc-exim4"
        self.spool_directory = self.workdir / "spool"
        self.log_directory = self.workdir / "log"
        self.pid_file = self.workdir / "exim-daemon.pid"
        self.wrapper = self.workdir / "exim.conf"
        self.macros: dict[str, str] = {
            "MAILROUTER_SPOOL_DIRECTORY": str(self.spool_directory),
            "MAILROUTER_LOG_FILE_PATH": str(self.log_directory / "%slog"),
            "MAILROUTER_PID_FILE_PATH": str(self.pid_file),
        }
        self.macros.update(macros or {})
        self.daemon_pid: int | None = None
        self.ports: list[int] = []
        self._prepared = False

    # -- setup --------------------------------------------------------------
    def prepare(self) -> Exim:
        """Create the private /etc/exim4 copy, spool and log directories (idempotent)."""
        if self._prepared:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.etc.exists():
            shutil.copytree(HOST_EXIM_ETC, self.etc, symlinks=True)
        lines = ["# Generated by mailrouter.sandbox.exim: macros, then the real config."]
        for name, value in self.macros.items():
            if not name.isidentifier() or not name[0].isupper() or "\n" in value or "\\" in value:
                raise DaemonError(f"unusable Exim macro {name}={value!r}")
            lines.append(f"{name} = {value}")
        lines.append(f".include {self.config_file}")
        for path, text in (
            (self.wrapper, "\n".join(lines) + "\n"),
            (self.etc / "trusted_configs", f"{self.wrapper}\n"),
        ):
            path.write_text(text, encoding="utf-8")
            os.chown(path, 0, 0)
            path.chmod(0o644)
        exim_user = pwd.getpwnam(EXIM_USER)
        for directory in (self.spool_directory, self.log_directory):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, exim_user.pw_uid, exim_user.pw_gid)
            directory.chmod(0o750)
        self._prepared = True
        return self

    def argv(self, *args: str, macros: Mapping[str, str] | None = None) -> list[str]:
        """The full command line: namespace wrapper, Exim, -C wrapper, -D..., ``args``."""
        return [
            UNSHARE,
            "-m",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "sh",
            str(self.etc),
            self.exim,
            "-C",
            str(self.wrapper),
            *(f"-D{name}={value}" for name, value in (macros or {}).items()),
            *args,
        ]

    def run(
        self,
        *args: str,
        stdin: str | bytes | None = None,
        macros: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Result:
        """Run one Exim command to completion."""
        self.prepare()
        argv = self.argv(*args, macros=macros)
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout, check=False)
        return Result(
            argv,
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    # -- the usual modes ----------------------------------------------------
    def check_config(self) -> Result:
        """``exim -bV``: parse the configuration."""
        return self.run("-bV")

    def expand(self, *strings: str, macros: Mapping[str, str] | None = None) -> Result:
        """``exim -be``: expand each string (one line of output per string)."""
        return self.run("-be", *strings, macros=macros)

    def address_test(self, *addresses: str, sender: str | None = None) -> Result:
        """``exim -bt``: route addresses. rc 0 routed, 2 undeliverable, 1 deferred."""
        extra = ["-f", sender] if sender is not None else []
        return self.run(*extra, "-bt", *addresses)

    def host_test(
        self,
        smtp: str | Sequence[str],
        client_ip: str = "192.0.2.10",
        authenticated_id: str | None = None,
        authenticator: str = "PLAIN",
    ) -> Result:
        """``exim -bh IP``: a fake SMTP session from ``client_ip``; no message is queued.

        ``smtp`` is the client's side (lines, CRLF added).  ``authenticated_id``
        makes the session authenticated without AUTH (``-oMaa``/``-oMai``).
        """
        lines = [smtp] if isinstance(smtp, str) else list(smtp)
        script = "".join(line + "\r\n" for line in lines)
        extra: list[str] = []
        if authenticated_id is not None:
            extra = ["-oMaa", authenticator, "-oMai", authenticated_id]
        return self.run(*extra, "-bh", client_ip, stdin=script)

    def deliver(self, message: str | bytes, *recipients: str, sender: str | None = None) -> Result:
        """``exim -odi``: accept ``message`` for ``recipients`` and deliver it now."""
        extra = ["-f", sender] if sender is not None else []
        return self.run("-odi", *extra, "--", *recipients, stdin=message)

    def queue_run(self, *args: str) -> Result:
        """``exim -q``: one queue run (``-qf`` forces retries)."""
        return self.run(*(args or ("-qf",)))

    def queue_list(self) -> Result:
        return self.run("-bp")

    # -- the daemon ---------------------------------------------------------
    def start_daemon(
        self, ports: Sequence[int] | None = None, queue_interval: str | None = None
    ) -> list[int]:
        """``exim -bd`` on ``ports`` (default: one free port), on 127.0.0.1 only.

        ``queue_interval`` (an Exim time such as ``"2s"`` or ``"5m"``) makes the
        daemon also start a queue runner that often (``-qINTERVAL``), as a
        production daemon does: deferred mail is then retried without an
        operator's ``-q``.  Without it nothing retries by itself.
        """
        self.prepare()
        self.stop_daemon()
        self.ports = list(ports) if ports else [free_port()]
        listen = " : ".join(f"127.0.0.1.{port}" for port in self.ports)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        queue = [f"-q{queue_interval}"] if queue_interval else []
        result = self.run("-bd", *queue, "-oX", listen, "-oP", str(self.pid_file))
        if result.returncode != 0:
            raise DaemonError(f"exim -bd failed (rc {result.returncode}): {result.output}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the file may exist a moment before its number is in it
            try:
                self.daemon_pid = int(self.pid_file.read_text(encoding="ascii").strip())
                break
            except (OSError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise DaemonError("exim daemon wrote no PID file: " + self.main_log()) from exc
                time.sleep(0.02)
        for port in self.ports:
            if not wait_for_port(port, START_TIMEOUT):
                self.stop_daemon()
                raise DaemonError(f"exim daemon not listening on {port}: " + self.main_log())
        return self.ports

    def stop_daemon(self) -> None:
        """Stop the daemon this object started, by its PID (never by name)."""
        pid, self.daemon_pid = self.daemon_pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- logs ----------------------------------------------------------------
    def log(self, name: str) -> str:
        path = self.log_directory / f"{name}log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def main_log(self) -> str:
        return self.log("main")

    def panic_log(self) -> str:
        return self.log("panic")

    def close(self) -> None:
        self.stop_daemon()

    def __enter__(self) -> Exim:
        return self.prepare()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

