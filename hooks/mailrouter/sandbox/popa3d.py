"""Real stock popa3d with the project's popa3d/ files, privately, on free loopback ports.

Used by the test suite and by ``mailrouter-sandbox``.  popa3d reads fixed
system paths -- the PAM service ``/etc/pam.d/popa3d``, NSS (``getpwnam``) and
the spool ``/var/mail`` -- so :class:`Popa3d` gives it its own view of exactly
those paths inside an ``unshare -m`` mount namespace, by bind mounts of files in
its work directory.  The host's /etc is never modified:

* ``/etc/pam.d``          a copy of the host's, with ``popa3d/pam.d-popa3d`` as
                          ``popa3d`` (only the venv bin dir, the config path and
                          ``--userdb /etc/userdb`` re-pointed, to /run/userdb)
* ``/etc/nsswitch.conf``  the host's, with the ``passwd:`` line of
                          ``popa3d/nsswitch.conf.passwd``
* ``/run/userdb``         (on a private tmpfs /run) a directory of systemd JSON user
                          records, written by the real ``mailrouter-userdb`` at start
                          and by the PAM helper at each login
* ``/var/mail``           a private spool directory (root:mail 2775, like Debian's)

Plain POP3 runs inetd-style under ``socat`` (one popa3d per connection), POP3S
under ``stunnel`` with the shipped ``popa3d/stunnel-pop3s.conf`` and throwaway
TLS material (:mod:`mailrouter.sandbox.tls`).  The checkout whose popa3d/ files
are used is passed in (``root``), never guessed.  Every daemon gets a clean
environment (popa3d, and the PAM helper it runs, must not depend on the
caller's).  :meth:`Popa3d.namespace_command` wraps any other command (a
delivery, a shell) in the same mount setup.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port
from mailrouter.sandbox.tls import Certificates, make_certificates

POPA3D = "/usr/sbin/popa3d"
SOCAT = "/usr/bin/socat"
STUNNEL = "/usr/bin/stunnel4"
UNSHARE = "/usr/bin/unshare"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SHIPPED_BIN = "/opt/mailrouter/venv/bin"
SHIPPED_CONFIG = "/etc/mailrouter/mailrouter.toml"
SHIPPED_USERDB = "/etc/userdb"
SHIPPED_AUTHD_SOCKET = "/run/mailrouter/auth.sock"
PAM_FILE = "pam.d-popa3d"  # the full path (the helper asks LDAP itself)
PAM_FILE_AUTHD = "pam.d-popa3d-authd"  # the lean path (the helper asks mailrouter-authd)
NAMESPACE_USERDB = "/run/userdb"  # what the namespace shows of Popa3d.userdb
START_TIMEOUT = 10.0
MAIL_GID = 8  # Debian's "mail" group owns /var/mail


def render_pam_file(template: str, bin_dir: str, config_path: str, authd_socket: str | None = None) -> str:
    """A shipped PAM file with only the venv bin dir, the config path (or, for
    the lean file, authd's socket) and the user-record directory re-pointed
    (the host's /etc/userdb is never written)."""
    target, value = (SHIPPED_CONFIG, config_path)
    if authd_socket is not None:
        target, value = SHIPPED_AUTHD_SOCKET, authd_socket
    if any(shipped not in template for shipped in (SHIPPED_BIN, target, SHIPPED_USERDB)):
        raise DaemonError(f"the PAM file no longer names the shipped bin dir, {target} and userdb")
    return (
        template.replace(SHIPPED_BIN, bin_dir.rstrip("/"))
        .replace(target, value)
        .replace(SHIPPED_USERDB, NAMESPACE_USERDB)
    )


def render_nsswitch(host: str, passwd_line: str) -> str:
    """The host's nsswitch.conf with its ``passwd:`` line replaced by ours."""
    lines = [line for line in host.splitlines() if not line.startswith("passwd:")]
    return "\n".join([passwd_line, *lines]) + "\n"


def render_stunnel_conf(template: str, port: int, cert: Path, pid_file: Path, host: str = "127.0.0.1") -> str:
    """The shipped stunnel config with only ``accept``, ``cert`` and ``pid`` re-pointed."""
    replacements = {
        "accept": f"accept = {host}:{port}",
        "cert": f"cert = {cert}",
        "pid": f"pid = {pid_file}",
    }
    seen = set()
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith(";") else ""
        if key in replacements:
            line = replacements[key]
            seen.add(key)
        lines.append(line)
    if seen != set(replacements):
        raise DaemonError(f"stunnel-pop3s.conf lacks {sorted(set(replacements) - seen)}")
    return "\n".join(lines) + "\n"


class Popa3d:
    """Stock popa3d behind socat (POP3) and stunnel (POP3S) in a private mount namespace."""

    def __init__(
        self,
        workdir: Path,
        config_path: str,
        *,
        root: Path,
        bin_dir: str | None = None,
        tls: bool = True,
        plain: bool = True,
        userdb_source: Path | None = None,
        certificates: Certificates | None = None,
        spool: Path | None = None,
        host: str = "127.0.0.1",
        authd_socket: str | None = None,
    ) -> None:
        """``host``: the loopback address POP3 listens on (a cluster node's 127.0.0.x).
        ``root``: the checkout holding popa3d/.  ``userdb_source``: copy the
        user records from there instead of writing them from LDAP (e.g. to run
        with an LDAP that is down at login time).  ``certificates``: the POP3S
        material (default: a throwaway CA and server certificate for
        localhost/127.0.0.1 in ``workdir/tls``).  ``spool``: the directory
        popa3d sees as /var/mail (default ``workdir/mail``; give the directory
        the delivery side writes to).  ``authd_socket``: use the lean
        ``popa3d/pam.d-popa3d-authd`` asking the mailrouter-authd there (a
        path outside /run, which the namespace replaces)."""
        self.host = host
        self.workdir = Path(workdir)
        self.config_path = str(config_path)
        self.root = root
        # Default: the executables of the venv running this code.
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.tls = tls
        self.plain = plain
        self.userdb_source = userdb_source
        self.port = 0
        self.tls_port = 0
        self.certificates = certificates
        self.pam_dir = self.workdir / "pam.d"
        self.nsswitch = self.workdir / "nsswitch.conf"
        self.userdb = self.workdir / "userdb"
        self.own_spool = spool is None
        self.spool = spool or self.workdir / "mail"
        self.log_path = self.workdir / "popa3d-testbed.log"
        self.authd_socket = authd_socket
        self._processes: list[subprocess.Popen[bytes]] = []

    # -- set-up -----------------------------------------------------------
    def configure(self) -> None:
        popa3d_dir = self.root / "popa3d"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.pam_dir.exists():
            shutil.rmtree(self.pam_dir)
        shutil.copytree("/etc/pam.d", self.pam_dir, symlinks=True)
        pam_file = PAM_FILE if self.authd_socket is None else PAM_FILE_AUTHD
        pam_text = render_pam_file(
            (popa3d_dir / pam_file).read_text(encoding="utf-8"),
            self.bin_dir,
            self.config_path,
            self.authd_socket,
        )
        (self.pam_dir / "popa3d").write_text(pam_text, encoding="utf-8")
        passwd_line = next(
            line
            for line in (popa3d_dir / "nsswitch.conf.passwd").read_text("utf-8").splitlines()
            if line.startswith("passwd:")
        )
        self.nsswitch.write_text(
            render_nsswitch(Path("/etc/nsswitch.conf").read_text("utf-8"), passwd_line),
            encoding="utf-8",
        )
        self.nsswitch.chmod(0o644)
        self.userdb.mkdir(exist_ok=True)
        self.userdb.chmod(0o755)
        if self.own_spool:  # a spool given by the caller keeps its owner and mode
            self.spool.mkdir(exist_ok=True)
            os.chown(self.spool, 0, MAIL_GID)
            self.spool.chmod(0o2775)
        if self.userdb_source is None:
            self.refresh_users()
        else:
            for record in self.userdb_source.iterdir():
                shutil.copyfile(record, self.userdb / record.name)
        if self.tls and self.certificates is None:
            self.certificates = make_certificates(self.workdir / "tls")

    def refresh_users(self) -> None:
        """(Re)generate the user records popa3d's getpwnam() reads, with the real executable."""
        done = subprocess.run(
            [
                os.path.join(self.bin_dir, "mailrouter-userdb"),
                "--config", self.config_path,
                str(self.userdb),
            ],
            env={"PATH": CLEAN_PATH},
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise DaemonError(
                f"mailrouter-userdb failed (rc {done.returncode}): "
                + done.stderr.decode("utf-8", "replace")
            )

    def mounts(self) -> list[tuple[Path, str]]:
        return [
            (self.pam_dir, "/etc/pam.d"),
            (self.nsswitch, "/etc/nsswitch.conf"),
            (self.userdb, NAMESPACE_USERDB),
            (self.spool, "/var/mail"),
        ]

    def namespace_command(self, argv: list[str]) -> list[str]:
        """``argv`` run in a new mount namespace with this testbed's bind mounts.

        /run gets a private tmpfs first: /run/userdb does not exist on the host,
        and a bind mount needs an existing target.
        """
        script = "set -e\nmount -t tmpfs -o mode=0755 mailrouter-run /run\nmkdir /run/userdb\n" + "".join(
            f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}\n"
            for source, target in self.mounts()
        ) + 'exec "$@"\n'
        return [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", *argv]

    def _spawn(self, argv: list[str], port: int, host: str = "127.0.0.1") -> None:
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                self.namespace_command(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": CLEAN_PATH},
                start_new_session=True,
            )
        self._processes.append(process)
        if not wait_for_port(port, START_TIMEOUT, process, host):
            self.stop()
            raise DaemonError("popa3d front end did not start: " + self.log())

    # -- life cycle -------------------------------------------------------
    def start(self) -> Popa3d:
        if not self.pam_dir.exists():
            self.configure()
        try:
            if self.plain:
                self.port = self.port or free_port(self.host)  # preset: the cluster's common port
                self._spawn(
                    [
                        SOCAT,
                        f"TCP-LISTEN:{self.port},bind={self.host},reuseaddr,fork",
                        f"EXEC:{POPA3D}",
                    ],
                    self.port,
                    self.host,
                )
            if self.tls:
                assert self.certificates is not None
                self.tls_port = self.tls_port or free_port(self.host)
                conf = self.workdir / "stunnel-pop3s.conf"
                conf.write_text(
                    render_stunnel_conf(
                        (self.root / "popa3d" / "stunnel-pop3s.conf").read_text("utf-8"),
                        self.tls_port,
                        self.certificates.combined,
                        self.workdir / "stunnel.pid",
                        self.host,
                    ),
                    encoding="utf-8",
                )
                self._spawn([STUNNEL, str(conf)], self.tls_port, self.host)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                # The whole session: socat/stunnel and any popa3d still serving.
                try:
                    os.killpg(process.pid, 15)
                except ProcessLookupError:
                    pass
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()

    def pids(self) -> list[int]:
        """Process ids of the running front ends (socat, stunnel), each its own session."""
        return [process.pid for process in self._processes if process.poll() is None]

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def mailbox(self, login: str) -> Path:
        """Host-side path of what popa3d sees as ``/var/mail/<login>``."""
        return self.spool / login

    def __enter__(self) -> Popa3d:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

