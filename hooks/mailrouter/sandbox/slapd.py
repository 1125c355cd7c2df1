"""Real daemons from the project's own files, in a private directory, on free ports.

Used by the test suite and by ``mailrouter-sandbox``.  Modelled on
python-ldap's slapdtest: check the configuration first (``slaptest``), preload
with ``slapadd``, run the daemon in the foreground under our ``Popen``, wait
until it answers, and fail loudly -- with the daemon's own log -- when it does
not.  Nothing here touches /etc or starts a system service.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailrouter.errors import DaemonError

SLAPD = "/usr/sbin/slapd"
SLAPTEST = "/usr/sbin/slaptest"
SLAPADD = "/usr/sbin/slapadd"
START_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port nobody listens on right now (bind port 0, ask the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1"
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
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


@dataclass(frozen=True)
class Replication:
    """This slapd's part in a replicated directory (``ldap/replication/``).

    ``role`` "provider" (one of the multi-provider pair: ``server_id`` 1 or 2,
    ``peers`` = the other provider's URI) or "consumer" (a node's read-only
    replica: ``peers`` = both providers' URIs, pulled from the first, writes
    referred to all).  ``password``: uid=replicator's, written into the fragments.
    """

    role: str
    peers: tuple[str, ...]
    password: str
    server_id: int = 0


def _fragment(root: Path, name: str, values: dict[str, str], workdir: Path) -> str:
    text = (root / "ldap" / "replication" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.search(r"@[A-Z_]+@", text)
    if left:
        raise DaemonError(f"{name}: placeholder {left.group(0)} left unfilled")
    lines = []
    for line in text.splitlines():
        if line.rstrip().endswith("# PATH"):
            directive = line.split(None, 1)[0]
            if directive != "directory":
                raise DaemonError(f"{name}: unexpected PATH line {line!r}")
            line = f"directory\t{workdir / 'deltalog'}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def render_replication(config: str, root: Path, workdir: Path, replication: Replication) -> str:
    """``config`` (a rendered slapd.conf) with the ``ldap/replication/`` fragments of
    ``replication.role`` spliced in where each fragment's header says: the global
    part and the replication log before the first database, the mail database's
    part at the end of that database's section (before the next ``database`` line:
    the audit log's)."""
    values = {"REPLICATOR_PASSWORD": replication.password}
    if replication.role == "provider":
        (peer,) = replication.peers
        values |= {"SERVER_ID": str(replication.server_id), "PEER_URI": peer.rstrip("/")}
        before = _fragment(root, "provider-global.conf", values, workdir)
        before += _fragment(root, "deltalog.conf", values, workdir)
        inside = _fragment(root, "provider.conf", values, workdir)
    elif replication.role == "consumer":
        first, second = replication.peers
        values |= {"PROVIDER_A_URI": first.rstrip("/"), "PROVIDER_B_URI": second.rstrip("/")}
        before = ""
        inside = _fragment(root, "consumer.conf", values, workdir)
    else:
        raise DaemonError(f"unknown replication role {replication.role!r}")
    head, sep, tail = config.partition("\ndatabase")
    config = head + "\n" + before + sep + tail
    # The mail database's section ends where the next database begins (the audit
    # log's cn=accesslog in the shipped file, else cn=config).
    lines = config.split("\n")
    mail = next((i for i, line in enumerate(lines)
                 if line.split()[:2] == ["suffix", '"o=top"']), None)
    end = next((i for i in range(mail or 0, len(lines)) if lines[i].startswith("database")), None)
    if mail is None or end is None:
        raise DaemonError("slapd.conf: no mail database (suffix \"o=top\") followed by another database")
    return "\n".join([*lines[:end], inside.rstrip("\n"), *lines[end:]])


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
        host: str = "127.0.0.1",
        replication: Replication | None = None,
        preload: str | None = None,
        cn_config: bool = False,
    ) -> None:
        """``host``: the loopback address to listen on; ``replication``: this
        server's part in a replicated directory; ``preload``: an LDIF dump (slapcat
        of the first provider) loaded as it is instead of the seed + ``ldif``, so
        that every replica starts with the same entryUUIDs and CSNs; ``cn_config``:
        run from the cn=config directory ``slaptest`` converts the rendered
        slapd.conf into (the deployment path of ldap/slapd.conf's header)."""
        self.cn_config = cn_config
        self.host = host
        self.replication = replication
        self.preload = preload
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
        return f"ldap://{self.host}:{self.port}/"

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
        if self.replication is not None:
            (self.workdir / "deltalog").mkdir(exist_ok=True)
            config = render_replication(config, self.root, self.workdir, self.replication)
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
        slapadd = [SLAPADD, "-q", "-f", str(self.conf_path), "-b", "o=top"]
        if self.replication is not None:
            # -w: store the contextCSN, so replicas start in step (a sync cookie to continue from).
            server_id = self.replication.server_id
            slapadd += ["-w"] + (["-S", str(server_id)] if server_id else [])
            data = self.preload if self.preload is not None else data
        self._run(slapadd, "slapadd", stdin=data.encode("utf-8"))
        if self.replication is not None and self.replication.role == "provider":
            # The log's top entry (accesslog would make it at the first write): a database
            # slaptest can open read-only, to convert the configuration below.
            log_top = "dn: cn=deltalog\nobjectClass: auditContainer\ncn: deltalog\n"
            self._run([SLAPADD, "-w", "-f", str(self.conf_path), "-b", "cn=deltalog"], "slapadd (deltalog)",
                      stdin=log_top.encode("utf-8"))
        if self.cn_config:
            # slaptest opens every database read-only to convert: the audit log's must
            # exist (ldap/slapd.conf's header: slapadd -b cn=accesslog </dev/null).
            self._run([SLAPADD, "-f", str(self.conf_path), "-b", "cn=accesslog"], "slapadd (audit log)",
                      stdin=b"")
            (self.workdir / "slapd.d").mkdir(exist_ok=True)
            self._run([SLAPTEST, "-f", str(self.conf_path), "-F", str(self.workdir / "slapd.d")],
                      "slaptest (convert to cn=config)")
        if self.run_as:
            subprocess.run(["chown", "-R", self.run_as, str(self.workdir)], check=True)

    def start(self, port: int = 0) -> Slapd:
        """Configure (once) and start on ``port`` (default: a free one)."""
        self.port = port or free_port(self.host)
        if not self.conf_path.exists():
            self.configure()
        self._launch("start")
        return self

    def _launch(self, what: str) -> None:
        source = ["-F", str(self.workdir / "slapd.d")] if self.cn_config else ["-f", str(self.conf_path)]
        argv = [SLAPD, "-d", "0", *source, "-h", self.uri]
        if self.run_as:
            argv += ["-u", self.run_as]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        if not wait_for_port(self.port, START_TIMEOUT, self.process, self.host):
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

    def dump(self) -> str:
        """The mail database as LDIF (slapcat: with entryUUIDs and CSNs), to preload replicas."""
        done = subprocess.run(
            ["/usr/sbin/slapcat", "-f", str(self.conf_path), "-b", "o=top", "-o", "ldif_wrap=no"],
            capture_output=True, check=False,
        )
        if done.returncode != 0:
            raise DaemonError("slapcat failed: " + done.stderr.decode("utf-8", "replace"))
        return done.stdout.decode("utf-8")

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
