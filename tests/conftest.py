"""The suite's one conftest: shared fixtures and helpers for tests/unit and tests/integration.

* ``tests/unit/``: pure functions and routing decisions; no root, no daemons.
* ``tests/integration/``: the real daemons (slapd, Exim, popa3d, Dovecot) from
  the project's own ldap/, exim/, popa3d/, dovecot/ files, on free loopback
  ports.  Every fixture that starts a daemon stops it in a ``finally``/yield
  teardown, whatever the test did; every Exim rig is closed there, and closing
  fails the test when Exim wrote to its paniclog (``mailrouter.sandbox.exim``).
  Tests that need root are skipped (loudly) when not run as root; CI runs as root.

The tests import, and the daemons run, the INSTALLED package of the venv that
runs pytest (``BIN``: its executables).  :func:`pytest_sessionstart` refuses to
run against an install that differs from this checkout's ``hooks/``.
The data every slapd is loaded with is ``tests/dataset.py``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import mailrouter
from dataset import DISABLED_LOGIN, DISABLED_PASSWORD, Dataset, build
from mailrouter.config import LdapConfig
from mailrouter.directory import Directory
from mailrouter.sandbox import demo
from mailrouter.sandbox.configs import write_config
from mailrouter.sandbox.exim import Exim
from mailrouter.sandbox.slapd import Slapd, free_port

ROOT = Path(__file__).resolve().parents[1]
# The installed executables under test: those of the venv running pytest, so a
# second venv (MAILROUTER_VENV=... bin/install-deps) tests its own install.
# The one path to them; bin/ wrappers get it as MAILROUTER_VENV (``VENV_ENV``).
BIN = Path(sys.executable).parent
VENV_ENV = {"MAILROUTER_VENV": str(BIN.parent)}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


# -- the installed package is this checkout's hooks/ ------------------------------------------
def _python_files(package: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(package)): path.read_bytes()
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def install_differences(installed: Path, checkout: Path) -> list[str]:
    """What differs between two copies of the package: missing, extra, changed files."""
    ours, theirs = _python_files(checkout), _python_files(installed)
    return (
        [f"missing from the install: {name}" for name in sorted(ours.keys() - theirs.keys())]
        + [f"not in hooks/: {name}" for name in sorted(theirs.keys() - ours.keys())]
        + [f"differs: {name}" for name in sorted(ours.keys() & theirs.keys()) if ours[name] != theirs[name]]
    )


LOGSCRUB = Path("/usr/local/lib/ldap/logscrub.so")  # ldap/slapd.conf's moduleload


def logscrub_problem() -> str | None:
    """Why slapd would not load the logscrub overlay built from this checkout, or None."""
    source = hashlib.sha256((ROOT / "ldap" / "logscrub" / "logscrub.c").read_bytes()).hexdigest()
    stamp = Path(f"{LOGSCRUB}.stamp")
    if not LOGSCRUB.exists() or not stamp.exists():
        return f"{LOGSCRUB} is missing"
    if stamp.read_text(encoding="utf-8").split()[-1] != source:
        return f"{LOGSCRUB} was built from another ldap/logscrub/logscrub.c"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = logscrub_problem()
    if problem:
        pytest.exit(f"{problem}: run bin/install-deps (or ldap/logscrub/build)",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    installed = Path(mailrouter.__file__).resolve().parent
    differences = install_differences(installed, ROOT / "hooks" / "mailrouter")
    if differences:
        pytest.exit(
            f"installed package differs from hooks/: run bin/install-deps "
            f"(or pip install --no-deps --force-reinstall . into {BIN.parent})\n"
            f"  installed: {installed}\n  " + "\n  ".join(differences),
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


# -- the data set and the shared slapd ------------------------------------------------------
@pytest.fixture(scope="session")
def dataset() -> Iterator[Dataset]:
    """``tests/dataset.py``, built once.  Tests that change accounts take a copy (:func:`own_copy`)."""
    # World-writable (sticky): if a hostile alias ever ran, any user could create the marker.
    marker_dir = Path(tempfile.mkdtemp(prefix="mailrouter-marker-"))
    marker_dir.chmod(0o1777)
    try:
        yield build(marker_dir / "mailrouter-pwned")
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)


def own_copy(data: Dataset) -> Dataset:
    return copy.deepcopy(data)


def start_slapd(workdir: Path, data: demo.DemoDirectory, extra_ldif: str = "", **kwargs: object) -> Slapd:
    """A private slapd with the project's ldap/ files and ``data`` (plus ``extra_ldif``);
    ``kwargs`` (``root``, ``seed_passwords``, ``extra_config``, ...) override :class:`Slapd`'s."""
    options: dict[str, object] = {"root": ROOT, "seed_passwords": data.seed_passwords, **kwargs}
    ldif = [data.ldif, extra_ldif] if extra_ldif else [data.ldif]
    slapd = Slapd(workdir, ldif=ldif, **options)  # type: ignore[arg-type]
    return slapd.start()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Slapd]:
    """A read-mostly slapd with the data set; tests must not change what others read."""
    server = start_slapd(tmp_path_factory.mktemp("slapd"), dataset)
    try:
        yield server
    finally:
        server.stop()


def service_config(slapd: Slapd, data: demo.DemoDirectory, **overrides: object) -> LdapConfig:
    values: dict[str, object] = {
        "uris": (slapd.uri,),
        "base_dn": data.base_dn,
        "bind_dn": data.account("service").dn,
        "bind_password": data.account("service").password,
        "connect_timeout": 2.0,
        "operation_timeout": 2.0,
    }
    values.update(overrides)
    return LdapConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def directory(slapd: Slapd, dataset: Dataset) -> Iterator[Directory]:
    with Directory(service_config(slapd, dataset)) as handle:
        yield handle


def hook_config(
    path: Path,
    data: demo.DemoDirectory,
    uris: Sequence[str],
    spool: Path | None = None,
    timeouts: float | None = None,
    **kwargs: object,
) -> Path:
    """A mailrouter.toml for the hooks: service account of ``data``, mbox spool ``spool``.

    ``timeouts`` sets both LDAP timeouts.  The secret is 0640 root:Debian-exim
    (the SMTP-time hooks); ``kwargs`` go to :func:`mailrouter.sandbox.configs.write_config`.
    """
    service = data.account("service")
    if timeouts is not None:
        kwargs.update(connect_timeout=timeouts, operation_timeout=timeouts)
    if spool is not None:
        kwargs.setdefault("mbox_template", f"{spool}/{{local}}@{{domain}}")
    return write_config(
        path,
        uris=uris,
        base_dn=data.base_dn,
        bind_dn=service.dn,
        password=service.password,
        **kwargs,  # type: ignore[arg-type]
    )


def hub_exim(workdir: Path, config: Path, config_file: Path | None = None, **macros: str) -> Exim:
    """Real Exim with the shipped exim/ config (or ``config_file``), set up as a test hub.

    The hooks are those of :data:`BIN`.  Remote mail goes to a closed loopback
    port (it defers; nothing leaves the machine); TLS and the auth socket are
    absent unless ``macros`` name them.  The caller closes it (which checks the
    paniclog).
    """
    defaults = {
        "MAILROUTER_BIN": str(BIN),  # the hooks of the venv under test, never another install
        "MAILROUTER_CONFIG": str(config),
        "MAILROUTER_HOSTNAME": "hub.example.net",
        "MAILROUTER_RELAY_HOST": "127.0.0.1",
        "MAILROUTER_RELAY_PORT": str(free_port()),
        "MAILROUTER_TLS_CERT": str(workdir / "absent.crt"),
        "MAILROUTER_TLS_KEY": str(workdir / "absent.key"),
        "MAILROUTER_AUTH_SOCKET": str(workdir / "absent.sock"),
    }
    return Exim(workdir / "exim", config_file or ROOT / "exim" / "mailrouter.conf", {**defaults, **macros})


# -- logins every front end must refuse alike --------------------------------------------------
def alice(data: demo.DemoDirectory) -> demo.Account:
    return data.account("alice@example.com")


def _refusals(password: str) -> dict[str, tuple[str, str]]:
    return {
        "wrong password": ("alice@example.com", password + "x"),
        "unknown user": ("nobody@example.com", password),
        "unknown domain": ("alice@example.net", password),
        "upper-case local part": ("ALICE@example.com", password),
        "upper-case domain": ("alice@EXAMPLE.COM", password),
        "dot-dot slash": ("../alice@example.com", password),
        "slash": ("x/alice@example.com", password),
        "leading dot": (".alice@example.com", password),
        "NUL in login": ("alice\x00@example.com", password),
        "control character": ("alice\n@example.com", password),
        "trailing space": ("alice@example.com ", password),
        "over-long": ("a" * 65 + "@example.com", password),
        "no domain": ("alice", password),
        "empty password": ("alice@example.com", ""),
        "over-long password": ("alice@example.com", password + "x" * 1100),
        "disabled, right password": (DISABLED_LOGIN, DISABLED_PASSWORD),
        "disabled, wrong password": (DISABLED_LOGIN, DISABLED_PASSWORD + "x"),
    }


def refusal_cases(data: demo.DemoDirectory) -> dict[str, tuple[str, str]]:
    """Each refusal case of issue 5: (login, password), all to be answered alike."""
    return _refusals(alice(data).password)


CASES = list(_refusals("").keys())


class IdleConnections:
    """``count`` connections to a Unix socket that never send a byte, kept open from a
    thread: one the server closes is replaced at once (a stuck or hostile peer) --
    unless ``replace`` is false (a test of which connection the server drops must
    not race a replacement that makes the newest one the oldest idle)."""

    def __init__(self, path: Path, count: int, *, replace: bool = True) -> None:
        self.path = path
        self.count = count
        self.replace = replace
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleConnections:
        """Wait (5 s at most) until ``count`` are open.  A server whose backlog is
        full cannot take them all: the test then goes on, and should check ``opened``."""
        self._thread.start()
        deadline = time.monotonic() + 5
        while self.opened < self.count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            while not self._stop.is_set():
                while len(selector.get_map()) < self.count and (self.replace or self.opened < self.count):
                    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    client.setblocking(False)  # a full backlog must not stop the thread
                    try:
                        client.connect(str(self.path))
                    except OSError:
                        client.close()
                        break
                    selector.register(client, selectors.EVENT_READ)
                    self.opened += 1
                for key, _events in selector.select(timeout=0.05):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


# -- names some test modules use for the one data set and the one config writer ------------------
@pytest.fixture(scope="session")
def demo_data(dataset: Dataset) -> Dataset:
    """The suite's one data set (``dataset``), under the name some modules use."""
    return dataset


def make_config(directory: Path, data: demo.DemoDirectory, uris: Sequence[str],
                timeouts: float | None = None, **kwargs: object) -> Path:
    """``directory/mailrouter.toml`` for the hooks (see :func:`hook_config`)."""
    return hook_config(directory / "mailrouter.toml", data, uris, timeouts=timeouts, **kwargs)
