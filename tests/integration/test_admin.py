"""mailrouter-admin against a real slapd with the project's ACLs.

The directory, not the tool, decides who may do what: every test binds as a
real actor of the demo data (global admin, domain admin, user) and checks both
the exit code and what LDAP holds afterwards.  Refusals and invalid input must
leave the directory exactly as it was (compared with a full snapshot).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import BIN, ROOT, VENV_ENV, hook_config, hub_exim, own_copy, service_config, start_slapd
from dataset import Dataset
from mailrouter import exitcodes
from mailrouter.admin import cli as admin_cli
from mailrouter.directory import Directory, Session
from mailrouter.sandbox import demo
from mailrouter.sandbox.slapd import Slapd, free_port

BASE = "o=top"
GLOBAL = "global-admin"
PM_COM = "postmaster@example.com"
PM_ORG = "postmaster@example.org"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@dataclass
class Hub:
    """A writable slapd with the demo data, a config file and one password file per account."""

    slapd: Slapd
    data: demo.DemoDirectory
    workdir: Path
    config: Path
    password_files: dict[str, Path] = field(default_factory=dict)

    def who(self, actor: str) -> demo.Account:
        return self.data.account(actor)

    def secret(self, name: str, value: str) -> Path:
        path = self.workdir / f"secret-{name}"
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    def run(self, actor: str | None, *argv: str, config: Path | None = None) -> Result:
        """``mailrouter-admin`` through its ``main(argv)``, as ``actor``."""
        args = ["--config", str(config or self.config)]
        if actor is not None:
            args += ["--bind-dn", self.who(actor).dn, "--password-file", str(self.password_files[actor])]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = admin_cli.main([*args, *argv])
        return Result(rc, out.getvalue(), err.getvalue())

    def directory(self) -> Directory:
        return Directory(service_config(self.slapd, self.data))

    def snapshot(self) -> list[tuple[str, list[tuple[str, list[str]]]]]:
        """Every entry with every readable attribute, as the global admin sees it."""
        account = self.who(GLOBAL)
        with Session(service_config(self.slapd, self.data), account.dn, account.password) as session:
            found = session.search(BASE, "(objectClass=*)", ["*"], subtree=True)
        return sorted(
            (dn.lower(), sorted((k.lower(), sorted(map(str, v))) for k, v in attrs.items()))
            for dn, attrs in found
        )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Hub]:
    data = own_copy(dataset)  # the tests add accounts to it
    workdir = tmp_path_factory.mktemp("admin")
    server = start_slapd(workdir / "slapd", data)
    try:
        config = hook_config(workdir / "mailrouter.toml", data, [server.uri], workdir / "mail",
                             password_scheme="ssha")
        hub = Hub(server, data, workdir, config)
        for account in data.accounts:
            key = account.address or account.role
            hub.password_files[key] = hub.secret(key.replace("@", "_at_"), account.password)
        hub.password_files[GLOBAL] = hub.password_files["global-admin"]
        yield hub
    finally:
        server.stop()


def assert_refused(result: Result, *fragments: str) -> None:
    assert result.rc == exitcodes.EX_REFUSED, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err  # one line, never a traceback
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- the delegation story --------------------------------------------------------------------
def test_delegation_story_end_to_end(hub: Hub) -> None:
    boss_pw = hub.secret("boss", "Boss-Secret-1")
    clerk_pw = hub.secret("clerk", "Clerk-Secret-1")

    # The global admin creates a domain and its admin (user add + grant, one step for them).
    assert hub.run(GLOBAL, "domain", "add", "shop.example", "--description", "The shop").rc == 0
    result = hub.run(GLOBAL, "user", "add", "boss@shop.example", "--new-password-file", str(boss_pw),
                     "--admin")
    assert result.rc == 0, result
    hub.password_files["boss@shop.example"] = boss_pw
    hub.data.accounts.append(demo.Account(f"uid=boss,dc=shop.example,{BASE}", "Boss-Secret-1",
                                          "shop-admin", "boss@shop.example"))
    shown = hub.run(GLOBAL, "--json", "domain", "show", "shop.example").json()
    assert shown["admins"] == ["boss@shop.example"]  # type: ignore[index]
    assert shown["admin_dns"] == [f"uid=boss,dc=shop.example,{BASE}"]  # type: ignore[index]

    # The domain admin creates users and aliases in their own domain.
    boss = "boss@shop.example"
    result = hub.run(boss, "user", "add", "clerk@shop.example", "--new-password-file", str(clerk_pw),
                     "--quota", "32M", "--name", "Clerk Kent")
    assert result.rc == 0, result
    assert hub.run(boss, "alias", "add", "sales@shop.example", "clerk@shop.example",
                   "boss@shop.example").rc == 0
    assert hub.run(boss, "catchall", "set", "shop.example", "boss@shop.example").rc == 0
    assert hub.run(boss, "alias", "remove-target", "sales@shop.example", "boss@shop.example").rc == 0
    with hub.directory() as directory:
        clerk = directory.user("clerk", "shop.example")
        assert clerk is not None and clerk.quota == "32M" and clerk.active
        sales = directory.alias("sales", "shop.example")
        assert sales is not None and sales.targets == ("clerk@shop.example",)
        catchall = directory.catchall("shop.example")
        assert catchall is not None and catchall.targets == ("boss@shop.example",)
        assert directory.check_password(clerk.dn, "Clerk-Secret-1")

    # ... and is refused in another domain, with a clear one-line message and nothing written.
    before = hub.snapshot()
    # Tenants are isolated: to shop.example's admin, example.org does not exist.
    assert_refused(hub.run(boss, "user", "add", "intruder@example.org", "--no-password"),
                   "no such domain example.org")
    assert_refused(hub.run(boss, "alias", "add", "grab@example.org", "boss@shop.example"),
                   "no such domain example.org")
    # Tenants are isolated: slapd hides example.org's users from shop.example's admin.
    assert_refused(hub.run(boss, "user", "quota", "carol@example.org", "1G"),
                   "no such user carol@example.org")
    assert_refused(hub.run(boss, "domain", "add", "evil.example"), "not allowed to add domains")
    assert_refused(hub.run(boss, "admin", "grant", "boss@shop.example", "--domain", "example.org"),
                   "no such domain example.org")
    assert_refused(hub.run(boss, "setting", "add", "host_accept_relay", "0.0.0.0/0"),
                   "not allowed to change system settings")
    # Removing their own domain: slapd refuses the domain entry before anything below it goes.
    assert_refused(hub.run(boss, "domain", "remove", "shop.example", "--recursive"),
                   "not allowed to remove domain shop.example")
    assert hub.snapshot() == before

    # A user changes their own password, and cannot change their own quota.
    hub.password_files["clerk@shop.example"] = clerk_pw
    hub.data.accounts.append(demo.Account(f"uid=clerk,dc=shop.example,{BASE}", "Clerk-Secret-1",
                                          "shop-user", "clerk@shop.example"))
    new_pw = hub.secret("clerk-new", "Clerk-Secret-2")
    result = hub.run("clerk@shop.example", "user", "passwd", "clerk@shop.example",
                     "--new-password-file", str(new_pw))
    assert result.rc == 0, result
    with hub.directory() as directory:
        assert directory.check_password(f"uid=clerk,dc=shop.example,{BASE}", "Clerk-Secret-2")
        assert not directory.check_password(f"uid=clerk,dc=shop.example,{BASE}", "Clerk-Secret-1")
    hub.password_files["clerk@shop.example"] = new_pw
    hub.data.account("clerk@shop.example").password = "Clerk-Secret-2"
    assert_refused(hub.run("clerk@shop.example", "user", "quota", "clerk@shop.example", "1G"),
                   "not allowed to change the quota of clerk@shop.example")
    assert_refused(hub.run("clerk@shop.example", "user", "passwd", "boss@shop.example",
                           "--new-password-file", str(new_pw)),
                   "not allowed to change the password of boss@shop.example")
    with hub.directory() as directory:
        clerk = directory.user("clerk", "shop.example")
        assert clerk is not None and clerk.quota == "32M"
        assert directory.check_password(f"uid=boss,dc=shop.example,{BASE}", "Boss-Secret-1")

    # The domain admin disables and removes; the global admin finally removes the domain.
    assert hub.run(boss, "user", "disable", "clerk@shop.example").rc == 0
    with hub.directory() as directory:
        clerk = directory.user("clerk", "shop.example")
        assert clerk is not None and not clerk.active
    routed = hub.run(None, "--json", "test", "address", "clerk@shop.example").json()
    assert routed["router"] == "users" and routed["outcome"].startswith("refused")  # type: ignore[index]
    assert_refused(hub.run(GLOBAL, "domain", "remove", "shop.example"), "still has")
    result = hub.run(GLOBAL, "domain", "remove", "shop.example", "--recursive")
    assert result.rc == 0, result
    with hub.directory() as directory:
        assert not directory.is_local_domain("shop.example")
        assert directory.user("clerk", "shop.example") is None


def test_refusal_through_the_bin_wrapper(hub: Hub) -> None:
    """What an admin types from a checkout: bin/mailrouter-admin, a real subprocess."""
    before = hub.snapshot()
    argv = [
        str(ROOT / "bin" / "mailrouter-admin"), "--config", str(hub.config),
        "--bind-dn", PM_COM, "--password-file", str(hub.password_files[PM_COM]),
        "user", "add", "intruder@example.com", "--no-password",
    ]
    user = "alice@example.com"  # a plain user of the domain: slapd refuses the add
    argv[argv.index("--bind-dn") + 1] = user
    argv[argv.index("--password-file") + 1] = str(hub.password_files[user])
    env = {**os.environ, **VENV_ENV}  # the wrapper runs the venv under test
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "mailrouter-admin: not allowed to add users in dc=example.com,o=top "
        "(bound as uid=alice,dc=example.com,o=top)"
    ]
    assert hub.snapshot() == before
    # And a success through the same wrapper, with --json for scripts.
    done = subprocess.run(
        [*argv[:7], "--json", "user", "list", "example.com"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert done.returncode == 0, done
    assert "alice@example.com" in [row["address"] for row in json.loads(done.stdout)]


def test_wrapper_without_a_venv_runs_the_checkout(tmp_path: Path) -> None:
    """The Python given has the package installed too: only the module file that was
    imported tells the checkout's hooks/ from the install.  A sitecustomize on
    PYTHONPATH (which the wrapper must keep) reports it at exit."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(\n"
        "    'imported ' + str(getattr(sys.modules.get('mailrouter'), '__file__', None)) + '\\n'))\n"
    )
    env = {**os.environ, "MAILROUTER_VENV": str(tmp_path / "no-venv"),
           "PYTHON": sys.executable, "PYTHONPATH": str(probe)}
    done = subprocess.run([str(ROOT / "bin" / "mailrouter-admin"), "--help"], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done
    assert "mailrouter-admin" in done.stdout
    assert done.stderr.splitlines()[-1] == f"imported {ROOT / 'hooks' / 'mailrouter' / '__init__.py'}"


def test_admin_grant_and_revoke_manage_the_group(hub: Hub) -> None:
    assert hub.run(GLOBAL, "domain", "add", "grants.example").rc == 0
    for local in ("ann", "ben"):
        assert hub.run(GLOBAL, "user", "add", f"{local}@grants.example", "--no-password").rc == 0
    group = f"cn=admin,dc=grants.example,{BASE}"

    def members() -> list[str] | None:
        with hub.directory() as directory:
            found = directory.read(group, "groupOfNames", ["member"])
        return None if found is None else sorted(str(m) for m in found["member"])

    assert members() is None
    assert hub.run(GLOBAL, "admin", "grant", "ann@grants.example").rc == 0  # creates the group
    assert members() == [f"uid=ann,dc=grants.example,{BASE}"]
    assert hub.run(GLOBAL, "admin", "grant", "ann@grants.example").rc == 0  # idempotent
    assert hub.run(GLOBAL, "admin", "grant", "ben@grants.example").rc == 0
    assert members() == [f"uid=ann,dc=grants.example,{BASE}", f"uid=ben,dc=grants.example,{BASE}"]
    listed = hub.run(GLOBAL, "--json", "admin", "list", "grants.example").json()
    assert len(listed["admins"]) == 2  # type: ignore[index]
    assert hub.run(GLOBAL, "admin", "revoke", "ann@grants.example").rc == 0
    assert members() == [f"uid=ben,dc=grants.example,{BASE}"]
    assert hub.run(GLOBAL, "admin", "revoke", "ben@grants.example").rc == 0  # the last: group goes
    assert members() is None
    assert_refused(hub.run(GLOBAL, "admin", "grant", "nobody@grants.example"), "no such user")
    # User removal takes the admin membership with it.
    assert hub.run(GLOBAL, "admin", "grant", "ann@grants.example").rc == 0
    assert hub.run(GLOBAL, "user", "remove", "ann@grants.example").rc == 0
    assert members() is None


def test_global_admin_grant_create_and_revoke(hub: Hub) -> None:
    password = hub.secret("ops", "Ops-Secret-1")
    result = hub.run(GLOBAL, "admin", "grant", "--global", "ops", "--create", "--new-password-file",
                     str(password))
    assert result.rc == 0, result
    hub.password_files["ops"] = password
    hub.data.accounts.append(demo.Account(f"uid=ops,{BASE}", "Ops-Secret-1", "ops"))
    # The new global admin can now create a domain.
    assert hub.run("ops", "domain", "add", "ops.example").rc == 0
    assert hub.run(GLOBAL, "admin", "revoke", "--global", "ops").rc == 0
    assert_refused(hub.run("ops", "domain", "add", "ops2.example"), "not allowed to add domains")
    assert_refused(hub.run(PM_COM, "admin", "grant", "--global", "mallory", "--create",
                           "--new-password-file", str(password)), "not allowed")
    with hub.directory() as directory:
        assert directory.read(f"uid=mallory,{BASE}", "top", ["uid"]) is None
    assert_refused(hub.run(GLOBAL, "admin", "grant", "--global", "alice@example.com"), "not an address")


def test_failed_second_step_rolls_back_the_first(hub: Hub) -> None:
    """user add --admin: the grant fails (a stray cn=admin entry that is no
    group), so the user added just before is removed again."""
    assert hub.run(GLOBAL, "domain", "add", "rollback.example").rc == 0
    account = hub.who(GLOBAL)
    with Session(service_config(hub.slapd, hub.data), account.dn, account.password) as session:
        session.add(f"cn=admin,dc=rollback.example,{BASE}",
                    {"objectClass": ["organizationalRole"], "cn": ["admin"]})
    before = hub.snapshot()
    result = hub.run(GLOBAL, "user", "add", "boss@rollback.example", "--no-password", "--admin")
    assert_refused(result, "already exists", "undid 1 earlier change")
    assert hub.snapshot() == before


# -- validation: nothing is written ---------------------------------------------------------
# case -> (argv, what the one-line message must say)
INVALID: dict[str, tuple[tuple[str, ...], str]] = {
    "bad domain": (("domain", "add", "bad_domain!.example"), "invalid domain"),
    "bad domain label": (("domain", "add", "trail-.example"), "invalid domain"),
    "single label": (("domain", "add", "localhost"), "at least two labels"),
    "bad IDNA": (("domain", "add", "xn--zz.example"), "not a valid IDNA name"),
    "bad local part": (("user", "add", "a..b@example.com", "--no-password"), "invalid local part"),
    "slash local part": (("user", "add", "x/y@example.com", "--no-password"), "invalid local part"),
    "long local part": (("user", "add", "a" * 65 + "@example.com", "--no-password"), "1..64 octets"),
    "non-ascii local part": (("user", "add", "jörg@example.com", "--no-password"), "invalid local part"),
    "command target": (("alias", "add", "evil@example.com", "|/bin/sh -c id"), "is a command"),
    "command target with domain": (("alias", "add", "evil@example.com", "|x@example.com"), "is a command"),
    "quoted command target": (("alias", "add", "evil@example.com", '"|/bin/sh"'), "is a command"),
    "file target": (("alias", "add", "evil@example.com", "/etc/passwd"), "is a file"),
    "file target with at": (("alias", "add", "evil@example.com", "/tmp/x@example.com"), "is a file"),
    "include target": (("alias", "add", "evil@example.com", ":include:/etc/mail/list"), ":include:"),
    "fail target": (("alias", "add", "evil@example.com", ":fail: no"), "special item"),
    "bare target": (("alias", "add", "evil@example.com", "notanaddress"), "not an address"),
    "command catchall": (("catchall", "set", "example.com", "|cat"), "is a command"),
    "file add-target": (("alias", "add-target", "team@example.com", "/tmp/x"), "is a file"),
    "bad quota": (("user", "add", "q@example.com", "--no-password", "--quota", "12X"), "invalid quota"),
    "bad quota change": (("user", "quota", "alice@example.com", "lots"), "invalid quota"),
    "unknown unit quota": (("user", "quota", "alice@example.com", "1T"), "invalid quota"),
    "bad relay host": (("setting", "add", "host_accept_relay", "everyone"), "expected an IP address"),
    "unknown setting": (("setting", "set", "smarthost", "x.example"), "unknown setting"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_input_is_refused_and_nothing_written(hub: Hub, case: str) -> None:
    argv, message = INVALID[case]
    before = hub.snapshot()
    assert_refused(hub.run(GLOBAL, *argv), message)
    assert hub.snapshot() == before


def test_idna_u_label_becomes_a_label(hub: Hub) -> None:
    result = hub.run(GLOBAL, "--json", "domain", "add", "Bäcker.Example")
    assert result.rc == 0, result
    assert result.json()["domain"] == "xn--bcker-gra.example"  # type: ignore[index]
    with hub.directory() as directory:
        assert directory.is_local_domain("xn--bcker-gra.example")
    assert hub.run(GLOBAL, "user", "add", "Anna@bäcker.example", "--no-password").rc == 0
    with hub.directory() as directory:
        assert directory.user("anna", "xn--bcker-gra.example") is not None


def test_no_password_in_argv_and_usage_errors(hub: Hub) -> None:
    assert hub.run(GLOBAL, "user", "add", "x@example.com", "--password", "secret").rc == exitcodes.EX_USAGE
    assert hub.run(GLOBAL).rc == exitcodes.EX_USAGE
    assert hub.run(GLOBAL, "user", "frobnicate").rc == exitcodes.EX_USAGE
    # Nobody said who they are.
    assert hub.run(None, "user", "list", "example.com").rc == exitcodes.EX_USAGE
    # A wrong bind password is a refusal, not a traceback.
    wrong = hub.secret("wrong", "not-the-password")
    result = hub.run(None, "--bind-dn", PM_COM, "--password-file", str(wrong), "user", "list", "example.com")
    assert_refused(result, "bind as uid=postmaster,dc=example.com,o=top refused")


def test_ldap_down_exits_75(hub: Hub, tmp_path: Path) -> None:
    dead = hook_config(tmp_path / "dead.toml", hub.data, [f"ldap://127.0.0.1:{free_port()}/"], tmp_path)
    for argv in (("user", "add", "x@example.com", "--no-password"), ("domain", "list")):
        result = hub.run(GLOBAL, *argv, config=dead)
        assert result.rc == exitcodes.EX_TEMPFAIL, result
        assert "LDAP unavailable" in result.err and "Traceback" not in result.err
    result = hub.run(None, "test", "address", "alice@example.com", config=dead)
    assert result.rc == exitcodes.EX_TEMPFAIL, result


# -- settings, lists, export ---------------------------------------------------------------
def test_settings_get_set_add_remove(hub: Hub) -> None:
    assert hub.run(GLOBAL, "setting", "add", "blacklisted_hosts", "198.51.100.7", "203.0.113.0/24").rc == 0
    with hub.directory() as directory:
        assert {"192.0.2.66", "198.51.100.7", "203.0.113.0/24"} <= set(directory.setting("blacklisted_hosts"))
    assert hub.run(GLOBAL, "setting", "remove", "blacklisted_hosts", "198.51.100.7").rc == 0
    got = hub.run(GLOBAL, "--json", "setting", "get", "blacklisted_hosts").json()
    assert "198.51.100.7" not in got["values"]  # type: ignore[index]
    assert hub.run(GLOBAL, "setting", "set", "backup_mx_domains", "Backup.Example", "bücher.example").rc == 0
    with hub.directory() as directory:
        assert set(directory.setting("backup_mx_domains")) == {"backup.example", "xn--bcher-kva.example"}


def test_lists_tables_and_json(hub: Hub) -> None:
    table = hub.run(PM_ORG, "user", "list", "example.org")
    assert table.rc == 0
    assert table.out.splitlines()[0].split() == ["ADDRESS", "STATUS", "QUOTA", "FORMAT", "NAME"]
    assert "carol@example.org" in table.out
    aliases = hub.run(PM_ORG, "--json", "alias", "list", "example.org").json()
    assert {"alias": "default@example.org", "catchall": True, "status": "active",
            "targets": ["carol@example.org"]} in aliases  # type: ignore[operator]
    assert_refused(hub.run(PM_ORG, "user", "show", "nobody@example.org"), "no such user nobody@example.org")
    # The read-only service account, only when asked for: it may list, never write.
    listed = hub.run(None, "--use-service-account", "--json", "domain", "list")
    assert listed.rc == 0 and {"example.com", "example.org"} <= {r["domain"] for r in listed.json()}  # type: ignore[attr-defined,index]
    assert_refused(hub.run(None, "--use-service-account", "domain", "add", "svc.example"), "not allowed")


def test_export_ldif_of_a_domain(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "example.com.ldif"
    assert hub.run(PM_COM, "export", "ldif", "example.com", "--output", str(out)).rc == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("dn: dc=example.com,o=top\n")
    assert "dn: uid=alice,dc=example.com,o=top" in text
    assert "mailAlias: team" in text
    assert "userPassword" not in text and "dc=example.org" not in text


# -- importers ---------------------------------------------------------------------------------
def qmail_tree(root: Path, extra: dict[str, str] | None = None) -> Path:
    (root / "users").mkdir(parents=True)
    (root / "alias").mkdir()
    (root / "users" / "assign").write_text(
        "# generated by qmail-pw2u\n"
        "=joe:joe:1001:1001:/home/joe:::\n"
        "=ann:ann:1002:1002:/home/ann:::\n"
        "+ann-:ann:1002:1002:/home/ann:-::\n"
        ".\n"
        "=after:the:end:::::\n",
        encoding="utf-8",
    )
    files = {
        ".qmail-postmaster": "&joe\n",
        ".qmail-info": "# the info desk\nann\n&joe@qmail.example\n",
        ".qmail-first:last": "&ann\n",
        ".qmail-default": "&joe\n",
        ".qmail-outside": "friend@Remote.Example\n",
        **(extra or {}),
    }
    for name, text in files.items():
        (root / "alias" / name).write_text(text, encoding="utf-8")
    return root


def test_import_qmail_dry_run_apply_idempotent(hub: Hub, tmp_path: Path) -> None:
    assert hub.run(GLOBAL, "domain", "add", "qmail.example").rc == 0
    tree = qmail_tree(tmp_path / "qmail")
    before = hub.snapshot()
    dry = hub.run(GLOBAL, "--json", "import", "qmail", str(tree), "--domain", "qmail.example")
    assert dry.rc == 0, dry
    plan = dry.json()
    assert plan["apply"] is False  # type: ignore[index]
    planned = {(a["action"], a["address"]) for a in plan["actions"]}  # type: ignore[index]
    assert planned == {
        ("add user", "joe@qmail.example"),
        ("add user", "ann@qmail.example"),
        ("add alias", "postmaster@qmail.example"),
        ("add alias", "info@qmail.example"),
        ("add alias", "first.last@qmail.example"),
        ("add alias", "default@qmail.example"),
        ("add alias", "outside@qmail.example"),
    }
    assert hub.snapshot() == before  # a dry run writes nothing

    applied = hub.run(GLOBAL, "import", "qmail", str(tree), "--domain", "qmail.example", "--apply")
    assert applied.rc == 0, applied
    assert "applied 7 change(s)" in applied.out
    with hub.directory() as directory:
        assert directory.user("joe", "qmail.example") is not None
        info = directory.alias("info", "qmail.example")
        assert info is not None and info.targets == ("ann@qmail.example", "joe@qmail.example")
        first_last = directory.alias("first.last", "qmail.example")
        assert first_last is not None and first_last.targets == ("ann@qmail.example",)
        catchall = directory.catchall("qmail.example")
        assert catchall is not None and catchall.targets == ("joe@qmail.example",)
        outside = directory.alias("outside", "qmail.example")
        assert outside is not None and outside.targets == ("friend@remote.example",)

    after = hub.snapshot()
    again = hub.run(GLOBAL, "--json", "import", "qmail", str(tree), "--domain", "qmail.example", "--apply")
    assert again.rc == 0
    assert again.json()["actions"] == [] and again.json()["unchanged"] == 7  # type: ignore[index]
    assert hub.snapshot() == after

    # A changed .qmail file becomes one update, and only that.
    (tree / "alias" / ".qmail-info").write_text("&joe\n", encoding="utf-8")
    changed = hub.run(GLOBAL, "--json", "import", "qmail", str(tree), "--domain", "qmail.example", "--apply")
    assert [(a["action"], a["address"]) for a in changed.json()["actions"]] == [  # type: ignore[index]
        ("update alias", "info@qmail.example")
    ]


@pytest.mark.parametrize(
    "line", ["|/usr/bin/procmail", "./Maildir/", "/home/joe/Mailbox", "&|preline cat"]
)
def test_import_qmail_refuses_program_and_file_deliveries(hub: Hub, tmp_path: Path, line: str) -> None:
    result = hub.run(GLOBAL, "domain", "add", "qmail2.example")
    assert result.rc in (0, 1)
    tree = qmail_tree(tmp_path / "q", {".qmail-robot": f"&joe\n{line}\n"})
    before = hub.snapshot()
    result = hub.run(GLOBAL, "import", "qmail", str(tree), "--domain", "qmail2.example", "--apply")
    assert result.rc == exitcodes.EX_REFUSED, result
    # One line per bad item, then the verdict; never a traceback.
    assert result.err.splitlines()[-1].endswith("nothing imported (--skip-invalid to leave them out)")
    assert ".qmail-robot:2: alias target" in result.err and "Traceback" not in result.err
    assert hub.snapshot() == before
    # With --skip-invalid the rest goes in and the bad line is listed.
    result = hub.run(GLOBAL, "--json", "import", "qmail", str(tree), "--domain", "qmail2.example",
                     "--skip-invalid")
    assert result.rc == 0
    assert any(".qmail-robot:2" in item for item in result.json()["skipped_invalid"])  # type: ignore[index]


ALIASES = """\
# /etc/aliases
MAILER-DAEMON: postmaster
postmaster: root
root: alice@example.com,
      bob@example.com
abuse:  postmaster@example.com , "alice@example.com"
"""


def test_import_aliases_dry_run_apply_idempotent(hub: Hub, tmp_path: Path) -> None:
    assert hub.run(GLOBAL, "domain", "add", "aliases.example").rc == 0
    path = tmp_path / "aliases"
    path.write_text(ALIASES, encoding="utf-8")
    before = hub.snapshot()
    dry = hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "aliases.example")
    assert dry.rc == 0, dry
    assert "dry run: 4 change(s) planned" in dry.out
    assert "add alias root@aliases.example -> alice@example.com, bob@example.com" in dry.out
    assert hub.snapshot() == before
    assert hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "aliases.example", "--apply").rc == 0
    with hub.directory() as directory:
        daemon = directory.alias("mailer-daemon", "aliases.example")
        assert daemon is not None and daemon.targets == ("postmaster@aliases.example",)
        root = directory.alias("root", "aliases.example")
        assert root is not None and root.targets == ("alice@example.com", "bob@example.com")
    after = hub.snapshot()
    again = hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "aliases.example", "--apply")
    assert "applied 0 change(s); 4 already in place" in again.out
    assert hub.snapshot() == after


@pytest.mark.parametrize(
    "bad", ['"|/usr/bin/vacation joe"', "/var/spool/mail/archive", ":include:/etc/mail/staff", "|cat"]
)
def test_import_aliases_refuses_commands_files_includes(hub: Hub, tmp_path: Path, bad: str) -> None:
    path = tmp_path / "aliases"
    path.write_text(f"ok: alice@example.com\nbad: alice@example.com, {bad}\n", encoding="utf-8")
    before = hub.snapshot()
    result = hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "example.com", "--apply")
    assert result.rc == exitcodes.EX_REFUSED
    assert "nothing imported" in result.err and "Traceback" not in result.err
    assert hub.snapshot() == before


def test_large_import_shows_progress_and_rolls_back_on_failure(hub: Hub, tmp_path: Path) -> None:
    assert hub.run(GLOBAL, "domain", "add", "big.example").rc == 0
    path = tmp_path / "aliases"
    path.write_text("".join(f"list{n:03d}: alice@example.com\n" for n in range(40)), encoding="utf-8")
    done = hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "big.example", "--apply", "--progress")
    assert done.rc == 0, done
    assert "40/40" in done.err and "[" + "#" * 30 + "]" in done.err

    # A second import whose last item slapd refuses: a non-mail entry already holds
    # the DN, so the plan says "add" and slapd says "already exists".  Everything
    # the import did before is undone.
    account = hub.who(GLOBAL)
    with Session(service_config(hub.slapd, hub.data), account.dn, account.password) as session:
        session.add(f"mailAlias=zzz,dc=big.example,{BASE}",
                    {"objectClass": ["mailSetting", "extensibleObject"], "mailSetting": ["zzz"],
                     "mailAlias": ["zzz"]})
    path.write_text("".join(f"more{n:03d}: bob@example.com\n" for n in range(5)) + "zzz: bob@example.com\n",
                    encoding="utf-8")
    before = hub.snapshot()
    result = hub.run(GLOBAL, "import", "aliases", str(path), "--domain", "big.example", "--apply")
    assert_refused(result, "alias zzz@big.example already exists", "undid 5 earlier change")
    assert hub.snapshot() == before


# -- test tools ---------------------------------------------------------------------------------
def test_test_address_uses_the_hook_answers(hub: Hub) -> None:
    def route(address: str) -> dict[str, object]:
        result = hub.run(None, "--json", "test", "address", address)
        assert result.rc == 0, result
        return result.json()  # type: ignore[return-value]

    alice = route("alice@example.com")
    assert alice["router"] == "users"
    assert alice["mailbox"] == str(hub.workdir / "mail" / "alice@example.com")
    assert alice["quota"] == {"limit": "10M", "limit_bytes": 10 << 20, "used_bytes": 0}
    assert alice["over_quota"] is False and alice["uid"] == 8
    assert route("team@example.com")["targets"] == ["alice@example.com", "bob@example.com"]
    assert route("someone@example.org")["router"] == "catchall"
    assert route("someone@example.com")["router"] is None
    assert route("x@elsewhere.example")["router"] == "remote"
    human = hub.run(None, "test", "address", "team@example.com")
    assert "router" in human.out and "aliases" in human.out


def test_test_auth(hub: Hub) -> None:
    alice = hub.password_files["alice@example.com"]
    assert hub.run(None, "test", "auth", "alice@example.com", "--secret-file", str(alice)).rc == 0
    wrong = hub.secret("alice-wrong", "wrong-password")
    result = hub.run(None, "--json", "test", "auth", "alice@example.com", "--secret-file", str(wrong))
    assert result.rc == exitcodes.EX_REFUSED and result.json()["verdict"] == "refused"  # type: ignore[index]


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/exim4").exists(), reason="needs root and Exim")
def test_test_address_with_exim_bt(hub: Hub) -> None:
    # The hooks run as Debian-exim for some lookups: give it a config it can read.
    from mailrouter.sandbox import exim as exim_testbed

    workdir = exim_testbed.make_readable_dir(hub.workdir / "exim-conf")
    conf = hook_config(workdir / "mailrouter.toml", hub.data, [hub.slapd.uri], hub.workdir / "mail")
    result = hub.run(None, "--json", "test", "address", "team@example.com", "--exim",
                     "--exim-config", str(ROOT / "exim" / "mailrouter.conf"),
                     "--mailrouter-bin", str(BIN), config=conf)
    assert result.rc == 0, result
    exim = result.json()["exim"]  # type: ignore[index]
    assert exim["rc"] == 0, exim
    assert "alice@example.com" in exim["output"] and "bob@example.com" in exim["output"]



# -- test smtp / test pop3 against a running hub ------------------------------------------------
@dataclass
class Running:
    smtp_port: int
    pop3_port: int


@pytest.fixture(scope="module")
def running(hub: Hub) -> Iterator[Running]:
    """Exim (project config) and popa3d (project PAM config) on free loopback ports."""
    if os.geteuid() != 0:
        pytest.skip("needs root (Exim and popa3d)")
    from mailrouter.sandbox.exim import Exim, make_readable_dir
    from mailrouter.sandbox.popa3d import Popa3d

    # Not pytest's tmp_path (0700): the hooks run as Debian-exim.
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-admin-hub-"))
    exim: Exim | None = None
    pop: Popa3d | None = None
    try:
        workdir.chmod(0o755)
        spool = make_readable_dir(workdir / "mail")
        conf = hook_config(workdir / "mailrouter.toml", hub.data, [hub.slapd.uri], spool)
        exim = hub_exim(workdir, conf)
        (smtp_port,) = exim.start_daemon()
        pop = Popa3d(workdir / "pop", str(conf), root=ROOT, tls=False)
        pop.start()
        yield Running(smtp_port, pop.port)
    finally:
        try:
            if pop is not None:
                pop.stop()
            if exim is not None:
                exim.close()  # fails on a paniclog entry
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def test_test_smtp_reports_each_recipient(hub: Hub, running: Running) -> None:
    server = f"127.0.0.1:{running.smtp_port}"
    result = hub.run(None, "--json", "test", "smtp", server, "--from", "someone@example.net",
                     "--to", "alice@example.com", "--to", "team@example.com")
    assert result.rc == 0, result
    codes = {step["step"]: step["code"] for step in result.json()["transcript"]}  # type: ignore[index]
    assert codes["RCPT TO:<alice@example.com>"] == 250 and codes["RCPT TO:<team@example.com>"] == 250
    result = hub.run(None, "test", "smtp", server, "--from", "someone@example.net",
                     "--to", "alice@example.com", "--to", "nobody@example.com")
    assert result.rc == exitcodes.EX_REFUSED, result
    assert "550 RCPT TO:<nobody@example.com>" in result.out
    closed = hub.run(None, "test", "smtp", f"127.0.0.1:{free_port()}", "--to", "alice@example.com")
    assert closed.rc == exitcodes.EX_TEMPFAIL


def test_test_pop3_logs_in(hub: Hub, running: Running) -> None:
    server = f"127.0.0.1:{running.pop3_port}"
    alice = hub.password_files["alice@example.com"]
    result = hub.run(None, "--json", "test", "pop3", server, "alice@example.com", "--secret-file", str(alice))
    assert result.rc == 0, result
    assert result.json()["ok"] is True and result.json()["messages"] == 0  # type: ignore[index]
    wrong = hub.secret("alice-wrong-pop", "wrong-password")
    result = hub.run(None, "test", "pop3", server, "alice@example.com", "--secret-file", str(wrong))
    assert result.rc == exitcodes.EX_REFUSED, result
