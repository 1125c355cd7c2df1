"""Password hashing: the only module that imports passlib.

``passlib`` here is libpass, the maintained fork of passlib 1.7.4 (the same
package name; pyproject.toml says why).  Every scheme below works on Python
3.11 (Debian 12) and 3.13 (Debian 13, no ``crypt`` module): ``{ARGON2}``
through argon2-cffi, ``{CRYPT}`` SHA-512 through libpass's own implementation
(it never uses ``crypt``; same hashes, ~0.2 s at our rounds), ``{SSHA}``
through hashlib.  ``tests/unit/test_password_schemes.py`` checks each against
an independent verifier.

Whatever the project writes into ``userPassword`` is a hash in the RFC 2307
form slapd verifies on bind: ``{ARGON2}`` (slapd's argon2 module, loaded by the
shipped slapd.conf), ``{CRYPT}`` with SHA-512 crypt, or ``{SSHA}``.  Cleartext
is never written.  Nothing here talks to LDAP.

**One strength for every path.**  :data:`ARGON2_MEMORY_KIB`, :data:`ARGON2_TIME`
and :data:`ARGON2_PARALLELISM` are the project's Argon2 parameters, the one
setting behind every ``{ARGON2}`` hash, whoever writes it:

* our own writers (``user add``, ``mailrouter-passwd``, the rehash on login)
  hash here, with passlib;
* slapd hashes the Password Modify operation (``user passwd``, the web, the
  API, ``ldappasswd``) and every cleartext add or replace (ppolicy's
  ``ppolicy_hash_cleartext``) with its argon2 module, which ``ldap/slapd.conf``
  loads as ``moduleload argon2 m=... t=... p=...`` -- exactly
  :func:`slapd_moduleload` (``tests/test_passwords.py`` holds the two together,
  also in the cn=config form).

The one difference left is the Argon2 *type*: Debian 12's slapd module (2.5)
always writes ``argon2i`` (it verifies ``argon2i`` and ``argon2id``); Debian 13's
(2.6) and passlib write ``argon2id`` (RFC 9106's recommendation: also resists side channels and
time-memory trade-offs).  Same memory, passes and lanes, so both cost an
attacker and slapd the same; :func:`scheme_label` therefore names the strength,
not the type, and neither form is ever "rehashed" into the other.

**Scheme labels** (:func:`scheme_label`): what ``mailPasswordScheme`` records
about the hash a writer stored, since nobody may read the hash itself
(``ldap/acl.conf``).  ``{ARGON2}m=65536,t=3,p=4``, ``{CRYPT}$6$rounds=100000``,
``{SSHA}``.  A login whose recorded label differs from the configured scheme's
is rehashed (``mailrouter.auth.rehash_after_login``).
"""

from __future__ import annotations

import base64
import hashlib
import os

from passlib.hash import argon2, sha512_crypt

from mailrouter.errors import ConfigError

SCHEMES = ("argon2", "sha512_crypt", "ssha")
SSHA_SALT_BYTES = 8

# The project's Argon2 strength (RFC 9106, section 4, second recommended
# option): 64 MiB, 3 passes, 4 lanes.  slapd verifies such a hash in ~100 ms on
# a 2 vCPU machine (README, Performance).  Change them here AND in the
# "moduleload argon2" line of ldap/slapd.conf; a test fails until both agree.
ARGON2_MEMORY_KIB = 65536
ARGON2_TIME = 3
ARGON2_PARALLELISM = 4
SHA512_CRYPT_ROUNDS = 100_000

# What slapd's ``password-hash`` (ldap/slapd.conf) makes of a Password Modify
# or a cleartext write: {ARGON2} with the parameters above.
SLAPD_SCHEME = "argon2"

_ARGON2 = argon2.using(
    type="ID", memory_cost=ARGON2_MEMORY_KIB, rounds=ARGON2_TIME, parallelism=ARGON2_PARALLELISM
)


def _known(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown password scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def hash_password(password: str, scheme: str = "argon2") -> str:
    """Return the ``userPassword`` value for ``password`` under ``scheme``."""
    if not password:
        raise ValueError("refusing to hash an empty password")
    _known(scheme)
    if scheme == "argon2":
        # argon2id; slapd's {ARGON2} verifies the PHC string passlib produces.
        return "{ARGON2}" + str(_ARGON2.hash(password))
    if scheme == "sha512_crypt":
        return "{CRYPT}" + str(sha512_crypt.using(rounds=SHA512_CRYPT_ROUNDS).hash(password))
    salt = os.urandom(SSHA_SALT_BYTES)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - RFC 2307 SSHA
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def scheme_label(scheme: str) -> str:
    """The label of what :func:`hash_password` (or slapd, for :data:`SLAPD_SCHEME`)
    stores under ``scheme``: the scheme and its cost, never a salt or a digest."""
    _known(scheme)
    if scheme == "argon2":
        return f"{{ARGON2}}m={ARGON2_MEMORY_KIB},t={ARGON2_TIME},p={ARGON2_PARALLELISM}"
    if scheme == "sha512_crypt":
        return f"{{CRYPT}}$6$rounds={SHA512_CRYPT_ROUNDS}"
    return "{SSHA}"


def slapd_moduleload() -> str:
    """The arguments of ``moduleload`` in ldap/slapd.conf (``olcModuleLoad`` in cn=config)."""
    return f"argon2 m={ARGON2_MEMORY_KIB} t={ARGON2_TIME} p={ARGON2_PARALLELISM}"


def dummy_work(password: str) -> None:
    """Spend about the time slapd spends verifying an {ARGON2} hash, for unknown
    users, so that "no such user" and "wrong password" take about as long."""
    _ARGON2.hash(password or "x")
