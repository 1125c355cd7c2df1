"""A write that reached a read-only replica (ReadOnlyReplica): one clear message per front end.

Through the real slapds: tests/integration/test_replication.py (the library and
the admin CLI); here the web's mapping, which has no daemon of its own to add.
"""

from __future__ import annotations

from mailrouter.admin.web.errors import status_of
from mailrouter.config import LdapConfig, parse
from mailrouter.errors import ConfigError, ReadOnlyReplica


def test_the_message_names_the_replica_the_providers_and_the_fix() -> None:
    error = ReadOnlyReplica("modify", "dc=x,o=top", "ldap://127.0.0.2:389/",
                            ["ldap://a:389/dc=x,o=top", "ldap://b:389/dc=x,o=top"])
    assert isinstance(error, ConfigError)  # temporary: nothing was written, an admin fixes the config
    assert str(error) == (
        "modify dc=x,o=top: ldap://127.0.0.2:389/ is a read-only replica (it refers writes to"
        " ldap://a:389/dc=x,o=top, ldap://b:389/dc=x,o=top); nothing was written: put the providers"
        " in ldap.write_uris"
    )


def test_the_web_answers_503_with_its_own_message() -> None:
    status, message, fields = status_of(ReadOnlyReplica("add", "dc=x,o=top", "ldap://r/", []))
    assert status == 503 and "read-only replica" in message and not fields


def test_write_uris_default_to_uris_and_are_checked() -> None:
    one = parse({"ldap": {"uris": ["ldap://a/"]}}, path=None)
    assert one.ldap.writers == ("ldap://a/",)
    two = parse({"ldap": {"uris": ["ldap://r/", "ldap://a/"], "write_uris": ["ldap://a/"]}})
    assert two.ldap.uris == ("ldap://r/", "ldap://a/") and two.ldap.writers == ("ldap://a/",)
    assert LdapConfig(uris=("ldap://r/",), write_uris=("ldap://p/",)).writers == ("ldap://p/",)
    for bad in ("ldap://a/", [""], [3]):
        try:
            parse({"ldap": {"uris": ["ldap://a/"], "write_uris": bad}})
        except ConfigError:
            continue
        raise AssertionError(f"write_uris {bad!r} accepted")
