"""Real daemons from the project's own files, in a private directory, on free ports.

Used by the test suite and by ``mailrouter-sandbox``.  Modelled on
python-ldap's slapdtest: check the configuration first (``slaptest``), preload
with ``slapadd``, run the daemon in the foreground under our ``Popen``, wait
until it answers, and fail loudly -- with the daemon's own log -- when it does
not.  Nothing here touches /etc or starts a system service.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from mailrouter.errors import DaemonError

SLAPD = "/usr/sbin/slapd"
SLAPTEST = "/usr/sbin/slaptest"
SLAPADD = "/usr/sbin/slapadd"
START_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (bind port 0, ask the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def render_slapd_conf(template: str, root: Path, workdir: Path) -> str:
    """The shipped slapd.conf with only the lines marked ``# PATH`` re-pointed."""
    replacements = {
        "mailrouter.schema": f"include\t\t{root / 'ldap' / 'mailrouter.schema'}",
        "acl.conf": f"include\t\t{root / 'ldap' / 'acl.conf'}",
        "pidfile": f"pidfile\t\t{workdir / 'slapd.pid'}",
        "argsfile": f"argsfile\t{workdir / 'slapd.args'}",
        "directory": f"directory\t{workdir / 'db'}",
    }
    lines = []
    for line in template.splitlines():
        if line.rstrip().endswith("# PATH"):
            directive, value = line.split(None, 2)[:2]
            key = Path(value).name if directive == "include" else directive
            if directive == "directory" and Path(value).parent == Path("/var/lib/ldap"):
                # another database's files (the audit log: /var/lib/ldap/accesslog)
                key = f"directory {Path(value).name}"
                replacements[key] = f"directory\t{workdir / Path(value).name}"
            if key not in replacements:
                raise DaemonError(f"slapd.conf: unexpected PATH line {line!r}")
            line = replacements[key]
        lines.append(line)
    return "\n".join(lines) + "\n"


def with_passwords(ldif: str, hashes: dict[str, str]) -> str:
    """``ldif`` with a ``userPassword`` line added to the entries named in ``hashes``.

    The shipped seed.ldif carries no passwords; the tests and the sandbox give its
    accounts (global admin, service account) hashed ones at load time.
    """
    blocks = ldif.split("\n\n")
    for index, block in enumerate(blocks):
        for line in block.splitlines():
            if line.startswith("dn: ") and line[4:].strip() in hashes:
                blocks[index] = block.rstrip("\n") + f"\nuserPassword: {hashes[line[4:].strip()]}"
    return "\n\n".join(blocks)


class Slapd:
    """A private slapd loaded from ``ldap/slapd.conf``, ``ldap/acl.conf`` and the schema.

    ``root`` is the checkout holding ldap/: passed in by the caller (the sandbox
    CLI's ``--root``, the tests' and benchmarks' own checkout), never guessed.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        root: Path,
        ldif: Iterable[str] = (),
        extra_config: str = "",
        run_as: str | None = None,
        seed_passwords: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.root = root
        self.ldif = list(ldif)
        self.extra_config = extra_config
        self.run_as = run_as
        self.seed_passwords = dict(seed_passwords or {})
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.conf_path = self.workdir / "slapd.conf"
        self.log_path = self.workdir / "slapd.log"

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    def _run(self, argv: list[str], what: str, stdin: bytes | None = None) -> None:
        done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
        if done.returncode != 0:
            raise DaemonError(
                f"{what} failed (rc {done.returncode}): "
                + (done.stderr + done.stdout).decode("utf-8", "replace")
            )

    def configure(self) -> None:
        """Write the config, check it with slaptest, and preload seed + extra LDIF."""
        template = (self.root / "ldap" / "slapd.conf").read_text(encoding="utf-8")
        config = render_slapd_conf(template, self.root, self.workdir)
        for line in config.splitlines():  # every database's directory (mail, audit log, ...)
            if line.startswith("directory"):
                Path(line.split(None, 1)[1]).mkdir(parents=True, exist_ok=True)
        if self.extra_config:
            # Global directives must precede the first "database"; insert them there.
            head, sep, tail = config.partition("\ndatabase")
            config = head + "\n" + self.extra_config + "\n" + sep + tail
        self.conf_path.write_text(config, encoding="utf-8")
        self._run([SLAPTEST, "-u", "-f", str(self.conf_path)], "slaptest")
        seed = with_passwords(
            (self.root / "ldap" / "seed.ldif").read_text(encoding="utf-8"), self.seed_passwords
        )
        data = "\n\n".join([seed, *self.ldif]) + "\n"
        self._run([SLAPADD, "-q", "-f", str(self.conf_path)], "slapadd", stdin=data.encode("utf-8"))
        if self.run_as:
            subprocess.run(["chown", "-R", self.run_as, str(self.workdir)], check=True)

    def start(self) -> Slapd:
        if not self.conf_path.exists():
            self.configure()
        self.port = free_port()
        self._launch("start")
        return self

    def _launch(self, what: str) -> None:
        argv = [SLAPD, "-d", "0", "-f", str(self.conf_path), "-h", self.uri]
        if self.run_as:
            argv += ["-u", self.run_as]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        if not wait_for_port(self.port, START_TIMEOUT, self.process):
            self.stop()
            raise DaemonError(f"slapd did not {what}: " + self.log_path.read_text("utf-8", "replace"))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen slapd cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (clients keep their URI)."""
        self.stop()
        self._launch("restart")

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Slapd:
        # `with slapd.start():` and `with slapd:` both mean one running slapd.
        running = self.process is not None and self.process.poll() is None
        return self if running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
