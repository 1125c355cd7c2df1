"""Passwords on slapd 2.5, through the real daemons (issue 14).

One hub per module: slapd from the shipped ldap/ files (ppolicy, argon2 module
with the project's parameters, default and no-lockout policies from the
seed), stock popa3d with the shipped PAM file (``--userdb``), Exim with the
shipped config asking the real mailrouter-authd over its socket, the real
``mailrouter-checkpassword``, the web app.  What slapd stored is read back
offline with ``slapcat -b SUFFIX`` (``-s`` crashes on 2.5.13), hashes included:
no test trusts what a tool says it wrote.

* no cleartext by any path, and one strength: a raw ``ldapadd``/``ldapmodify``
  with cleartext, ``user add``, ``user passwd`` (Password Modify), the web and
  the API, ``mailrouter-passwd`` -- each stored hash has m=65536,t=3,p=4;
* rehash on login: {SSHA}, {CRYPT}$6$ and old {ARGON2} (slapd's former
  argon2i 4 MiB) accounts log in over POP3, SMTP AUTH, checkpassword and the
  web; afterwards every hash is the configured {ARGON2}, and a second login
  writes nothing; a rehash that slapd refuses does not fail the login;
* lockout: the refusal of a locked account is byte for byte a wrong
  password's, over POP3 and SMTP AUTH, and ends after pwdLockoutDuration; the
  service account and the global admin are never locked;
* a user created with the admin CLI logs in over POP3 in the same second;
  disabling or removing them takes effect at the next login.
"""

from __future__ import annotations

import base64
import os
import poplib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import argon2, sha512_crypt

from conftest import BIN, ROOT, hook_config, hub_exim, needs_root
from mailrouter import auth, config, entries, passwords
from mailrouter.directory import Directory, password_stamp
from mailrouter.sandbox import demo
from mailrouter.sandbox.exim import EXIM_USER, Exim, make_readable_dir
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd, free_port
from mailrouter.sandbox.tls import make_certificates
from mailrouter.sandbox.web import web_settings
from test_auth import run_checkpassword
from test_authd import Authd, _smtp_auth_plain
from test_pop3 import REFUSAL, login_reply
from test_web import HTTPS, Browser

pytestmark = needs_root

DOMAIN = "example.com"
BASE = "o=top"


def slapd_argon2_type() -> str:
    """What slapd's argon2 module writes: argon2i in OpenLDAP 2.5 (Debian 12),
    argon2id from 2.6 (Debian 13)."""
    banner = subprocess.run(["/usr/sbin/slapd", "-VV"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"slapd (\d+)\.(\d+)", banner)
    assert match, banner
    return "argon2i" if (int(match.group(1)), int(match.group(2))) < (2, 6) else "argon2id"


# The project's strength, as slapd's module and passlib (argon2id) write it.
COST = f"v=19$m={passwords.ARGON2_MEMORY_KIB},t={passwords.ARGON2_TIME},p={passwords.ARGON2_PARALLELISM}$"
SLAPD_FORM = "{ARGON2}$" + slapd_argon2_type() + "$" + COST
OURS_FORM = "{ARGON2}$argon2id$" + COST
TARGET = passwords.scheme_label("argon2")
# What a rehash must not touch on an entry that needs none.
UNCHANGED = ("userpassword", "mailpasswordscheme", "pwdchangedtime", "entrycsn", "modifytimestamp")

FAST_LOCKOUT = f"cn=fast-lockout,ou=policies,{BASE}"
NO_SELF_CHANGE = f"cn=no-self-change,ou=policies,{BASE}"
LOCKOUT_FAILURES = 3
LOCKOUT_SECONDS = 3

# Old hashes, as other systems and slapd before this change wrote them.
OLD = {
    "ssha": lambda pw: passwords.hash_password(pw, "ssha"),
    "crypt": lambda pw: "{CRYPT}" + sha512_crypt.using(rounds=5000).hash(pw),
    # slapd 2.5's argon2 module with its defaults (no m=/t=/p= on moduleload).
    "argon2i-4m": lambda pw: "{ARGON2}" + argon2.using(type="I", memory_cost=4096, rounds=3,
                                                        parallelism=1).hash(pw),
    # The project's argon2id, but nothing recorded its scheme: rehashed once.
    "unlabelled": lambda pw: passwords.hash_password(pw, "argon2"),
}


def policy_ldif() -> str:
    return f"""dn: {FAST_LOCKOUT}
objectClass: organizationalRole
objectClass: pwdPolicy
cn: fast-lockout
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: {LOCKOUT_FAILURES}
pwdFailureCountInterval: 60
pwdLockoutDuration: {LOCKOUT_SECONDS}

dn: {NO_SELF_CHANGE}
objectClass: organizationalRole
objectClass: pwdPolicy
cn: no-self-change
pwdAttribute: userPassword
pwdAllowUserChange: FALSE
"""


@dataclass
class Hub:
    workdir: Path
    data: demo.DemoDirectory
    slapd: Slapd
    conf: Path
    popa3d: Popa3d
    authd: Authd
    exim: Exim
    smtp_port: int
    passwords: dict[str, str] = field(default_factory=dict)

    def dump(self) -> dict[str, dict[str, list[str]]]:
        return slapcat(self.slapd)

    def entry(self, local: str) -> dict[str, list[str]]:
        return self.dump()[f"uid={local},dc={DOMAIN},{BASE}"]

    def secret_file(self, name: str, value: str) -> Path:
        path = self.workdir / f"secret-{name}"
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    def admin(self, *argv: str, actor: str = f"postmaster@{DOMAIN}") -> subprocess.CompletedProcess[str]:
        """The installed ``mailrouter-admin``, bound as ``actor`` (an admin of example.com)."""
        account = self.data.account(actor)
        done = subprocess.run(
            [str(BIN / "mailrouter-admin"), "--config", str(self.conf), "--bind-dn", account.dn,
             "--password-file", str(self.secret_file("actor", account.password)), *argv],
            capture_output=True, text=True, check=False, timeout=60,
        )
        return done

    def add_user(self, local: str, password: str) -> None:
        """``mailrouter-admin user add LOCAL@example.com`` with ``password``."""
        done = self.admin("user", "add", f"{local}@{DOMAIN}", "--new-password-file",
                          str(self.secret_file("new", password)))
        assert done.returncode == 0, done.stderr

    def pop3(self, login: str, password: str) -> bytes:
        client = poplib.POP3("127.0.0.1", self.popa3d.port, timeout=30)
        try:
            return login_reply(client, login, password)
        finally:
            client.close()

    def smtp(self, login: str, password: str) -> int:
        return _smtp_auth_plain(self.smtp_port, login, password)

    def conf_object(self) -> config.Config:
        return config.load(str(self.conf))


def slapcat(server: Slapd) -> dict[str, dict[str, list[str]]]:
    """Every entry of the database, read offline: DN (lower case) -> attribute (lower case) -> values.

    ``-b SUFFIX``: ``slapcat -s DN`` crashes on Debian 12's 2.5.13.  slapd's argon2
    module pads what it stores with NULs (it verifies fine); they are kept."""
    done = subprocess.run(["slapcat", "-f", str(server.conf_path), "-b", BASE],
                          capture_output=True, check=True, timeout=60)
    text = done.stdout.decode("utf-8").replace("\n ", "")
    found: dict[str, dict[str, list[str]]] = {}
    for block in text.split("\n\n"):
        attributes: dict[str, list[str]] = {}
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(":"):
                value = base64.b64decode(value[1:].strip()).decode("utf-8")
            else:
                value = value.strip()
            attributes.setdefault(name.lower(), []).append(value)
        if "dn" in attributes:
            found[attributes.pop("dn")[0].lower()] = attributes
    return found


def stored(entry: dict[str, list[str]]) -> str:
    [value] = entry["userpassword"]
    return value


def stamp_is_current(entry: dict[str, list[str]], label: str) -> bool:
    """The entry's mailPasswordScheme names ``label`` and the pwdChangedTime slapd holds."""
    changed = entry.get("pwdchangedtime", [None])[0]
    return entry.get("mailpasswordscheme") == [password_stamp(label, changed)]


def user_ldif(data: demo.DemoDirectory, local: str, password_hash: str, *, stamp: str | None = None,
              policy: str | None = None) -> str:
    entry = entries.user_entry(local, DOMAIN, data.base_dn, password_hash=password_hash, uid_number=8,
                               gid_number=8, mailbox=f"/var/mail/{local}@{DOMAIN}", password_stamp=stamp)
    text = entries.to_ldif([entry])
    return text.rstrip("\n") + (f"\npwdPolicySubentry: {policy}\n" if policy else "\n")


def rehash_users() -> dict[str, str]:
    """local part -> kind of old hash, one set per front end."""
    users = {}
    for front in ("pop3", "smtp"):
        for kind in OLD:
            users[f"{front}-{kind}"] = kind
    users["imap-ssha"] = "ssha"
    users["web-ssha"] = "ssha"
    return users


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    data = demo.build()
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-passwords-"))
    workdir.chmod(0o755)  # Exim (Debian-exim) reaches the socket, deliveries the spool
    chosen: dict[str, str] = {}
    ldif = [policy_ldif()]

    def add(local: str, password_hash_of: Any, **kwargs: Any) -> None:
        chosen[local] = demo.new_password()
        ldif.append(user_ldif(data, local, password_hash_of(chosen[local]), **kwargs))

    for local, kind in rehash_users().items():
        add(local, OLD[kind])
    for front in ("pop3", "smtp"):  # current and recorded: never rehashed
        add(f"{front}-current", lambda pw: passwords.hash_password(pw, "argon2"),
            stamp=password_stamp(TARGET, None))
    add("stubborn", OLD["ssha"], policy=NO_SELF_CHANGE)
    for local in ("lock-pop3", "lock-smtp", "lock-core"):
        add(local, lambda pw: passwords.hash_password(pw, "argon2"), stamp=password_stamp(TARGET, None),
            policy=FAST_LOCKOUT)
    add("lock-default", lambda pw: passwords.hash_password(pw, "argon2"), stamp=password_stamp(TARGET, None))

    server: Slapd | None = None
    pop: Popa3d | None = None
    authd: Authd | None = None
    exim: Exim | None = None
    try:
        server = Slapd(workdir / "slapd", ldif=[data.ldif, "\n".join(ldif)], root=ROOT,
                       seed_passwords=data.seed_passwords).start()
        spool = workdir / "mail"
        spool.mkdir()
        os.chown(spool, 0, 8)
        spool.chmod(0o2775)
        web = web_settings(workdir, free_port(), None, None)
        web.update(state_dir=str(workdir / "state"))
        conf = hook_config(workdir / "mailrouter.toml", data, [server.uri], spool, timeouts=3.0, web=web)
        pop = Popa3d(workdir / "pop", str(conf), root=ROOT, tls=False, spool=spool)
        pop.start()
        authd_dir = workdir / "authd"
        authd_dir.mkdir(mode=0o755)
        authd = Authd(authd_dir, conf)
        certificates = make_certificates(make_readable_dir(workdir / "tls"), key_group=EXIM_USER)
        cert, key = certificates.cert, certificates.key
        port = free_port()
        exim = hub_exim(workdir, conf, MAILROUTER_TLS_CERT=str(cert), MAILROUTER_TLS_KEY=str(key),
                        MAILROUTER_AUTH_SOCKET=str(authd.socket_path))
        exim.start_daemon([port])
        yield Hub(workdir, data, server, conf, pop, authd, exim, port, chosen)
    finally:
        if exim is not None:
            exim.close()
        if authd is not None:
            authd.stop()
        if pop is not None:
            pop.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- one strength -----------------------------------------------------------------------------
def test_slapd_conf_loads_argon2_with_the_project_parameters() -> None:
    """The one setting: slapd.conf's moduleload line is passwords.ARGON2_* (cn=config: test_schema_config)."""
    text = (ROOT / "ldap" / "slapd.conf").read_text()
    loads = [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("moduleload")]
    assert passwords.slapd_moduleload() in loads
    assert passwords.hash_password("x-password").startswith(OURS_FORM)


# -- no cleartext by any path -----------------------------------------------------------------
def _password_file(hub: Hub, password: str) -> str:
    """For ``-y``: the OpenLDAP tools take the whole file, a newline included."""
    path = hub.workdir / "secret-ldap-tool"
    path.write_text(password, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


def _ldap_tool(hub: Hub, tool: str, actor_dn: str, password: str, ldif: str) -> None:
    done = subprocess.run(
        [tool, "-x", "-H", hub.slapd.uri, "-D", actor_dn, "-y", _password_file(hub, password)],
        input=ldif, capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _binds(hub: Hub, dn: str, password: str) -> bool:
    argv = ["ldapwhoami", "-x", "-H", hub.slapd.uri, "-D", dn, "-y", _password_file(hub, password)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def test_raw_ldap_cleartext_add_and_replace_are_stored_hashed(hub: Hub) -> None:
    """What an admin with any LDAP tool does: ldapadd and ldapmodify with a cleartext userPassword."""
    postmaster = hub.data.account(f"postmaster@{DOMAIN}")
    dn = f"uid=raw,dc={DOMAIN},{BASE}"
    entry = entries.to_ldif([entries.user_entry("raw", DOMAIN, BASE, password_hash=None, uid_number=8,
                                                gid_number=8, mailbox=f"/var/mail/raw@{DOMAIN}")])
    first = "raw cleartext one"
    _ldap_tool(hub, "ldapadd", postmaster.dn, postmaster.password,
               entry.rstrip("\n") + f"\nuserPassword: {first}\n")
    stored_add = stored(hub.entry("raw"))
    assert stored_add.startswith(SLAPD_FORM) and first not in stored_add
    assert _binds(hub, dn, first)

    second = "raw cleartext two"  # by the user, then by their admin
    _ldap_tool(hub, "ldapmodify", dn, first,
               f"dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {second}\n")
    assert stored(hub.entry("raw")).startswith(SLAPD_FORM) and second not in stored(hub.entry("raw"))
    third = "raw cleartext three"
    _ldap_tool(hub, "ldapmodify", postmaster.dn, postmaster.password,
               f"dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {third}\n")
    after = hub.entry("raw")
    assert stored(after).startswith(SLAPD_FORM) and third not in stored(after)
    assert _binds(hub, dn, third) and not _binds(hub, dn, second)
    # Nothing of ours wrote it: its scheme is unknown (the next login rehashes once).
    with Directory(hub.conf_object().ldap) as directory:
        user = directory.user("raw", DOMAIN)
    assert user is not None and user.password_scheme is None


def test_admin_cli_user_add_and_user_passwd(hub: Hub) -> None:
    """``user add`` and ``user passwd`` hash with passlib (argon2id, the configured scheme),
    and each records its scheme for the rehash on login."""
    password = "cli user password"
    hub.add_user("cli", password)
    entry = hub.entry("cli")
    assert stored(entry).startswith(OURS_FORM) and password not in stored(entry)
    assert stamp_is_current(entry, TARGET)

    changed = "cli changed password"
    done = hub.admin("user", "passwd", f"cli@{DOMAIN}", "--new-password-file",
                     str(hub.secret_file("new", changed)))
    assert done.returncode == 0, done.stderr
    entry = hub.entry("cli")
    assert stored(entry).startswith(OURS_FORM) and changed not in stored(entry)
    assert entry["pwdchangedtime"] and stamp_is_current(entry, TARGET)
    assert hub.smtp(f"cli@{DOMAIN}", changed) == 235
    assert hub.entry("cli")["entrycsn"] == entry["entrycsn"]  # recorded as current: no rehash


def test_mailrouter_passwd(hub: Hub) -> None:
    hub.add_user("selfserve", "selfserve old password")
    new = "selfserve new password"
    done = subprocess.run(
        [str(ROOT / "bin" / "mailrouter-passwd"), "--config", str(hub.conf), "--login", f"selfserve@{DOMAIN}",
         "--old-password-file", "-", "--new-password-file", "-"],
        input=f"selfserve old password\n{new}\n", capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    entry = hub.entry("selfserve")
    assert stored(entry).startswith(OURS_FORM) and new not in stored(entry)
    assert stamp_is_current(entry, TARGET)


def _web(hub: Hub) -> Any:
    from mailrouter.admin.web import create_app

    return create_app(hub.conf_object())


def test_web_and_api_password_set(hub: Hub) -> None:
    """The admin's reset (page and API) hashes with the configured scheme (passlib's form);
    the user's own change is Password Modify with the old password (slapd's form)."""
    for local in ("webreset", "apireset"):
        hub.add_user(local, "initial password")
    app = _web(hub)
    postmaster = hub.data.account(f"postmaster@{DOMAIN}")
    browser = Browser(app.test_client())
    assert browser.login(f"postmaster@{DOMAIN}", postmaster.password).status_code == 302
    page = browser.post(f"/domains/{DOMAIN}/users/webreset/password", {"password": "page reset password"})
    assert page.status_code == 302, page.get_data(as_text=True)[:300]
    token = base64.b64encode(f"postmaster@{DOMAIN}:{postmaster.password}".encode()).decode()
    api = app.test_client().patch(f"/api/v1/domains/{DOMAIN}/users/apireset",
                                  json={"password": "api reset password"},
                                  base_url=HTTPS, headers={"Authorization": f"Basic {token}"})
    assert api.status_code == 200, api.get_data(as_text=True)[:300]
    token = base64.b64encode(f"webreset@{DOMAIN}:page reset password".encode()).decode()
    own = app.test_client().post("/api/v1/me/password",
                                 json={"old": "page reset password", "new": "own new password"},
                                 base_url=HTTPS, headers={"Authorization": f"Basic {token}"})
    assert own.status_code == 204, own.get_data(as_text=True)[:300]
    for local, password, form in (("webreset", "own new password", SLAPD_FORM),
                                  ("apireset", "api reset password", OURS_FORM)):
        entry = hub.entry(local)
        assert stored(entry).startswith(form) and password not in stored(entry)
        assert stamp_is_current(entry, TARGET)


def test_a_stamp_goes_stale_when_anything_else_writes_the_password(hub: Hub) -> None:
    """A writer that keeps no label (ldapmodify with an old prehashed value) makes the scheme unknown."""
    hub.add_user("migrated", "migrated password")
    assert stamp_is_current(hub.entry("migrated"), TARGET)
    time.sleep(1.1)  # pwdChangedTime has a resolution of one second
    postmaster = hub.data.account(f"postmaster@{DOMAIN}")
    dn = f"uid=migrated,dc={DOMAIN},{BASE}"
    old_hash = OLD["ssha"]("migrated password")
    _ldap_tool(hub, "ldapmodify", postmaster.dn, postmaster.password,
               f"dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {old_hash}\n")
    entry = hub.entry("migrated")
    assert stored(entry) == old_hash  # a hash is kept as sent
    assert not stamp_is_current(entry, TARGET)
    assert hub.pop3(f"migrated@{DOMAIN}", "migrated password").startswith(b"+OK")
    entry = hub.entry("migrated")
    assert stored(entry).startswith(OURS_FORM) and stamp_is_current(entry, TARGET)


# -- rehash on login --------------------------------------------------------------------------
def _rehashed(hub: Hub, locals_: list[str]) -> dict[str, dict[str, list[str]]]:
    dump = hub.dump()
    found = {local: dump[f"uid={local},dc={DOMAIN},{BASE}"] for local in locals_}
    for local, entry in found.items():
        assert stored(entry).startswith(OURS_FORM), (local, stored(entry)[:40])
        assert stamp_is_current(entry, TARGET), (local, entry.get("mailpasswordscheme"))
    return found


def _unchanged(before: dict[str, list[str]], after: dict[str, list[str]]) -> bool:
    return all(before.get(name) == after.get(name) for name in UNCHANGED)


@pytest.mark.parametrize("front", ["pop3", "smtp"])
def test_old_hashes_are_rehashed_on_login_and_only_once(hub: Hub, front: str) -> None:
    olds = [f"{front}-{kind}" for kind in OLD]
    before = hub.dump()
    for local in olds:  # an old form, or the right form with no record of it
        entry = before[f"uid={local},dc={DOMAIN},{BASE}"]
        assert not (stored(entry).startswith(OURS_FORM) and stamp_is_current(entry, TARGET))

    def login(local: str) -> None:
        if front == "pop3":
            assert hub.pop3(f"{local}@{DOMAIN}", hub.passwords[local]).startswith(b"+OK"), local
        else:
            assert hub.smtp(f"{local}@{DOMAIN}", hub.passwords[local]) == 235, local

    for local in [*olds, f"{front}-current"]:
        login(local)
    first = _rehashed(hub, olds)
    for local, entry in first.items():
        assert stored(entry) != stored(before[f"uid={local},dc={DOMAIN},{BASE}"]), local
    current = f"uid={front}-current,dc={DOMAIN},{BASE}"
    assert _unchanged(before[current], hub.dump()[current])  # recorded as current: not touched
    for local in olds:
        login(local)  # the new hash verifies, and a second login writes nothing
    second = hub.dump()
    for local, entry in first.items():
        assert _unchanged(entry, second[f"uid={local},dc={DOMAIN},{BASE}"]), local


def test_checkpassword_and_web_logins_rehash(hub: Hub, tmp_path: Path) -> None:
    request = f"imap-ssha@{DOMAIN}\0{hub.passwords['imap-ssha']}\0\0".encode()
    assert run_checkpassword(hub.conf, tmp_path, request, ["/usr/bin/true"]).returncode == 0
    browser = Browser(_web(hub).test_client())
    assert browser.login(f"web-ssha@{DOMAIN}", hub.passwords["web-ssha"]).status_code == 302
    first = _rehashed(hub, ["imap-ssha", "web-ssha"])
    assert run_checkpassword(hub.conf, tmp_path, request, ["/usr/bin/true"]).returncode == 0
    again = Browser(_web(hub).test_client())
    assert again.login(f"web-ssha@{DOMAIN}", hub.passwords["web-ssha"]).status_code == 302
    for local, entry in first.items():
        assert _unchanged(entry, hub.entry(local)), local


def test_a_refused_rehash_does_not_fail_the_login(hub: Hub) -> None:
    """slapd refuses this user's own password writes (pwdAllowUserChange FALSE): the login stands."""
    before = hub.entry("stubborn")
    assert hub.pop3(f"stubborn@{DOMAIN}", hub.passwords["stubborn"]).startswith(b"+OK")
    assert hub.smtp(f"stubborn@{DOMAIN}", hub.passwords["stubborn"]) == 235
    assert _unchanged(before, hub.entry("stubborn"))
    assert re.search(r"stubborn@example\.com OK ok; rehash to \S+ failed", hub.authd.log_path.read_text())


# -- lockout ----------------------------------------------------------------------------------
def test_locked_account_looks_like_a_wrong_password_over_pop3_and_smtp(hub: Hub) -> None:
    for local, attempt, refusal, welcome in (
        ("lock-pop3", lambda login, pw: hub.pop3(login, pw), REFUSAL, b"+OK"),
        ("lock-smtp", lambda login, pw: hub.smtp(login, pw), 535, 235),
    ):
        login, password = f"{local}@{DOMAIN}", hub.passwords[local]
        for _ in range(LOCKOUT_FAILURES):
            assert attempt(login, password + "-wrong") == refusal
        locked_at = time.monotonic()
        # Locked: the right password gets exactly a wrong password's answer ...
        assert attempt(login, password) == refusal, local
        assert hub.entry(local)["pwdaccountlockedtime"]
        # ... until pwdLockoutDuration has passed.
        time.sleep(max(0.0, LOCKOUT_SECONDS + 1.5 - (time.monotonic() - locked_at)))
        reply = attempt(login, password)
        assert (reply.startswith(welcome) if isinstance(reply, bytes) else reply == welcome), (local, reply)


def test_default_policy_locks_after_its_documented_failures(hub: Hub) -> None:
    seed = (ROOT / "ldap" / "seed.ldif").read_text()
    default = seed.split("dn: cn=default,ou=policies,o=top", 1)[1].split("\n\n", 1)[0]
    max_failure = int(re.search(r"^pwdMaxFailure: (\d+)$", default, re.M).group(1))  # type: ignore[union-attr]
    assert re.search(r"^pwdLockoutDuration: 300$", default, re.M) and max_failure == 10
    conf = hub.conf_object()
    login, password = f"lock-default@{DOMAIN}", hub.passwords["lock-default"]
    for _ in range(max_failure):
        assert auth.authenticate(conf, login, password + "x").verdict is auth.Verdict.REFUSED
    assert auth.authenticate(conf, login, password).verdict is auth.Verdict.REFUSED
    assert hub.entry("lock-default")["pwdaccountlockedtime"]


def test_a_locked_refusal_costs_a_hash(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """slapd refuses a locked account without verifying a hash; the core spends one instead
    (no timing assert: the dummy hash must run exactly when slapd verified none)."""
    conf = hub.conf_object()
    login, password = f"lock-core@{DOMAIN}", hub.passwords["lock-core"]
    calls: list[str] = []
    real = passwords.dummy_work
    monkeypatch.setattr(passwords, "dummy_work", lambda p, c: (calls.append(p), real(p, c))[1])
    for _ in range(LOCKOUT_FAILURES):
        assert not auth.authenticate(conf, login, password + "x").ok
    assert calls == []  # wrong passwords: slapd hashed them
    assert auth.authenticate(conf, login, password).verdict is auth.Verdict.REFUSED
    assert len(calls) == 1


def test_service_account_and_global_admin_are_never_locked(hub: Hub) -> None:
    service = hub.data.account("service")
    admin = hub.data.account("global-admin")
    for account in (service, admin):
        for _ in range(15):
            assert not _binds(hub, account.dn, "not-the-password")
        assert _binds(hub, account.dn, account.password)
        assert "pwdaccountlockedtime" not in hub.dump()[account.dn.lower()]
    # The hub still works: every login starts with the service account's bind.
    assert hub.pop3(f"pop3-current@{DOMAIN}", hub.passwords["pop3-current"]).startswith(b"+OK")


def test_global_admins_created_by_the_cli_are_exempt_too(hub: Hub) -> None:
    done = hub.admin("admin", "grant", "second", "--global", "--create", "--new-password-file",
                     str(hub.secret_file("new", "second admin password")), actor="global-admin")
    assert done.returncode == 0, done.stderr + done.stdout
    entry = hub.dump()[f"uid=second,{BASE}"]
    assert entry["pwdpolicysubentry"] == [f"cn=no-lockout,ou=policies,{BASE}"]
    assert stored(entry).startswith(OURS_FORM)


# -- a new user logs in over POP3 at once -------------------------------------------------------
def test_new_user_logs_in_over_pop3_at_once(hub: Hub) -> None:
    login, password = f"fresh@{DOMAIN}", "fresh user password"
    record = hub.popa3d.userdb / f"{login}.user"
    hub.add_user("fresh", password)
    assert not record.exists()  # no timer ran: the login itself must write it
    assert hub.pop3(login, password).startswith(b"+OK")
    assert record.exists()
    # A wrong password never removes a record.
    assert hub.pop3(login, password + "x") == REFUSAL and record.exists()
    # Disabled: refused at the next login, and the record goes.
    assert hub.admin("user", "disable", login).returncode == 0
    assert hub.pop3(login, password) == REFUSAL
    assert not record.exists()
    assert hub.admin("user", "enable", login).returncode == 0
    assert hub.pop3(login, password).startswith(b"+OK") and record.exists()
    # Removed: the same.
    assert hub.admin("user", "remove", login).returncode == 0
    assert hub.pop3(login, password) == REFUSAL
    assert not record.exists()


def test_the_scheme_label_is_the_users_and_the_service_accounts(hub: Hub) -> None:
    """acl.conf rule 2a: the service account reads a user's mailPasswordScheme, the
    user writes their own, another user of the domain neither reads nor writes it."""
    from mailrouter.directory import MODIFY_REPLACE, Session
    from mailrouter.errors import LdapRefused

    ldap = hub.conf_object().ldap
    alice_dn = hub.data.account(f"alice@{DOMAIN}").dn
    with Directory(ldap) as directory:
        assert directory.read(alice_dn, "mailUser", ["mailPasswordScheme"]) == {
            "mailPasswordScheme": [password_stamp(TARGET, None)]
        }
    bob = hub.data.account(f"bob@{DOMAIN}")
    with Session(ldap, bob.dn, bob.password) as session:
        seen = session.directory.read(alice_dn, "mailUser", ["mailPasswordScheme", "uid"])
        assert seen is not None and seen["uid"] == ["alice"] and not seen["mailPasswordScheme"]
        with pytest.raises(LdapRefused) as refused:
            session.modify(alice_dn, {"mailPasswordScheme": (MODIFY_REPLACE, [password_stamp(TARGET, None)])})
        assert refused.value.code == 50
        session.modify(bob.dn, {"mailPasswordScheme": (MODIFY_REPLACE, ["{SSHA} -"])})
    assert hub.entry("bob")["mailpasswordscheme"] == ["{SSHA} -"]
