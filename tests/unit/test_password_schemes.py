"""Every password scheme mailrouter writes, checked by a verifier that is not passlib.

Runs on Debian 12 (Python 3.11) and in CI's Debian 13 stage (Python 3.13, which
has no ``crypt`` module): ``{ARGON2}`` by argon2-cffi itself, ``{CRYPT}`` by the
system's libcrypt (what slapd's ``{CRYPT}`` calls), ``{SSHA}`` by hashlib.  slapd
verifying each on a real bind: tests/integration/test_dovecot_imap.py (one
login per scheme) and test_passwords.py.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import warnings

import argon2
import pytest

from mailrouter import passwords

PASSWORD = "correct horse \u00e9 battery"


def test_every_scheme_has_a_check_here() -> None:
    assert set(passwords.SCHEMES) == {"argon2", "sha512_crypt", "ssha"}


def test_argon2_is_argon2id_with_the_project_strength_and_verifies() -> None:
    # Warnings are errors here: passlib 1.7.4 reads argon2.__version__, which
    # argon2-cffi deprecates for removal; when it goes, that backend stops loading.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = passwords.hash_password(PASSWORD, "argon2")
    assert stored.startswith("{ARGON2}$argon2id$v=19$")
    phc = stored.removeprefix("{ARGON2}")
    parameters = argon2.extract_parameters(phc)
    assert (parameters.memory_cost, parameters.time_cost, parameters.parallelism) == (
        passwords.ARGON2_MEMORY_KIB, passwords.ARGON2_TIME, passwords.ARGON2_PARALLELISM,
    )
    hasher = argon2.PasswordHasher()
    assert hasher.verify(phc, PASSWORD)
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        hasher.verify(phc, PASSWORD + "x")


def _libcrypt(password: str, setting: str) -> str:
    name = ctypes.util.find_library("crypt")
    assert name, "libcrypt not found"
    library = ctypes.CDLL(name)
    library.crypt.restype = ctypes.c_char_p
    library.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result = library.crypt(password.encode("utf-8"), setting.encode("ascii"))
    assert result is not None
    return bytes(result).decode("ascii")


def test_sha512_crypt_verifies_with_the_system_libcrypt() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = passwords.hash_password(PASSWORD, "sha512_crypt")
    assert stored.startswith(f"{{CRYPT}}$6$rounds={passwords.SHA512_CRYPT_ROUNDS}$")
    crypted = stored.removeprefix("{CRYPT}")
    assert _libcrypt(PASSWORD, crypted) == crypted
    assert _libcrypt(PASSWORD + "x", crypted) != crypted


def test_ssha_verifies_with_hashlib() -> None:
    stored = passwords.hash_password(PASSWORD, "ssha")
    assert stored.startswith("{SSHA}")
    raw = base64.b64decode(stored.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert len(salt) == passwords.SSHA_SALT_BYTES
    assert hashlib.sha1(PASSWORD.encode("utf-8") + salt).digest() == digest  # noqa: S324 - RFC 2307
    assert hashlib.sha1(b"x" + salt).digest() != digest  # noqa: S324


@pytest.mark.parametrize("scheme", passwords.SCHEMES)
def test_two_hashes_of_one_password_differ(scheme: str) -> None:
    """A fresh salt each time: equal passwords never give equal hashes."""
    assert passwords.hash_password(PASSWORD, scheme) != passwords.hash_password(PASSWORD, scheme)
