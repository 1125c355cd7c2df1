"""Issue 18, a new admin's first hour: the CLI against a real slapd (and Exim where it decides).

Each test names the item of the issue it proves.  The hub (slapd with the
project's ACLs and the demo data, a config, password files) is test_admin's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, hook_config, hub_exim, needs_root, service_config
from mailrouter import exitcodes
from mailrouter.admin import cli as admin_cli
from mailrouter.admin.cli import completion
from mailrouter.admin.normalise import SETTINGS
from mailrouter.directory import Session
from mailrouter.sandbox.exim import Exim, make_readable_dir
from test_admin import GLOBAL, PM_COM, PM_ORG, Hub, assert_refused
from test_admin import hub as hub  # noqa: F401 - the fixture, shared
from test_auth import slapcat_password
from test_web import LOGIN, Browser, Web
from test_web import web as web  # noqa: F401 - the fixture, shared

BASE = "o=top"


def as_global(h: Hub) -> Session:
    account = h.who(GLOBAL)
    return Session(service_config(h.slapd, h.data), account.dn, account.password)


def write_mailbox(h: Hub, address: str, data: bytes) -> Path:
    mail = h.workdir / "mail"
    mail.mkdir(exist_ok=True)
    path = mail / address
    path.write_bytes(data)
    return path


# -- 1. pointing the CLI at a config -------------------------------------------------------------
def test_item1_config_from_the_environment_and_a_clear_error(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = hub.who(PM_COM)
    monkeypatch.setenv("MAILROUTER_CONFIG", str(hub.config))
    monkeypatch.setenv("MAILROUTER_BIND_DN", account.dn)
    monkeypatch.setenv("MAILROUTER_PASSWORD_FILE", str(hub.password_files[PM_COM]))
    done = subprocess.run([sys.executable, "-m", "mailrouter.admin", "--json", "user", "list", "example.com"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done
    assert "alice@example.com" in [row["address"] for row in json.loads(done.stdout)]
    # Without any config: the message says how to name one.
    monkeypatch.delenv("MAILROUTER_CONFIG")
    result = hub.run(None, "domain", "list", config=Path("/nonexistent/mailrouter.toml"))
    assert_refused(result, "--config FILE", "MAILROUTER_CONFIG")


# -- 3. test address --exim with a sandbox-style Exim config ----------------------------------------
@needs_root
def test_item3_exim_config_wrapper_and_remote_addresses(hub: Hub) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-friction-bt-"))
    try:
        workdir.chmod(0o755)
        spool = make_readable_dir(workdir / "mail")
        conf = hook_config(workdir / "mailrouter.toml", hub.data, [hub.slapd.uri], spool)
        exim = hub_exim(workdir, conf).prepare()  # writes the wrapper, as the sandbox does
        # The generated wrapper defines every macro itself: no "macro already defined".
        for address, expected in (("team@example.com", "<-- team@example.com"),
                                  ("friend@remote.example", "router = remote")):
            result = hub.run(None, "--json", "test", "address", address, "--exim-config", str(exim.wrapper),
                             config=conf)
            assert result.rc == 0, result
            tested = result.json()["exim"]  # type: ignore[index]
            assert tested["rc"] == 0 and tested["meaning"] == "routed", tested
            assert expected in tested["output"]
        # The shipped config alone routes remote mail by DNS: unrouteable here, and said why.
        result = hub.run(None, "--json", "test", "address", "friend@remote.example", "--exim-config",
                         str(ROOT / "exim" / "mailrouter.conf"), config=conf)
        info = result.json()
        assert info["exim"]["rc"] == 2 and "Unrouteable" in info["exim"]["output"]  # type: ignore[index]
        assert "by DNS" in info["note"] and "MAILROUTER_RELAY_HOST" in info["note"]  # type: ignore[index]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- 4. user show: the mailbox delivery really uses ------------------------------------------------
def test_item4_user_show_gives_the_delivery_path(hub: Hub) -> None:
    with as_global(hub) as session:
        session.modify(f"uid=bob,dc=example.com,{BASE}", {"mailMessageStore": ("replace", ["/etc/evil"])})
    shown = hub.run(PM_COM, "--json", "user", "show", "bob@example.com").json()
    assert shown["mailbox"] == str(hub.workdir / "mail" / "bob@example.com")  # type: ignore[index]
    assert shown["mail_message_store"] == "/etc/evil"  # type: ignore[index]
    assert shown["mailbox_format"] == "mbox"  # type: ignore[index]


# -- 5. one JSON shape ------------------------------------------------------------------------------
def test_item5_json_errors_numbers_quota_and_names(hub: Hub) -> None:
    refused = hub.run(PM_COM, "--json", "user", "show", "nobody@example.com")
    assert refused.rc == exitcodes.EX_REFUSED
    assert refused.json() == {"error": "no such user nobody@example.com", "code": 1, "kind": "not_found",
                              "field": None}
    usage = hub.run(PM_COM, "--json", "user", "frobnicate")
    assert usage.rc == exitcodes.EX_USAGE and usage.json()["code"] == 2  # type: ignore[index]
    assert usage.json()["kind"] == "usage"  # type: ignore[index]

    write_mailbox(hub, "carol@example.org", b"x" * 3000)
    shown = hub.run(PM_ORG, "--json", "user", "show", "carol@example.org").json()
    assert shown["uid"] == 8 and shown["gid"] == 8  # type: ignore[index]
    assert shown["quota"] == {"limit": "10M", "limit_bytes": 10 << 20, "used_bytes": 3000}  # type: ignore[index]
    listed = hub.run(PM_ORG, "--json", "user", "list", "example.org").json()
    carol = next(row for row in listed if row["address"] == "carol@example.org")  # type: ignore[union-attr]
    assert carol["quota"]["used_bytes"] == 3000
    table = hub.run(PM_ORG, "user", "list", "example.org").out
    assert "10M, 2.9K used (0%)" in table

    auth = hub.run(None, "--json", "test", "auth", "carol@example.org", "--secret-file",
                   str(hub.password_files["carol@example.org"]))
    assert auth.rc == 0 and auth.json()["ok"] is True  # type: ignore[index]
    admins = hub.run(PM_ORG, "--json", "admin", "list").json()
    assert admins["admins"] == ["admin"] and admins["admin_dns"] == [f"uid=admin,{BASE}"]  # type: ignore[index]

    # People are addresses (or names) everywhere; a DN only under a key that says so.
    def misplaced_dns(value: object, key: str = "") -> list[str]:
        if isinstance(value, dict):
            return [found for k, v in value.items() for found in misplaced_dns(v, k)]
        if isinstance(value, list):
            return [found for item in value for found in misplaced_dns(item, key)]
        is_dn = isinstance(value, str) and value.endswith(f",{BASE}")
        return [f"{key}={value}"] if is_dn and not key.endswith(("dn", "dns")) else []

    outputs = [
        hub.run(GLOBAL, "--json", *argv).json()
        for argv in (("domain", "show", "example.org"), ("domain", "list", "--counts"), ("user", "list"),
                     ("user", "show", "carol@example.org"), ("admin", "list", "example.org"),
                     ("admin", "grant", "dave@example.org"), ("admin", "revoke", "dave@example.org"),
                     ("user", "add", "shape@example.org", "--no-password", "--admin"),
                     ("alias", "show", "default@example.org"), ("user", "remove", "shape@example.org"))
    ]
    assert misplaced_dns(outputs) == []


# -- 6. help ------------------------------------------------------------------------------------------
def _leaves(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    children = completion._subcommands(parser)
    if not children:
        yield path, parser
    for name, child in children.items():
        yield from _leaves(child, f"{path} {name}".strip())


def test_item6_every_argument_is_documented() -> None:
    parser = admin_cli.build_parser()
    undocumented = []
    for path, leaf in _leaves(parser):
        for action in leaf._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                undocumented.append(f"{path}: {action.dest}")
    assert undocumented == []
    leaves = dict(_leaves(parser))
    quota_help = next(a.help for a in leaves["user add"]._actions if a.dest == "quota")
    assert quota_help is not None and "32M" in quota_help and "0 = unlimited" in quota_help
    name_help = next(a.help for a in leaves["setting set"]._actions if a.dest == "name")
    assert name_help is not None and all(name in name_help for name in SETTINGS)


def test_item6_completion_from_the_parser(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    result = subprocess.run([sys.executable, "-m", "mailrouter.admin", "completion", "bash"],
                            capture_output=True, text=True, timeout=60, check=False, env={
                                **os.environ, "MAILROUTER_CONFIG": "/nonexistent"})  # needs no config
    assert result.returncode == 0, result
    script.write_text(result.stdout, encoding="utf-8")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 'mailrouter-admin() { :; }; _mailrouter_admin; printf "%s\\n" "${COMPREPLY[@]}"')
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.split()

    assert complete("mailrouter-admin", "qu") == ["queue"]
    assert complete("mailrouter-admin", "user", "re") == ["remove", "rename"]
    assert complete("mailrouter-admin", "--config", "x.toml", "user", "add", "a@b.example", "--qu") == [
        "--quota"
    ]
    assert complete("mailrouter-admin", "setting", "get", "host") == ["host_accept_relay"]


# -- 7. messages that mislead -----------------------------------------------------------------------
def test_item7_disabled_user_is_named_by_the_users_router(hub: Hub) -> None:
    assert hub.run(PM_ORG, "user", "add", "sleepy@example.org", "--no-password", "--disabled").rc == 0
    routed = hub.run(None, "--json", "test", "address", "sleepy@example.org").json()
    assert routed["router"] == "users" and routed["refused_by"] == "catchall"  # type: ignore[index]
    assert "the account is disabled" in routed["outcome"]  # type: ignore[index]


@dataclass
class EximHub:
    exim: Exim
    spool: Path


@pytest.fixture(scope="module")
def exim_hub(hub: Hub) -> Iterator[EximHub]:
    """The project's Exim (delivering through mailrouter-deliver) on the hub's slapd."""
    if os.geteuid() != 0:
        pytest.skip("needs root (Exim)")
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-friction-exim-"))
    try:
        workdir.chmod(0o755)
        spool = make_readable_dir(workdir / "mail", group="mail")
        spool.chmod(0o2775)
        conf = hook_config(workdir / "mailrouter.toml", hub.data, [hub.slapd.uri], spool)
        with hub_exim(workdir, conf) as exim:
            yield EximHub(exim, spool)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_item7_too_big_for_the_quota_is_logged_plainly(hub: Hub, exim_hub: EximHub) -> None:
    assert hub.run(PM_COM, "user", "add", "tiny@example.com", "--no-password", "--quota", "200").rc == 0
    message = "Subject: big\n\n" + "x" * 2000 + "\n"
    done = exim_hub.exim.deliver(message, "tiny@example.com", sender="someone@client.example")
    assert done.returncode == 0, done.output
    log = exim_hub.exim.main_log()
    bounced = [line for line in log.splitlines() if "** tiny@example.com" in line]
    assert bounced, log
    assert "exceeds the whole quota" in log and "returned 100" in bounced[0], log
    assert "could mean" not in log, log


# -- 8. mistakes that used to pass silently ------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ("alias", "add", "self@example.com", "self@example.com"),
    ("alias", "set", "team@example.com", "alice@example.com", "team@example.com"),
    ("catchall", "set", "example.com", "nobody-here@example.com"),
])
def test_item8_self_loops_are_refused(hub: Hub, argv: tuple[str, ...]) -> None:
    before = hub.snapshot()
    assert_refused(hub.run(PM_COM, *argv), "alias loop")
    assert hub.snapshot() == before


def test_item8_mutual_loops_are_refused(hub: Hub) -> None:
    assert hub.run(PM_COM, "alias", "add", "ping@example.com", "pong@example.com").rc == 0
    before = hub.snapshot()
    result = hub.run(PM_COM, "--json", "alias", "add", "pong@example.com", "ping@example.com")
    assert result.rc == exitcodes.EX_REFUSED
    error = result.json()
    assert error["kind"] == "conflict" and error["field"] == "targets"  # type: ignore[index]
    assert "pong@example.com -> ping@example.com -> pong@example.com" in error["error"]  # type: ignore[index]
    assert hub.snapshot() == before
    # An unknown local part of a domain with a catch-all goes to the catch-all: no loop
    # unless the catch-all leads back (example.org's goes to carol).
    assert hub.run(GLOBAL, "alias", "add", "fwd@example.org", "unknown-x@example.org").rc == 0


def test_item8_add_target_closing_a_loop_is_refused(hub: Hub) -> None:
    assert hub.run(PM_COM, "alias", "add", "first@example.com", "second@example.com").rc == 0
    assert hub.run(PM_COM, "alias", "add", "second@example.com", "bob@example.com").rc == 0
    before = hub.snapshot()
    assert_refused(hub.run(PM_COM, "alias", "add-target", "second@example.com", "first@example.com"),
                   "alias loop: second@example.com -> first@example.com -> second@example.com")
    assert hub.snapshot() == before


def test_item8_an_address_is_a_user_or_an_alias_never_both(hub: Hub) -> None:
    """Issue 17: our writers refuse the second entry for one address, with a clear
    message (slapd's slapo-unique would refuse it too, but less clearly)."""
    before = hub.snapshot()
    result = hub.run(PM_COM, "--json", "user", "add", "team@example.com", "--no-password")
    assert result.rc == exitcodes.EX_REFUSED, result
    error = result.json()
    assert error["kind"] == "conflict" and error["field"] == "address"  # type: ignore[index]
    assert error["error"] == ("team@example.com is already an alias: an address is either a user or an "  # type: ignore[index]
                              "alias, not both (remove alias team@example.com first)")
    result = hub.run(PM_COM, "--json", "alias", "add", "bob@example.com", "alice@example.com")
    assert result.rc == exitcodes.EX_REFUSED, result
    assert result.json()["error"] == ("bob@example.com is already a user: an address is either a user or "  # type: ignore[index]
                                      "an alias, not both (remove user bob@example.com first)")
    assert hub.run(PM_COM, "alias", "set", "bob@example.com", "alice@example.com").rc == exitcodes.EX_REFUSED
    assert hub.snapshot() == before


def test_item8_user_remove_says_where_the_mailbox_is(hub: Hub) -> None:
    assert hub.run(PM_COM, "user", "add", "leaver@example.com", "--no-password").rc == 0
    path = write_mailbox(hub, "leaver@example.com", b"From x\n\nold mail\n")
    result = hub.run(PM_COM, "user", "remove", "leaver@example.com")
    assert result.rc == 0, result
    assert f"its mailbox {path} (17 bytes) was left on disk" in result.out
    assert path.exists()


@needs_root
def test_item8_user_passwd_uses_the_configured_scheme(hub: Hub) -> None:
    secret = hub.secret("schemed", "Schemed-Pass-1")
    assert hub.run(PM_COM, "user", "add", "schemed@example.com", "--new-password-file", str(secret)).rc == 0
    dn = f"uid=schemed,dc=example.com,{BASE}"
    assert slapcat_password(hub.slapd, dn).startswith("{SSHA}")  # the test config's auth.password_scheme
    new = hub.secret("schemed-2", "Schemed-Pass-2")
    assert hub.run(PM_COM, "user", "passwd", "schemed@example.com", "--new-password-file", str(new)).rc == 0
    assert slapcat_password(hub.slapd, dn).startswith("{SSHA}")  # not slapd's password-hash ({ARGON2})
    with hub.directory() as directory:
        assert directory.check_password(dn, "Schemed-Pass-2")


def test_item8_disabling_twice_changes_nothing(hub: Hub) -> None:
    assert hub.run(PM_COM, "user", "add", "twice@example.com", "--no-password").rc == 0
    first = hub.run(PM_COM, "--json", "user", "disable", "twice@example.com").json()
    assert first["changed"] is True  # type: ignore[index]
    before = hub.snapshot()
    again = hub.run(PM_COM, "user", "disable", "twice@example.com")
    assert again.rc == 0 and again.out.strip() == "twice@example.com is already disabled"
    assert hub.snapshot() == before


# -- 9. everyday commands ------------------------------------------------------------------------------
def test_item9_user_list_across_domains(hub: Hub) -> None:
    everyone = [row["address"] for row in hub.run(GLOBAL, "--json", "user", "list").json()]  # type: ignore[union-attr]
    assert {"alice@example.com", "carol@example.org"} <= set(everyone) and everyone == sorted(everyone)
    # A domain admin sees their own domain only (slapd hides the others).
    theirs = {row["address"] for row in hub.run(PM_ORG, "--json", "user", "list").json()}  # type: ignore[union-attr]
    assert "carol@example.org" in theirs and not any(a.endswith("@example.com") for a in theirs)
    page = hub.run(GLOBAL, "--json", "user", "list", "--contains", "postmaster", "--limit", "1").json()
    matching = hub.run(GLOBAL, "--json", "user", "list", "--contains", "postmaster").json()
    postmasters = [row["address"] for row in matching]  # type: ignore[union-attr]
    assert page["total"] == len(postmasters) > 1  # type: ignore[index]
    assert [r["address"] for r in page["items"]] == postmasters[:1]  # type: ignore[index]


def test_item9_user_rename(hub: Hub) -> None:
    assert hub.run(PM_ORG, "user", "add", "oldname@example.org", "--no-password", "--admin").rc == 0
    assert hub.run(PM_ORG, "alias", "add", "desk@example.org", "oldname@example.org",
                   "dave@example.org").rc == 0
    mailbox = write_mailbox(hub, "oldname@example.org", b"From x\n\nkept\n")
    result = hub.run(PM_ORG, "--json", "user", "rename", "oldname@example.org", "newname@example.org")
    assert result.rc == 0, result
    info = result.json()
    assert info["aliases_updated"] == ["desk@example.org"] and info["admin"] is True  # type: ignore[index]
    assert info["mailbox"]["moved"] is True  # type: ignore[index]
    assert not mailbox.exists()
    assert (mailbox.parent / "newname@example.org").read_bytes() == b"From x\n\nkept\n"
    with hub.directory() as directory:
        assert directory.user("oldname", "example.org") is None
        renamed = directory.user("newname", "example.org")
        assert renamed is not None and renamed.active
        desk = directory.alias("desk", "example.org")
        assert desk is not None and desk.targets == ("newname@example.org", "dave@example.org")
    shown = hub.run(PM_ORG, "--json", "user", "show", "newname@example.org").json()
    assert shown["domain_admin"] is True and shown["name"] == "newname@example.org"  # type: ignore[index]
    before = hub.snapshot()
    assert_refused(hub.run(PM_ORG, "user", "rename", "newname@example.org", "x@example.com"),
                   "keeps the domain")
    assert_refused(hub.run(PM_ORG, "user", "rename", "newname@example.org", "carol@example.org"),
                   "already exists")
    assert hub.snapshot() == before


@needs_root
def test_item9_domain_disable_refuses_mail_and_logins(hub: Hub, exim_hub: EximHub) -> None:
    session = ["EHLO client.example", "MAIL FROM:<someone@client.example>", "RCPT TO:<carol@example.org>",
               "QUIT"]
    carol = str(hub.password_files["carol@example.org"])
    secret = ["test", "auth", "carol@example.org", "--secret-file", carol]
    assert "250 Accepted" in exim_hub.exim.host_test(session).output
    # A domain admin cannot suspend (or lift the suspension of) their own domain.
    before = hub.snapshot()
    assert_refused(hub.run(PM_ORG, "domain", "disable", "example.org"), "not allowed to disable domain")
    assert hub.snapshot() == before
    result = hub.run(GLOBAL, "domain", "disable", "example.org")
    assert result.rc == 0 and "is now disabled" in result.out
    try:
        answer = exim_hub.exim.host_test(session).output
        assert "550 5.2.1 mailbox disabled" in answer, answer
        assert hub.run(None, *secret).rc == exitcodes.EX_REFUSED
        routed = hub.run(None, "--json", "test", "address", "carol@example.org").json()
        assert routed["domain_enabled"] is False and "its domain is disabled" in routed["outcome"]  # type: ignore[index]
        assert_refused(hub.run(PM_ORG, "domain", "enable", "example.org"), "not allowed to enable domain")
        with hub.directory() as directory:
            assert directory.user("carol", "example.org") is not None  # the data is kept
    finally:
        assert hub.run(GLOBAL, "domain", "enable", "example.org").rc == 0
    assert hub.run(None, *secret).rc == 0
    assert "250 Accepted" in exim_hub.exim.host_test(session).output


def test_item9_disabled_domain_refuses_web_logins(web: Web) -> None:
    """The web interface refuses the people of a disabled domain as it refuses a wrong password."""
    assert web.login("user_a").get("/me").status_code == 200
    with Session(service_config(web.slapd, web.data), web.data.account(GLOBAL).dn,
                 web.data.account(GLOBAL).password) as session:
        session.modify(f"dc=example.com,{BASE}", {"mailAccountStatus": ("replace", ["disabled"])})
        try:
            refused = Browser(web.client()).login(LOGIN["user_a"], web.passwords["user_a"])
            assert refused.status_code != 302 and "/me" not in refused.headers.get("Location", "")
            assert web.login("global").get("/domains").status_code == 200  # a global admin is no user of it
        finally:
            session.modify(f"dc=example.com,{BASE}", {"mailAccountStatus": ("replace", ["active"])})
    assert web.login("user_a").get("/me").status_code == 200
