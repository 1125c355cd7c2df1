"""Server-side web state: login sessions and login throttling, in one SQLite file.

Why a server-side session at all: slapd's ACLs must decide every read and
write, so each request binds to LDAP *as the logged-in person*, which needs
their password on every request.  It must never be in a cookie and never be
stored readable on the server.  So:

* the server stores, per session, the person's DN and their password
  **encrypted** with AES-256-GCM under a random key that exists only in the
  person's cookie (the cookie holds the session id and that key, signed by
  Flask; it never holds the password);
* the server keeps nothing that decrypts the password: a stolen state file
  yields ciphertext only, a stolen cookie without the state file yields a key
  for nothing; logout and expiry delete the row;
* idle and absolute timeouts are enforced here, on every load.

Throttling counts *refused* logins per account name and per client address in
a sliding window, across every gunicorn worker (one SQLite file, WAL mode).
The account name is counted as typed, whether or not it exists, so the
throttle itself tells nothing about which accounts exist.

The file lives in ``web.state_dir`` (mode 0700, file 0600).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STATE_FILE = "web-state.sqlite3"
KEY_BYTES = 32
NONCE_BYTES = 12
SESSION_ID_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    dn TEXT NOT NULL,
    nonce BLOB NOT NULL,
    secret BLOB NOT NULL,
    created REAL NOT NULL,
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_name ON failures (kind, name, at);
"""


@dataclass(frozen=True)
class Login:
    """What a valid session cookie unlocks: who, and the password to bind with."""

    session_id: str
    dn: str
    password: str = ""

    def __repr__(self) -> str:  # never show the password in a traceback or log
        return f"Login(session_id={self.session_id[:8]}..., dn={self.dn!r})"


class State:
    """Sessions and throttles; one instance per process, connections per call."""

    def __init__(self, directory: str, idle_timeout: int, absolute_timeout: int) -> None:
        self.path = Path(directory) / STATE_FILE
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout

    def prepare(self) -> State:
        """Create the directory (0700) and the database (0600); idempotent."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    # -- sessions -----------------------------------------------------------------
    def create(self, dn: str, password: str) -> tuple[str, bytes]:
        """Store a new session; returns ``(session id, key)`` for the cookie."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = os.urandom(NONCE_BYTES)
        # The DN is bound in as associated data: a row's ciphertext cannot be
        # moved to another DN's row.
        secret = AESGCM(key).encrypt(nonce, password.encode("utf-8"), dn.encode("utf-8"))
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO sessions (id, dn, nonce, secret, created, seen) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, dn, nonce, secret, now, now),
            )
        return session_id, key

    def load(self, session_id: str, key: bytes) -> Login | None:
        """The session's login, or ``None`` (unknown, expired, or a key that does not fit)."""
        now = time.time()
        with self._connect() as db:
            row = db.execute(
                "SELECT dn, nonce, secret, created, seen FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return None
            dn, nonce, secret, created, seen = row
            if now - seen > self.idle_timeout or now - created > self.absolute_timeout:
                db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
                return None
            try:
                password = AESGCM(key).decrypt(nonce, secret, dn.encode("utf-8")).decode("utf-8")
            except (InvalidTag, ValueError):
                return None
            db.execute("UPDATE sessions SET seen = ? WHERE id = ?", (now, session_id))
        return Login(session_id, dn, password)

    def delete(self, session_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def purge(self) -> int:
        """Drop expired sessions and old failure records; returns the sessions dropped."""
        now = time.time()
        with self._connect() as db:
            dropped = db.execute(
                "DELETE FROM sessions WHERE seen < ? OR created < ?",
                (now - self.idle_timeout, now - self.absolute_timeout),
            ).rowcount
            db.execute("DELETE FROM failures WHERE at < ?", (now - 86400,))
        return int(dropped)

    def session_count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    # -- throttling -----------------------------------------------------------------
    def failures(self, kind: str, name: str, window: float) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM failures WHERE kind = ? AND name = ? AND at >= ?",
                (kind, name, time.time() - window),
            ).fetchone()
        return int(row[0])

    def record_failure(self, kind: str, name: str) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO failures (kind, name, at) VALUES (?, ?, ?)", (kind, name, time.time()))

    def clear_failures(self, kind: str, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM failures WHERE kind = ? AND name = ?", (kind, name))
