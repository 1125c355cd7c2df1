"""Debian's Roundcube with the project's ``webmail/config.inc.php``, privately, on a free loopback port.

Used by ``mailrouter-sandbox`` and the browser test.  Roundcube is served by
PHP's built-in server (``php -S``, several workers) from Debian's document
root ``/var/lib/roundcube/public_html``, as ``www-data``, with
``ROUNDCUBE_CONFIG_DIR`` pointing at a private directory: Debian's
``defaults.inc.php`` (linked) and the shipped ``webmail/config.inc.php`` with
the values of exactly the ``$config`` keys in :func:`render_config` re-pointed
(database, temp and log directories, the hub's IMAPS and submission ports,
its CA, a fresh ``des_key``, no forced HTTPS on loopback).  Roundcube's own
state is a SQLite file created from Debian's schema.  Nothing under /etc,
/var/lib/roundcube or /var/log changes.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import signal
import sqlite3
import subprocess
from pathlib import Path

from mailrouter.errors import DaemonError
from mailrouter.sandbox.slapd import free_port, wait_for_port

PHP = "/usr/bin/php"
DOCUMENT_ROOT = "/var/lib/roundcube/public_html"
DEFAULTS = "/etc/roundcube/defaults.inc.php"
SCHEMA = "/usr/share/roundcube/SQL/sqlite.initial.sql"
WEB_USER = "www-data"
WORKERS = 4  # Roundcube's pages fire several requests at once
START_TIMEOUT = 20.0

PhpValue = str | bool | dict[str, "PhpValue"]


def php_literal(value: PhpValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "[" + ", ".join(f"{php_literal(k)} => {php_literal(v)}" for k, v in value.items()) + "]"


def render_config(template: str, values: dict[str, PhpValue]) -> str:
    """The shipped config with the value of each ``$config['KEY'] = ...;`` in ``values`` replaced."""
    for key, value in values.items():
        pattern = re.compile(r"^\$config\['" + re.escape(key) + r"'\] = .*?;$", re.M | re.S)
        line = f"$config['{key}'] = {php_literal(value)};"
        template, count = pattern.subn(lambda _match: line, template, count=1)  # noqa: B023 - used at once
        if count != 1:
            raise DaemonError(f"webmail/config.inc.php no longer sets $config['{key}']")
    return template


def tls_options(ca_cert: Path) -> dict[str, PhpValue]:
    return {"ssl": {"verify_peer": True, "verify_peer_name": True, "cafile": str(ca_cert)}}


class Webmail:
    """Roundcube on ``http://127.0.0.1:PORT/`` for the hub's IMAPS and submission ports."""

    def __init__(
        self, workdir: Path, *, root: Path, host: str, imaps_port: int, submission_port: int, ca_cert: Path,
        port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.root = root
        self.host = host  # a name the hub's certificates match
        self.imaps_port = imaps_port
        self.submission_port = submission_port
        self.ca_cert = ca_cert
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def configure(self) -> None:
        web = pwd.getpwnam(WEB_USER)
        config_dir = self.workdir / "config"
        for path in (self.workdir, config_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        for name in ("temp", "logs", "db"):  # SQLite writes its journal beside the database
            (self.workdir / name).mkdir(mode=0o700, exist_ok=True)
            os.chown(self.workdir / name, web.pw_uid, web.pw_gid)
        database = self.workdir / "db" / "roundcube.db"
        if not database.exists():
            with sqlite3.connect(database) as connection:
                connection.executescript(Path(SCHEMA).read_text(encoding="utf-8"))
            connection.close()
        os.chown(database, web.pw_uid, web.pw_gid)
        database.chmod(0o600)
        defaults = config_dir / "defaults.inc.php"
        if not defaults.is_symlink():
            defaults.symlink_to(DEFAULTS)
        template = (self.root / "webmail" / "config.inc.php").read_text(encoding="utf-8")
        text = render_config(template, {
            "db_dsnw": f"sqlite:///{database}?mode=0600",
            "temp_dir": f"{self.workdir}/temp/",
            "log_dir": f"{self.workdir}/logs/",
            "imap_host": f"ssl://{self.host}:{self.imaps_port}",
            "imap_conn_options": tls_options(self.ca_cert),
            "smtp_host": f"tls://{self.host}:{self.submission_port}",
            "smtp_conn_options": tls_options(self.ca_cert),
            "des_key": secrets.token_urlsafe(18)[:24],
            "use_https": False,  # plain HTTP, on loopback only
        })
        config = config_dir / "config.inc.php"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chown(config, 0, web.pw_gid)
        config.chmod(0o640)

    def ini(self) -> list[str]:
        """PHP settings that keep every file of the server in its own directory: opcache's
        lock file, uploads and temporary files would otherwise go to /tmp."""
        temp = str(self.workdir / "temp")
        return [f"-d{name}={temp}" for name in ("opcache.lockfile_path", "sys_temp_dir", "upload_tmp_dir")]

    def start(self) -> Webmail:
        self.configure()
        environment = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "ROUNDCUBE_CONFIG_DIR": str(self.workdir / "config"),
            "PHP_CLI_SERVER_WORKERS": str(WORKERS),
        }
        with (self.workdir / "php.log").open("ab") as log:
            self.process = subprocess.Popen(
                [PHP, *self.ini(), "-S", f"127.0.0.1:{self.port}", "-t", DOCUMENT_ROOT],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment, cwd=DOCUMENT_ROOT,
                user=WEB_USER, group=WEB_USER, extra_groups=[], start_new_session=True,
            )
        if not wait_for_port(self.port, START_TIMEOUT, self.process):
            self.stop()
            raise DaemonError("roundcube (php -S) did not start: " + self.log())
        return self

    def log(self) -> str:
        parts = []
        for path in (self.workdir / "php.log", self.workdir / "logs" / "errors.log"):
            try:
                parts.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the workers too
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
