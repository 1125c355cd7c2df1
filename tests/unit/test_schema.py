"""The schema's two forms agree: ldap/mailrouter.ldif is generated from ldap/mailrouter.schema."""

from __future__ import annotations

from conftest import ROOT
from mailrouter.sandbox import schemaldif


def test_shipped_ldif_is_generated_from_the_schema() -> None:
    schema = (ROOT / "ldap" / "mailrouter.schema").read_text(encoding="utf-8")
    shipped = (ROOT / "ldap" / "mailrouter.ldif").read_text(encoding="utf-8")
    assert shipped == schemaldif.to_ldif(schema, "mailrouter")


def test_oids_are_under_our_uuid_arc() -> None:
    schema = (ROOT / "ldap" / "mailrouter.schema").read_text(encoding="utf-8")
    definitions = schemaldif.definitions(schema)
    assert len(definitions) == 13  # 9 attribute types (mailHost: issue 20) + 4 object classes
    for _keyword, body in definitions:
        assert body.startswith("( 2.25.284446531071076964693441605289200182234.")
