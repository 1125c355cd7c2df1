"""The web interface as the sandbox and the tests run it: the real ``mailrouter-web``
(gunicorn) with HTTPS from the throwaway CA, on a free loopback port.

``web_section()`` is the ``[web]`` table such a hub's configuration gets; the
rig starts the installed console script in its own session and waits until it
answers TLS on its port.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port

START_TIMEOUT = 20.0


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def web_section(workdir: Path, port: int, certificate: Path | None, key: Path | None) -> str:
    """The ``[web]`` table for a hub in ``workdir`` (its secret is created here, 0600)."""
    secret = workdir / "web.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    lines = [
        "[web]",
        f"listen = {toml_string(f'127.0.0.1:{port}')}",
        f"secret_key_file = {toml_string(str(secret))}",
        f"state_dir = {toml_string(str(workdir / 'web-state'))}",
        "workers = 2",
    ]
    if certificate is not None and key is not None:
        lines += [f"tls_certificate = {toml_string(str(certificate))}", f"tls_key = {toml_string(str(key))}"]
    return "\n".join(lines) + "\n"


class WebServer:
    """``mailrouter-web --config CONFIG`` on ``port`` (see :func:`web_section`)."""

    def __init__(self, workdir: Path, config_path: Path, port: int | None = None,
                 bin_dir: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.config_path = config_path
        self.port = port or free_port()
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.log_path = self.workdir / "web.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WebServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [os.path.join(self.bin_dir, "mailrouter-web"), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        if not wait_for_port(self.port, START_TIMEOUT, self.process):
            self.stop()
            raise DaemonError("mailrouter-web did not start: " + self.log_path.read_text(errors="replace"))
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
