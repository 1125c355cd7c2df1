"""The web interface as the sandbox and the tests run it: the real ``mailrouter-web``
(gunicorn) with HTTPS from the throwaway CA, on a free loopback port.

``web_settings()`` is the ``[web]`` table such a hub's configuration gets; the
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
from typing import Any

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port

START_TIMEOUT = 20.0


def web_settings(workdir: Path, port: int, certificate: Path | None, key: Path | None) -> dict[str, Any]:
    """The ``[web]`` table of a hub in ``workdir`` (for ``configs.write_config(web=...)``);
    the web secret is created here, mode 0600."""
    secret = workdir / "web.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "secret_key_file": str(secret),
        "state_dir": str(workdir / "web-state"),
        "workers": 2,
    }
    if certificate is not None and key is not None:
        settings.update(tls_certificate=str(certificate), tls_key=str(key))
    return settings


class WebServer:
    """``mailrouter-web --config CONFIG`` on ``port`` (see :func:`web_settings`)."""

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
