"""Password hashing: the only module that imports passlib.

Whatever the project writes into ``userPassword`` is a hash in the RFC 2307
form slapd verifies on bind: ``{ARGON2}`` (slapd's argon2 module, loaded by the
shipped slapd.conf), ``{CRYPT}`` with SHA-512 crypt, or ``{SSHA}``.  Cleartext
is never written.  Nothing here talks to LDAP.
"""

from __future__ import annotations

import base64
import hashlib
import os

from passlib.hash import argon2, sha512_crypt

from mailrouter.errors import ConfigError

SCHEMES = ("argon2", "sha512_crypt", "ssha")
SSHA_SALT_BYTES = 8


def hash_password(password: str, scheme: str = "argon2") -> str:
    """Return the ``userPassword`` value for ``password`` under ``scheme``."""
    if not password:
        raise ValueError("refusing to hash an empty password")
    if scheme == "argon2":
        # argon2id; slapd's {ARGON2} verifies the PHC string passlib produces.
        return "{ARGON2}" + str(argon2.using(type="ID").hash(password))
    if scheme == "sha512_crypt":
        return "{CRYPT}" + str(sha512_crypt.using(rounds=100_000).hash(password))
    if scheme == "ssha":
        salt = os.urandom(SSHA_SALT_BYTES)
        digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - RFC 2307 SSHA
        return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")
    raise ConfigError(f"unknown password scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def dummy_work(password: str) -> None:
    """Spend about the time slapd spends verifying an {ARGON2} hash, for unknown
    users, so that "no such user" and "wrong password" take about as long."""
    argon2.using(type="ID").hash(password or "x")
