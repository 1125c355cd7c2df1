"""Issue 17: slapd's own audit log and integrity rules, against a real slapd from the shipped ldap/.

* Every write -- through ``mailrouter-admin``, the web app, or raw LDAP
  (``ldapmodify``) -- appears in the log with the DN that made it.
* Who reads what is slapd's decision: global admins all, a domain's admins
  (postmaster or group member) their domain's records only, users nothing;
  the CLI, the web page and the API show exactly that.
* No password value -- cleartext or hash, by plain Modify, by Password Modify,
  by user add -- is anywhere in the log database: not in ``slapcat -b
  cn=accesslog`` (base64 values decoded), not in its raw ``data.mdb``.
* slapo-unique: one ``mail`` per directory (users and aliases, across domains),
  one top-level login; slapo-refint: a removed or renamed user leaves no stale
  ``member`` anywhere.  Raw LDAP and the CLI.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import hook_config, own_copy, start_slapd
from dataset import ACL_A, Dataset, acl_password
from mailrouter import config as config_module
from mailrouter import exitcodes
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import free_port
from mailrouter.sandbox.web import web_settings
from test_admin import GLOBAL, PM_COM, PM_ORG, Hub
from test_web import HTTPS, Browser

BASE = "o=top"
A, B = "example.com", "example.org"
LOG = "cn=accesslog"
WITHHELD = "<withheld>"


# -- the hub: slapd, a config, password files, the web app ------------------------------------------
@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Hub]:
    data = own_copy(dataset)
    workdir = tmp_path_factory.mktemp("audit")
    workdir.chmod(0o755)
    server = start_slapd(workdir / "slapd", data)
    try:
        web = web_settings(workdir, free_port(), None, None)
        web.update(state_dir=str(workdir / "state"))
        config = hook_config(workdir / "mailrouter.toml", data, [server.uri], workdir / "mail",
                             password_scheme="ssha", web=web)
        hub = Hub(server, data, workdir, config)
        for account in data.accounts:
            key = account.address or account.role
            hub.password_files[key] = hub.secret(key.replace("@", "_at_"), account.password)
        hub.password_files[GLOBAL] = hub.password_files["global-admin"]
        yield hub
    finally:
        server.stop()


def web_login(hub: Hub, login: str, password: str) -> Browser:
    from mailrouter.admin.web import create_app

    app = create_app(config_module.load(str(hub.config)))
    browser = Browser(app.test_client())
    response = browser.login(login, password)
    assert response.status_code == 302, response.text[:300]
    return browser


def ldap(hub: Hub, tool: str, actor: str, *argv: str, ldif: str = "") -> subprocess.CompletedProcess[str]:
    """An OpenLDAP client (ldapmodify, ldapsearch, ldappasswd) bound as ``actor``; the
    password from a file, never argv."""
    account = hub.who(actor)
    secret = hub.workdir / f"ldap-secret-{actor.replace('@', '_at_')}"
    secret.write_text(account.password, encoding="utf-8")  # -y reads the whole file: no newline
    secret.chmod(0o600)
    return subprocess.run([tool, "-x", "-H", hub.slapd.uri, "-D", account.dn, "-y", str(secret), *argv],
                          input=ldif, capture_output=True, text=True, timeout=60, check=False)


def modify(hub: Hub, actor: str, ldif: str) -> subprocess.CompletedProcess[str]:
    return ldap(hub, "ldapmodify", actor, ldif=ldif)


def slapcat(hub: Hub, suffix: str) -> list[tuple[str, dict[str, list[bytes]]]]:
    """What slapd stored under ``suffix``, read offline, every value decoded (base64 too)."""
    done = subprocess.run(["slapcat", "-f", str(hub.slapd.conf_path), "-b", suffix],
                          capture_output=True, timeout=60, check=True)
    entries: list[tuple[str, dict[str, list[bytes]]]] = []
    for block in done.stdout.decode("utf-8", "replace").split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if line.startswith(" ") and lines:
                lines[-1] += line[1:]
            elif line and not line.startswith("#"):
                lines.append(line)
        attributes: dict[str, list[bytes]] = {}
        dn = ""
        for line in lines:
            name, _, value = line.partition(":")
            raw = base64.b64decode(value[2:]) if value.startswith(":") else value[1:].encode()
            if name == "dn":
                dn = raw.decode()
            else:
                attributes.setdefault(name, []).append(raw)
        if dn:
            entries.append((dn, attributes))
    return entries


def stored_passwords(hub: Hub, dn: str) -> list[bytes]:
    for entry_dn, attributes in slapcat(hub, BASE):
        if entry_dn.lower() == dn.lower():
            return attributes.get("userPassword", [])
    raise AssertionError(f"{dn} not in slapcat")


def audit(hub: Hub, actor: str, *argv: str) -> Any:
    result = hub.run(actor, "--json", "audit", *argv)
    assert result.rc == 0, result
    return result.json()


def records_about(rows: list[dict[str, Any]], dn: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["target_dn"].lower() == dn.lower()]


# -- who did it ---------------------------------------------------------------------------------------
def test_cli_web_and_raw_ldap_writes_appear_with_their_actor(hub: Hub) -> None:
    secret = hub.secret("cli-user", "Cli-User-Pass-1")
    # The CLI, as A's postmaster.
    assert hub.run(PM_COM, "user", "add", f"cli-user@{A}", "--new-password-file", str(secret)).rc == 0
    # The web app, as the global admin.
    browser = web_login(hub, "admin", hub.who(GLOBAL).password)
    response = browser.post(f"/domains/{A}/users/cli-user/quota", {"quota": "64M"})
    assert response.status_code == 302, response.text[:300]
    # Raw LDAP, as B's postmaster.
    done = modify(hub, PM_ORG, f"dn: uid=carol,dc={B},{BASE}\nchangetype: modify\n"
                               "replace: description\ndescription: raw ldapmodify\n")
    assert done.returncode == 0, done.stderr

    rows = audit(hub, GLOBAL, "--since", "1h")
    user_dn = f"uid=cli-user,dc={A},{BASE}"
    about = records_about(rows, user_dn)
    added = [r for r in about if r["operation"] == "add"]
    assert [r["actor_dn"] for r in added] == [hub.who(PM_COM).dn]
    assert added[0]["actor"] == PM_COM and added[0]["target"] == f"cli-user@{A}"
    assert {"attribute": "mail", "op": "add", "values": [f"cli-user@{A}"]} in added[0]["changes"]
    quota = [r for r in about if r["operation"] == "modify" and any(c["attribute"] == "mailQuota"
                                                                      for c in r["changes"])]
    assert [r["actor_dn"] for r in quota] == [hub.who(GLOBAL).dn]
    assert {"attribute": "mailQuota", "op": "replace", "values": ["64M"]} in quota[0]["changes"]
    raw = records_about(rows, f"uid=carol,dc={B},{BASE}")
    assert [(r["actor_dn"], r["changes"]) for r in raw] == [
        (hub.who(PM_ORG).dn, [{"attribute": "description", "op": "replace", "values": ["raw ldapmodify"]}])]
    # --actor and --domain narrow it; the human table shows the same records.
    by_pm_org = audit(hub, GLOBAL, "--actor", PM_ORG)
    assert by_pm_org and {r["actor_dn"] for r in by_pm_org} == {hub.who(PM_ORG).dn}
    in_b = audit(hub, GLOBAL, "--domain", B)
    assert in_b and all(r["target_dn"].lower().endswith(f"dc={B},{BASE}") for r in in_b)
    table = hub.run(GLOBAL, "audit", "--actor", PM_ORG)
    assert table.rc == 0 and "carol@example.org" in table.out and "description=raw ldapmodify" in table.out
    # The web page and the API show the same log.
    page = browser.get(f"/audit?actor={PM_COM}").get_data(as_text=True)
    assert f"cli-user@{A}" in page and "carol@example.org" not in page
    assert "Audit log" in browser.get("/me").get_data(as_text=True)  # in the nav


# -- who reads what -------------------------------------------------------------------------------------
def test_domain_admins_see_only_their_domains_records(hub: Hub) -> None:
    for dn in (f"uid=alice,dc={A},{BASE}", f"uid=dave,dc={B},{BASE}", f"uid=boss,dc=a.example,{BASE}"):
        done = modify(hub, GLOBAL, f"dn: {dn}\nchangetype: modify\nreplace: description\ndescription: x\n")
        assert done.returncode == 0, done.stderr
    everything = audit(hub, GLOBAL)
    assert {r["target_dn"].split(",", 1)[1] for r in everything} >= {
        f"dc={A},{BASE}", f"dc={B},{BASE}", f"dc=a.example,{BASE}"}

    def domains_seen(actor: str) -> set[str]:
        found = {re.search(r"dc=([^,]+),o=top$", r["target_dn"].lower()) for r in audit(hub, actor)}
        return {m.group(1) if m else "(none)" for m in found}

    # B's postmaster sees B's records, and none of A's.
    assert domains_seen(PM_ORG) == {B}
    refused = hub.run(PM_ORG, "--json", "audit", "--domain", A)
    assert refused.rc == exitcodes.EX_REFUSED and refused.json()["kind"] == "not_found"  # type: ignore[index]
    # A's postmaster sees A's; a member of a.example's admin group (not a postmaster) sees a.example's.
    assert domains_seen(PM_COM) == {A}
    boss = f"boss@{ACL_A}"
    hub.data.accounts.append(demo.Account(f"uid=boss,dc={ACL_A},{BASE}", acl_password("admin_a"),
                                          "domain-admin", boss))
    hub.password_files[boss] = hub.secret("boss-a", acl_password("admin_a"))
    assert domains_seen(boss) == {ACL_A}
    # slapd itself says so, to raw LDAP too: B's admin finds nothing about alice; a user nothing at all.
    found = ldap(hub, "ldapsearch", PM_ORG, "-LLL", "-b", LOG, f"(reqDN=uid=alice,dc={A},{BASE})", "reqDN")
    assert found.returncode == 0 and "dn:" not in found.stdout
    user = f"alice@{A}"
    hub.password_files[user] = hub.secret("alice", hub.who(user).password)
    found = ldap(hub, "ldapsearch", user, "-LLL", "-b", LOG, "(objectClass=*)", "reqDN")
    assert found.returncode == 0 and "dn:" not in found.stdout, found
    # The web page and the API, as B's admin: nothing about A.
    browser = web_login(hub, PM_ORG, hub.who(PM_ORG).password)
    page = browser.get("/audit").get_data(as_text=True)
    assert f"dave@{B}" in page and f"alice@{A}" not in page
    token = base64.b64encode(f"{PM_ORG}:{hub.who(PM_ORG).password}".encode()).decode()
    api = browser.client.get("/api/v1/audit", base_url=HTTPS, headers={"Authorization": f"Basic {token}"})
    assert api.status_code == 200
    assert api.json and not [r for r in api.json if r["target_dn"].lower().endswith(f"dc={A},{BASE}")]


# -- no password value in the log ---------------------------------------------------------------------
def test_no_password_value_anywhere_in_the_log_database(hub: Hub) -> None:
    secrets: list[bytes] = []
    user = f"pw-user@{A}"
    dn = f"uid=pw-user,dc={A},{BASE}"

    def remember(cleartext: str | None) -> None:
        if cleartext:
            secrets.append(cleartext.encode())
        secrets.extend(stored_passwords(hub, dn))

    # user add with a password (hashed by mailrouter), as A's postmaster.
    first = "First-Cleartext-1"
    assert hub.run(PM_COM, "user", "add", user, "--new-password-file", str(hub.secret("pw1", first))).rc == 0
    remember(first)
    # user passwd (Password Modify extended operation), as the global admin.
    second = "Second-Cleartext-2"
    pw2 = hub.secret("pw2", second)
    assert hub.run(GLOBAL, "user", "passwd", user, "--new-password-file", str(pw2)).rc == 0
    remember(second)
    # Raw Modify with cleartext (ppolicy stores the hash), as A's postmaster.
    third = "Third-Cleartext-3"
    done = modify(hub, PM_COM, f"dn: {dn}\nchangetype: modify\nreplace: userPassword\n"
                               f"userPassword: {third}\n")
    assert done.returncode == 0, done.stderr
    remember(third)
    # Raw Modify with a ready hash (stored as sent: a migration), as the global admin;
    # then the same cleartext added back beside it.
    ready = "{SSHA}o2l5tE8E8a0lfWgqvvRoSdXJ4xfo7o2c"
    done = modify(hub, GLOBAL, f"dn: {dn}\nchangetype: modify\nreplace: userPassword\n"
                               f"userPassword: {ready}\n")
    assert done.returncode == 0, done.stderr
    assert stored_passwords(hub, dn) == [ready.encode()]
    done = modify(hub, GLOBAL, f"dn: {dn}\nchangetype: modify\nadd: userPassword\nuserPassword: {third}\n")
    assert done.returncode == 0, done.stderr
    remember(third)
    # ldappasswd (Password Modify) by the user themself, with the old password.
    fourth = "Fourth-Cleartext-4"
    hub.data.accounts.append(demo.Account(dn, third, "user", user))
    hub.password_files[user] = hub.secret("pw-user", third)
    done = ldap(hub, "ldappasswd", user, "-T", str(hub.secret("pw4", fourth)), dn)
    assert done.returncode == 0, done.stderr
    remember(fourth)
    # The web: a password reset by the global admin.
    fifth = "Fifth-Cleartext-5"
    browser = web_login(hub, "admin", hub.who(GLOBAL).password)
    response = browser.post(f"/domains/{A}/users/pw-user/password", {"password": fifth})
    assert response.status_code == 302, response.text[:300]
    remember(fifth)
    assert len(set(secrets)) >= 10  # five cleartexts, five hashes (and the ready one)

    log = slapcat(hub, LOG)
    values = [v for _, attributes in log for vs in attributes.values() for v in vs]
    for secret in set(secrets):
        assert not [v for v in values if secret in v], secret
    # Not even in the database file: the value never reached it.
    raw = (hub.slapd.workdir / "accesslog" / "data.mdb").read_bytes()
    for secret in set(secrets):
        assert secret not in raw, secret
    # ...while every change is recorded, with its actor and "<withheld>".
    rows = records_about(audit(hub, GLOBAL), dn)
    password_changes = [(r["actor"], c["op"], c["values"]) for r in rows for c in r["changes"]
                        if c["attribute"] == "userPassword"]
    assert password_changes == [
        (PM_COM, "add", [WITHHELD]),        # user add
        ("admin", "replace", [WITHHELD]),   # user passwd (Password Modify)
        (PM_COM, "replace", [WITHHELD]),    # raw cleartext
        ("admin", "replace", [WITHHELD]),   # raw ready hash ...
        ("admin", "add", [WITHHELD]),       # ... and a second value
        (user, "replace", [WITHHELD]),      # ldappasswd, by the user
        ("admin", "replace", [WITHHELD]),   # the web's reset
    ]


# -- integrity: slapo-unique --------------------------------------------------------------------------
def test_one_address_and_one_login_per_directory(hub: Hub) -> None:
    # Raw LDAP: an alias in B claiming A's user's address; a second top-level "admin" login.
    done = modify(hub, GLOBAL, f"dn: mailAlias=thief,dc={B},{BASE}\nchangetype: add\nobjectClass: mailAlias\n"
                               f"mailAlias: thief\ndc: {B}\nmail: alice@{A}\nmailAliasedName: carol@{B}\n")
    assert done.returncode != 0 and "Constraint violation (19)" in done.stderr, done
    done = modify(hub, GLOBAL, f"dn: uid=carol,dc={B},{BASE}\nchangetype: modify\nadd: mail\nmail: bob@{A}\n")
    assert done.returncode != 0 and "Constraint violation (19)" in done.stderr, done
    done = modify(hub, GLOBAL, f"dn: cn=second admin,{BASE}\nchangetype: add\nobjectClass: inetOrgPerson\n"
                               "cn: second admin\nsn: x\nuid: admin\n")
    assert done.returncode != 0 and "Constraint violation (19)" in done.stderr, done
    # An alias and a user of one local part in one domain: refused by slapd too (both carry mail).
    done = modify(hub, GLOBAL, f"dn: mailAlias=alice,dc={A},{BASE}\nchangetype: add\nobjectClass: mailAlias\n"
                               f"mailAlias: alice\ndc: {A}\nmail: alice@{A}\nmailAliasedName: bob@{A}\n")
    assert done.returncode != 0 and "Constraint violation (19)" in done.stderr, done
    # uid repeats across domains by design (postmaster@ every domain): still allowed.
    assert hub.run(GLOBAL, "user", "add", f"carol@{A}", "--no-password").rc == 0
    # The CLI: an address another tool gave to an entry elsewhere is refused with slapd's reason.
    done = modify(hub, GLOBAL, f"dn: mailAlias=elsewhere,dc={B},{BASE}\nchangetype: add\n"
                               f"objectClass: mailAlias\nmailAlias: elsewhere\ndc: {B}\nmail: newcomer@{A}\n"
                               f"mailAliasedName: dave@{B}\n")
    assert done.returncode == 0, done.stderr
    before = hub.snapshot()
    result = hub.run(GLOBAL, "--json", "user", "add", f"newcomer@{A}", "--no-password")
    assert result.rc == exitcodes.EX_REFUSED, result
    error = result.json()
    assert error["kind"] == "exists"  # type: ignore[index]
    assert error["error"] == (f"cannot add users in dc={A},{BASE}: another entry already has the address "  # type: ignore[index]
                              f"(or login) of user newcomer@{A}; slapd allows each only once")
    assert hub.snapshot() == before


# -- integrity: slapo-refint --------------------------------------------------------------------------
def members(hub: Hub, group: str) -> list[str]:
    for dn, attributes in slapcat(hub, BASE):
        if dn.lower() == group.lower():
            return sorted(v.decode().lower() for v in attributes.get("member", []))
    return []


def test_removed_or_renamed_users_leave_no_stale_admin_membership(hub: Hub) -> None:
    group = f"cn=admin,dc={A},{BASE}"
    pm = hub.who(PM_COM).dn.lower()
    # Raw LDAP: a member renamed (modrdn) and removed.
    assert hub.run(GLOBAL, "user", "add", f"raw-admin@{A}", "--no-password", "--admin").rc == 0
    done = modify(hub, GLOBAL, f"dn: uid=raw-admin,dc={A},{BASE}\nchangetype: modrdn\n"
                               "newrdn: uid=raw-renamed\ndeleteoldrdn: 1\n")
    assert done.returncode == 0, done.stderr
    assert members(hub, group) == sorted([pm, f"uid=raw-renamed,dc={A},{BASE}"])
    done = ldap(hub, "ldapdelete", GLOBAL, f"uid=raw-renamed,dc={A},{BASE}")
    assert done.returncode == 0, done.stderr
    assert members(hub, group) == [pm]
    # The CLI: rename and remove an admin; the group follows once, and the answer says "admin".
    assert hub.run(GLOBAL, "user", "add", f"cli-admin@{A}", "--no-password", "--admin").rc == 0
    renamed = hub.run(GLOBAL, "--json", "user", "rename", f"cli-admin@{A}", f"cli-renamed@{A}")
    assert renamed.rc == 0, renamed
    assert renamed.json()["admin"] is True  # type: ignore[index]
    assert members(hub, group) == sorted([pm, f"uid=cli-renamed,dc={A},{BASE}"])
    assert hub.run(GLOBAL, "user", "remove", f"cli-renamed@{A}").rc == 0
    assert members(hub, group) == [pm]
    # The last member of a group, removed by raw LDAP: groupOfNames keeps a placeholder.
    done = ldap(hub, "ldapdelete", GLOBAL, f"uid=boss,dc=b.example,{BASE}")
    assert done.returncode == 0, done.stderr
    assert members(hub, f"cn=admin,dc=b.example,{BASE}") == [f"cn=nobody,{BASE}"]
