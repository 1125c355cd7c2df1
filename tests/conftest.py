"""Shared fixtures: a real slapd from the project's own ldap/ files.

Every fixture that starts a daemon stops it in a ``finally``/yield teardown,
whatever the test did.  Tests that need root-only daemons are skipped (loudly)
when not run as root; CI runs as root.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailrouter.config import LdapConfig
from mailrouter.directory import Directory
from mailrouter.sandbox import demo
from mailrouter.sandbox.exim import Exim, write_service_config
from mailrouter.sandbox.slapd import Slapd, free_port

ROOT = Path(__file__).resolve().parents[1]
# The installed executables under test: those of the venv running pytest, so a
# second venv (MAILROUTER_VENV=... bin/install-deps) tests its own install.
BIN = Path(sys.executable).parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


@pytest.fixture(scope="session")
def demo_data() -> demo.DemoDirectory:
    return demo.build()


def start_slapd(workdir: Path, data: demo.DemoDirectory, extra_ldif: str = "", **kwargs: object) -> Slapd:
    slapd = Slapd(
        workdir,
        ldif=[data.ldif, extra_ldif] if extra_ldif else [data.ldif],
        root=ROOT,
        seed_passwords=data.seed_passwords,
        **kwargs,  # type: ignore[arg-type]
    )
    return slapd.start()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory, demo_data: demo.DemoDirectory) -> Iterator[Slapd]:
    """A read-mostly slapd with the demo data; tests must not change what others read."""
    server = start_slapd(tmp_path_factory.mktemp("slapd"), demo_data)
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
def directory(slapd: Slapd, demo_data: demo.DemoDirectory) -> Iterator[Directory]:
    with Directory(service_config(slapd, demo_data)) as handle:
        yield handle


def hook_config(path: Path, slapd: Slapd, data: demo.DemoDirectory, spool: Path, **kwargs: object) -> Path:
    """A mailrouter.toml for the hooks (service account of ``data``, mbox spool ``spool``)."""
    service = data.account("service")
    return write_service_config(
        path,
        uris=[slapd.uri],
        base_dn=data.base_dn,
        bind_dn=service.dn,
        password=service.password,
        mbox_template=f"{spool}/{{local}}@{{domain}}",
        **kwargs,  # type: ignore[arg-type]
    )


def hub_exim(workdir: Path, config: Path, **macros: str) -> Exim:
    """Real Exim with the shipped exim/ config, set up as a test hub.

    Remote mail goes to a closed loopback port (it defers; nothing leaves the
    machine); TLS and the auth socket are absent unless ``macros`` name them.
    """
    defaults = {
        "MAILROUTER_CONFIG": str(config),
        "MAILROUTER_HOSTNAME": "hub.example.net",
        "MAILROUTER_RELAY_HOST": "127.0.0.1",
        "MAILROUTER_RELAY_PORT": str(free_port()),
        "MAILROUTER_TLS_CERT": str(workdir / "absent.crt"),
        "MAILROUTER_TLS_KEY": str(workdir / "absent.key"),
        "MAILROUTER_AUTH_SOCKET": str(workdir / "absent.sock"),
    }
    return Exim(workdir / "exim", ROOT / "exim" / "mailrouter.conf", {**defaults, **macros})


class IdleConnections:
    """``count`` connections to a Unix socket that never send a byte, kept open from a
    thread: one the server closes is replaced at once (a stuck or hostile peer)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.count = count
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
                while len(selector.get_map()) < self.count:
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
