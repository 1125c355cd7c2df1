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
and :data:`ARGON2_PARALLELISM` are the project's default Argon2 parameters
(:data:`ARGON2`); the configuration may set others (``[auth] argon2_memory_kib``,
``argon2_time``, ``argon2_parallelism``; :func:`configured_cost` fills what it
leaves out from these defaults, the one place they are spelled).  That one
:class:`Argon2Cost` is behind every ``{ARGON2}`` hash, whoever writes it:

* our own writers (``user add``, ``mailrouter-passwd``, the rehash on login)
  hash here, with passlib;
* slapd hashes the Password Modify operation (``user passwd``, the web, the
  API, ``ldappasswd``) and every cleartext add or replace (ppolicy's
  ``ppolicy_hash_cleartext``) with its argon2 module, which ``ldap/slapd.conf``
  loads as ``moduleload argon2 m=... t=... p=...`` -- exactly
  :func:`slapd_moduleload` (``tests/test_passwords.py`` holds the shipped file
  and the defaults together, also in the cn=config form).  slapd reads these
  parameters once, when it loads the module: a configuration that sets other
  costs must ship the matching line, which
  ``python3 -m mailrouter.passwords --config FILE`` prints (then restart slapd);
* the unknown-user dummy work (:func:`dummy_work`) hashes with the same cost,
  so a refusal without a user bind costs what slapd's check of a real hash costs.

RFC 9106 (section 4) recommends two settings: the FIRST, :data:`RFC9106_FIRST`
(2 GiB of memory, 1 pass, 4 lanes) where that much memory per check is
affordable, and the SECOND, :data:`RFC9106_SECOND` (64 MiB, 3 passes, 4 lanes)
for memory-constrained hosts -- the default here: a mail hub checks many
passwords at once (authd runs 4 per CPU), and 2 GiB each is out of reach.

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

import argparse
import base64
import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from passlib.hash import argon2, sha512_crypt

from mailrouter.errors import ConfigError

if TYPE_CHECKING:
    from mailrouter.config import AuthConfig

SCHEMES = ("argon2", "sha512_crypt", "ssha")
SSHA_SALT_BYTES = 8

# The project's default Argon2 strength (RFC 9106, section 4, second recommended
# option): 64 MiB, 3 passes, 4 lanes.  slapd verifies such a hash in ~100 ms on
# a 2 vCPU machine (README, Performance).  Change them here AND in the
# "moduleload argon2" line of ldap/slapd.conf; a test fails until both agree.
ARGON2_MEMORY_KIB = 65536
ARGON2_TIME = 3
ARGON2_PARALLELISM = 4
SHA512_CRYPT_ROUNDS = 100_000

# What slapd's ``password-hash`` (ldap/slapd.conf) makes of a Password Modify
# or a cleartext write: {ARGON2} with the parameters of its moduleload line.
SLAPD_SCHEME = "argon2"


@dataclass(frozen=True)
class Argon2Cost:
    """Argon2's memory (KiB), passes and lanes: what a hash costs to check."""

    memory_kib: int
    time: int
    parallelism: int


ARGON2 = Argon2Cost(ARGON2_MEMORY_KIB, ARGON2_TIME, ARGON2_PARALLELISM)
RFC9106_FIRST = Argon2Cost(2 * 1024 * 1024, 1, 4)
RFC9106_SECOND = Argon2Cost(64 * 1024, 3, 4)


def configured_cost(auth: AuthConfig) -> Argon2Cost:
    """The Argon2 cost of a configuration: its ``argon2_*`` settings, the defaults for the rest."""
    return Argon2Cost(
        ARGON2_MEMORY_KIB if auth.argon2_memory_kib is None else auth.argon2_memory_kib,
        ARGON2_TIME if auth.argon2_time is None else auth.argon2_time,
        ARGON2_PARALLELISM if auth.argon2_parallelism is None else auth.argon2_parallelism,
    )


@functools.lru_cache(maxsize=8)
def _argon2(cost: Argon2Cost) -> Any:
    return argon2.using(
        type="ID", memory_cost=cost.memory_kib, rounds=cost.time, parallelism=cost.parallelism
    )


def _known(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown password scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def hash_password(password: str, scheme: str = "argon2", cost: Argon2Cost = ARGON2) -> str:
    """Return the ``userPassword`` value for ``password`` under ``scheme`` (``cost``: Argon2's)."""
    if not password:
        raise ValueError("refusing to hash an empty password")
    _known(scheme)
    if scheme == "argon2":
        # argon2id; slapd's {ARGON2} verifies the PHC string passlib produces.
        return "{ARGON2}" + str(_argon2(cost).hash(password))
    if scheme == "sha512_crypt":
        return "{CRYPT}" + str(sha512_crypt.using(rounds=SHA512_CRYPT_ROUNDS).hash(password))
    salt = os.urandom(SSHA_SALT_BYTES)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()  # noqa: S324 - RFC 2307 SSHA
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def scheme_label(scheme: str, cost: Argon2Cost = ARGON2) -> str:
    """The label of what :func:`hash_password` (or slapd, for :data:`SLAPD_SCHEME`)
    stores under ``scheme``: the scheme and its cost, never a salt or a digest."""
    _known(scheme)
    if scheme == "argon2":
        return f"{{ARGON2}}m={cost.memory_kib},t={cost.time},p={cost.parallelism}"
    if scheme == "sha512_crypt":
        return f"{{CRYPT}}$6$rounds={SHA512_CRYPT_ROUNDS}"
    return "{SSHA}"


def configured_hash(password: str, auth: AuthConfig) -> str:
    """:func:`hash_password` with a configuration's scheme and Argon2 cost (what our writers store)."""
    return hash_password(password, auth.password_scheme, configured_cost(auth))


def configured_label(auth: AuthConfig) -> str:
    """:func:`scheme_label` of what :func:`configured_hash` stores."""
    return scheme_label(auth.password_scheme, configured_cost(auth))


def slapd_moduleload(cost: Argon2Cost = ARGON2) -> str:
    """The arguments of ``moduleload`` in ldap/slapd.conf (``olcModuleLoad`` in cn=config)."""
    return f"argon2 m={cost.memory_kib} t={cost.time} p={cost.parallelism}"


def dummy_work(password: str, cost: Argon2Cost = ARGON2) -> str:
    """Spend about the time slapd spends verifying an {ARGON2} hash of ``cost``, for
    unknown users, so that "no such user" and "wrong password" take about as long.
    Returns the throw-away hash (its parameters show the cost spent)."""
    return str(_argon2(cost).hash(password or "x"))


def main(argv: list[str]) -> int:
    """``python3 -m mailrouter.passwords [--config FILE]``: the slapd.conf line for that config."""
    from mailrouter.config import load

    parser = argparse.ArgumentParser(prog="python3 -m mailrouter.passwords",
                                     description="print slapd's argon2 moduleload line for a configuration")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    print("moduleload\t" + slapd_moduleload(configured_cost(load(args.config).auth)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
