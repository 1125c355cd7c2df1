"""The authentication core and its PAM / checkpassword front ends, against real slapd.

Every refusal case of issue 5 (wrong password, unknown user, upper case, '../',
'/', leading '.', NUL, control characters, over-long, empty password -- the
latter also against a slapd with ``allow bind_anon_dn`` -- and disabled accounts)
must give exactly the same answer; LDAP down or frozen must be temporary.  The
executables are run as the real console scripts with the contract their callers
(pam_exec, Dovecot) rely on.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, CASES, ROOT, VENV_ENV, alice, hook_config, make_config, refusal_cases, start_slapd
from dataset import DISABLED_LOGIN, Dataset
from mailrouter import auth, config, entries, passwords
from mailrouter.sandbox import demo
from mailrouter.sandbox.configs import secret_path, write_config
from mailrouter.sandbox.slapd import Slapd, free_port

PAM_AUTH = str(BIN / "mailrouter-pam-auth")
USERDB = str(BIN / "mailrouter-userdb")
CHECKPASSWORD = str(BIN / "mailrouter-checkpassword")
DISABLED = DISABLED_LOGIN


def permissive_root(workdir: Path) -> Path:
    """The project's ldap/ files minus ``disallow bind_anon``: with that line, slapd
    refuses empty-password binds by itself (rc 48) and the client-side check would
    go untested."""
    shutil.copytree(ROOT / "ldap", workdir / "ldap")
    conf = workdir / "ldap" / "slapd.conf"
    lines = conf.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("disallow")]
    assert len(kept) == len(lines) - 1
    conf.write_text("\n".join(kept) + "\n")
    return workdir


@pytest.fixture(scope="module")
def anon_slapd(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Slapd]:
    """The data set (it holds the disabled user) on a slapd where an empty-password
    bind succeeds (``allow bind_anon_dn``)."""
    workdir = tmp_path_factory.mktemp("anon-slapd")
    server = start_slapd(
        workdir / "slapd", dataset, root=permissive_root(workdir), extra_config="allow bind_anon_dn"
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def conf_path(
    tmp_path_factory: pytest.TempPathFactory, anon_slapd: Slapd, dataset: Dataset
) -> Path:
    return hook_config(tmp_path_factory.mktemp("auth-conf") / "mailrouter.toml", dataset, [anon_slapd.uri])


@pytest.fixture(scope="module")
def conf(conf_path: Path) -> config.Config:
    return config.load(str(conf_path))


@pytest.fixture
def dead_conf_path(tmp_path: Path, dataset: Dataset) -> Path:
    """A config whose only LDAP URI has nobody listening."""
    dead = f"ldap://127.0.0.1:{free_port()}/"
    return hook_config(tmp_path / "dead" / "mailrouter.toml", dataset, [dead], timeouts=1.0)

# Issue 13 item 1: passwords of every odd kind, as octets.  Each must be answered
# exactly like a wrong password -- same answer, and for a known user the same
# work (a real bind) -- whether the login exists or not.  The LDAP client used
# to refuse some of them before binding (SASLprep), which came back as "LDAP
# unavailable": a different answer, and a fast one, for existing users only.
HOSTILE_PASSWORDS: dict[str, bytes] = {
    "LF": b"pass\nword-1",
    "CR": b"pass\rword-1",
    "TAB": b"pass\tword-1",
    "SOH": b"pass\x01word-1",
    "DEL": b"pass\x7fword-1",
    "U+2028": "pass\u2028word-1".encode(),
    "U+0085": "pass\u0085word-1".encode(),
    "private use": "pass\ue000word-1".encode(),
    "non-character": "pass\ufdd0word-1".encode(),
    "bidi mix": "\u05d0pass-1".encode(),
    "soft hyphen only": "\u00ad".encode(),
    "NUL": b"pass\x00word-1",
    "not UTF-8": b"pass\xffword-1",
    "5000 bytes": b"p" * 5000,
    "1025 bytes": b"p" * 1025,
}
# Logins that cannot be an account, with the known user's right password.
HOSTILE_LOGINS: dict[str, bytes] = {
    "LF": b"alice\n@example.com",
    "TAB": b"alice\t@example.com",
    "SOH": b"alice\x01@example.com",
    "DEL": b"alice\x7f@example.com",
    "U+2028": "alice\u2028@example.com".encode(),
    "NUL": b"alice\x00@example.com",
    "not UTF-8": b"al\xffice@example.com",
    "5000 bytes": b"a" * 4988 + b"@example.com",
}


# -- the core ----------------------------------------------------------------
def test_right_password_is_accepted(conf: config.Config, dataset: Dataset) -> None:
    result = auth.authenticate(conf, "alice@example.com", alice(dataset).password)
    assert result.verdict is auth.Verdict.OK
    assert result.user is not None and result.user.address == "alice@example.com"


@pytest.mark.parametrize("case", CASES)
def test_every_refusal_is_the_same_answer(
    conf: config.Config, dataset: Dataset, case: str
) -> None:
    login, password = refusal_cases(dataset)[case]
    result = auth.authenticate(conf, login, password)
    assert (result.verdict, result.user) == (auth.Verdict.REFUSED, None)


def test_empty_password_really_binds_on_this_slapd(anon_slapd: Slapd, dataset: Dataset) -> None:
    """The precondition that makes the empty-password case meaningful: slapd itself
    accepts an empty-password bind to alice's DN (as anonymous)."""
    done = subprocess.run(
        ["ldapwhoami", "-x", "-H", anon_slapd.uri, "-D", alice(dataset).dn, "-w", ""],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_empty_password_refused_on_default_slapd_too(
    slapd: Slapd, dataset: Dataset, tmp_path: Path
) -> None:
    """The shipped slapd.conf refuses the empty bind itself; so do we."""
    done = subprocess.run(
        ["ldapwhoami", "-x", "-H", slapd.uri, "-D", alice(dataset).dn, "-w", ""],
        capture_output=True,
        check=False,
    )
    assert done.returncode != 0
    conf = config.load(str(hook_config(tmp_path / "mailrouter.toml", dataset, [slapd.uri])))
    assert auth.authenticate(conf, "alice@example.com", "").verdict is auth.Verdict.REFUSED
    assert auth.authenticate(conf, "bob@example.com", dataset.account("bob@example.com").password).ok


def test_unknown_user_costs_a_hash_wrong_password_does_not(
    conf: config.Config, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timing assert: the dummy hash must run exactly when slapd verifies none."""
    calls: list[str] = []
    real = passwords.dummy_work
    monkeypatch.setattr(passwords, "dummy_work", lambda p, c: (calls.append("x"), real(p, c))[1])
    password = alice(dataset).password
    auth.authenticate(conf, "nobody@example.com", password)
    assert len(calls) == 1
    auth.authenticate(conf, "ALICE@example.com", password)
    assert len(calls) == 2
    auth.authenticate(conf, "alice@example.com", password + "x")  # slapd hashes this one
    assert len(calls) == 2


def test_ldap_down_is_temporary(dead_conf_path: Path, dataset: Dataset) -> None:
    conf = config.load(str(dead_conf_path))
    result = auth.authenticate(conf, "alice@example.com", alice(dataset).password)
    assert result.verdict is auth.Verdict.TEMPORARY


def test_ldap_frozen_is_temporary(tmp_path: Path, dataset: Dataset) -> None:
    server = start_slapd(tmp_path / "slapd", dataset)
    try:
        path = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [server.uri], timeouts=1.0)
        conf = config.load(str(path))
        assert auth.authenticate(conf, "alice@example.com", alice(dataset).password).ok
        server.freeze()
        for login, password in [
            ("alice@example.com", alice(dataset).password),
            ("alice@example.com", "wrong-password"),
        ]:
            assert auth.authenticate(conf, login, password).verdict is auth.Verdict.TEMPORARY
    finally:
        server.stop()


def test_wrong_service_password_is_temporary_not_bad_password(
    anon_slapd: Slapd, dataset: Dataset, tmp_path: Path
) -> None:
    service = dataset.account("service")
    path = write_config(tmp_path / "mailrouter.toml", uris=[anon_slapd.uri], base_dn=dataset.base_dn,
                        bind_dn=service.dn, password="not-the-password")
    result = auth.authenticate(config.load(str(path)), "alice@example.com", alice(dataset).password)
    assert result.verdict is auth.Verdict.TEMPORARY


def test_failover_to_second_uri(anon_slapd: Slapd, dataset: Dataset, tmp_path: Path) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}/"
    path = hook_config(tmp_path / "mailrouter.toml", dataset, [dead, anon_slapd.uri])
    assert auth.authenticate(config.load(str(path)), "alice@example.com", alice(dataset).password).ok


def test_raw_input_must_be_utf8(conf: config.Config, dataset: Dataset) -> None:
    password = alice(dataset).password.encode()
    assert auth.authenticate_raw(conf, b"alice@example.com", password).ok
    assert not auth.authenticate_raw(conf, b"alice@example.com", password + b"\xff").ok
    assert not auth.authenticate_raw(conf, b"alice@example.com\xff", password).ok


@pytest.mark.parametrize("case", HOSTILE_PASSWORDS)
def test_hostile_passwords_are_wrong_passwords(
    conf: config.Config, demo_data: demo.DemoDirectory, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, never TEMPORARY; a known user's password goes to slapd (a bind, the
    cost of a wrong password) unless the core's own rules refuse it first, and then
    the unknown user's cost is paid (the dummy hash) -- for both logins alike."""
    calls: list[str] = []
    real = passwords.dummy_work
    monkeypatch.setattr(passwords, "dummy_work", lambda p, c: (calls.append("x"), real(p, c))[1])
    password = HOSTILE_PASSWORDS[case]
    known = auth.authenticate_raw(conf, b"alice@example.com", password)
    known_hashes = len(calls)
    unknown = auth.authenticate_raw(conf, b"nobody@example.com", password)
    assert (known.verdict, unknown.verdict) == (auth.Verdict.REFUSED, auth.Verdict.REFUSED), known.reason
    assert len(calls) - known_hashes == 1  # the unknown user always costs the dummy hash
    # The known user: either slapd's hash check (a bind, "wrong password") or ours.
    assert (known.reason == "wrong password") == (known_hashes == 0), (known.reason, known_hashes)
    if b"\x00" not in password and len(password) <= auth.MAX_PASSWORD_BYTES:
        try:
            password.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            assert known.reason == "wrong password"  # octets slapd can compare: it does


@pytest.mark.parametrize("case", HOSTILE_LOGINS)
def test_hostile_logins_are_refused_like_unknown_users(conf: config.Config, demo_data: demo.DemoDirectory,
                                                        case: str) -> None:
    result = auth.authenticate_raw(conf, HOSTILE_LOGINS[case], alice(demo_data).password.encode())
    assert (result.verdict, result.user) == (auth.Verdict.REFUSED, None), result.reason


def test_a_password_with_control_characters_can_be_the_right_one(
    tmp_path: Path, demo_data: demo.DemoDirectory
) -> None:
    """Not merely refused: such a password is compared by slapd like any other, so a
    user whose (hashed) password has one logs in -- its octets as typed."""
    odd = "tab\there-and\u2028there"
    user = entries.user_entry("oddpass", "example.com", demo_data.base_dn,
                              password_hash=passwords.hash_password(odd, "ssha"), uid_number=8,
                              gid_number=8, mailbox="/var/mail/oddpass@example.com")
    server = start_slapd(tmp_path / "slapd", demo_data, entries.to_ldif([user]))
    try:
        conf = config.load(str(make_config(tmp_path / "c", demo_data, [server.uri])))
        assert auth.authenticate(conf, "oddpass@example.com", odd).ok
        assert auth.authenticate(conf, "oddpass@example.com", odd + "x").verdict is auth.Verdict.REFUSED
    finally:
        server.stop()


# -- mailrouter-pam-auth --------------------------------------------------------
def run_pam(
    conf_path: Path, login: str | None, password: bytes, pam_type: str = "auth",
    extra_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "PAM_TYPE": pam_type, "PAM_SERVICE": "popa3d"}
    if login is not None:
        env["PAM_USER"] = login
    return subprocess.run(
        [PAM_AUTH, "--config", str(conf_path), *extra_args],
        input=password,
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )


def test_pam_auth_accepts_and_is_silent(conf_path: Path, dataset: Dataset) -> None:
    done = run_pam(conf_path, "alice@example.com", alice(dataset).password.encode())
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    # A trailing NUL (other PAM versions) is not part of the password.
    assert run_pam(conf_path, "alice@example.com", alice(dataset).password.encode() + b"\0").returncode == 0


@pytest.mark.parametrize("case", CASES)
def test_pam_auth_refusals_exit_1(conf_path: Path, dataset: Dataset, case: str) -> None:
    login, password = refusal_cases(dataset)[case]
    if "\x00" in login:
        pytest.skip("an environment variable cannot hold a NUL")
    done = run_pam(conf_path, login, password.encode())
    assert (done.returncode, done.stdout, done.stderr) == (1, b"", b"")


@pytest.mark.parametrize("case", HOSTILE_PASSWORDS)
def test_pam_auth_hostile_passwords_exit_1(conf_path: Path, demo_data: demo.DemoDirectory, case: str) -> None:
    """What popa3d's pam_exec runs: exit 1 for the known and the unknown user alike
    (the known one used to get 75, "LDAP trouble", after no bind at all)."""
    for login in ("alice@example.com", "nobody@example.com"):
        done = run_pam(conf_path, login, HOSTILE_PASSWORDS[case])
        assert (done.returncode, done.stdout, done.stderr) == (1, b"", b""), login


def test_pam_auth_misuse_and_temporary(
    conf_path: Path, dead_conf_path: Path, dataset: Dataset
) -> None:
    password = alice(dataset).password.encode()
    assert run_pam(conf_path, None, password).returncode == 2
    assert run_pam(conf_path, "alice@example.com", password, pam_type="account").returncode == 2
    done = run_pam(dead_conf_path, "alice@example.com", password)
    assert (done.returncode, done.stdout, done.stderr) == (75, b"", b"")


@pytest.mark.parametrize(
    "extra_args",
    [("--no-such-option",), ("surplus",), ("--config",), ("--write-userdb", "/tmp")],
    ids=repr,
)
def test_pam_auth_usage_errors_exit_2(
    conf_path: Path, dataset: Dataset, extra_args: tuple[str, ...]
) -> None:
    """Through the installed console script and its guard: argv misuse is 2, silently,
    even with the right password (``--write-userdb`` is mailrouter-userdb's now)."""
    done = run_pam(conf_path, "alice@example.com", alice(dataset).password.encode(), extra_args=extra_args)
    assert (done.returncode, done.stdout, done.stderr) == (2, b"", b"")


def run_userdb(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([USERDB, *argv], env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=False)


def test_userdb_usage_and_temporary(conf_path: Path, dead_conf_path: Path, tmp_path: Path) -> None:
    assert run_userdb("--config", str(conf_path)).returncode == 2  # no DIR
    assert run_userdb("--config", str(conf_path), str(tmp_path), "surplus").returncode == 2
    assert run_userdb("--config", str(conf_path), "--no-such-option", str(tmp_path)).returncode == 2
    done = run_userdb("--config", str(dead_conf_path), str(tmp_path))
    assert (done.returncode, done.stdout) == (75, b"")
    assert done.stderr.startswith(b"mailrouter-userdb: not updated: ")
    assert list(tmp_path.glob("*.user")) == []
    assert run_userdb("--config", str(conf_path), str(tmp_path / "missing")).returncode == 75


def test_write_userdb(conf_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "userdb"
    target.mkdir()
    stale = {"userName": "gone@example.com", "uid": 8, "gid": 8, "service": "io.mailrouter"}
    (target / "gone@example.com.user").write_text(json.dumps(stale))
    (target / "admin.user").write_text(json.dumps({"userName": "admin", "uid": 1000, "gid": 1000}))
    done = run_userdb("--config", str(conf_path), str(target))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    files = sorted(p.name for p in target.iterdir())
    assert "alice@example.com.user" in files and "carol@example.org.user" in files
    assert "gone@example.com.user" not in files  # ours, user gone: removed
    assert "admin.user" in files  # not ours: kept
    assert DISABLED + ".user" not in files
    record = json.loads((target / "alice@example.com.user").read_text())
    assert record == {
        "userName": "alice@example.com",
        "uid": 8,
        "gid": 8,
        "homeDirectory": "/nonexistent",
        "shell": "/usr/sbin/nologin",
        "service": "io.mailrouter",
    }


# -- mailrouter-checkpassword ------------------------------------------------------
def run_checkpassword(
    conf_path: Path | None,
    tmp_path: Path,
    request: bytes | None,
    prog: list[str],
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real executable with ``request`` on fd 3, as the protocol says."""
    argv = [CHECKPASSWORD] + (["--config", str(conf_path)] if conf_path else []) + prog
    if request is None:
        shell = 'exec "$@" 3<&-'
    else:
        request_file = tmp_path / "request"
        request_file.write_bytes(request)
        shell = f'exec "$@" 3<"{request_file}"'
    return subprocess.run(
        ["/bin/sh", "-c", shell, "sh", *argv],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        check=False,
        timeout=60,
    )


def parse_env(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)


def test_checkpassword_success_execs_with_dovecot_variables(
    conf_path: Path, dataset: Dataset, tmp_path: Path
) -> None:
    request = b"alice@example.com\0" + alice(dataset).password.encode() + b"\0\0"
    done = run_checkpassword(conf_path, tmp_path, request, ["/usr/bin/env"])
    assert done.returncode == 0, done
    env = parse_env(done.stdout)
    assert env["USER"] == "alice@example.com"
    assert env["HOME"] == "/var/mail/example.com/alice"
    assert (env["userdb_uid"], env["userdb_gid"]) == ("8", "8")
    assert env["userdb_mail"] == "mbox:~/mail:INBOX=/var/mail/alice@example.com"
    assert env["EXTRA"] == "userdb_uid userdb_gid userdb_mail"
    assert "AUTHORIZED" not in env
    assert done.stderr == b""


@pytest.mark.parametrize("case", CASES)
def test_checkpassword_refusals_exit_1(
    conf_path: Path, dataset: Dataset, tmp_path: Path, case: str
) -> None:
    login, password = refusal_cases(dataset)[case]
    if "\x00" in login:
        pytest.skip("the protocol cannot carry a NUL in the login")
    request = login.encode() + b"\0" + password.encode() + b"\0\0"
    done = run_checkpassword(conf_path, tmp_path, request, ["/usr/bin/env"])
    assert (done.returncode, done.stdout, done.stderr) == (1, b"", b"")


@pytest.mark.parametrize("case", HOSTILE_PASSWORDS)
def test_checkpassword_hostile_passwords_exit_1(
    conf_path: Path, demo_data: demo.DemoDirectory, tmp_path: Path, case: str
) -> None:
    """Dovecot's checkpassword: exit 1 for the known and the unknown user alike (the
    known one used to get 111, "temporary").  A NUL ends the password field."""
    for login in (b"alice@example.com", b"nobody@example.com"):
        request = login + b"\0" + HOSTILE_PASSWORDS[case] + b"\0\0"
        done = run_checkpassword(conf_path, tmp_path, request, ["/usr/bin/env"])
        assert (done.returncode, done.stdout, done.stderr) == (1, b"", b""), login
    for login in HOSTILE_LOGINS.values():
        if b"\x00" in login:
            continue  # the protocol cannot carry it
        request = login + b"\0" + alice(demo_data).password.encode() + b"\0\0"
        assert run_checkpassword(conf_path, tmp_path, request, ["/usr/bin/env"]).returncode == 1, login
    both = b"a" * 4988 + b"@example.com\0" + b"p" * 5000 + b"\0\0"  # 10 KB: still a refusal
    assert run_checkpassword(conf_path, tmp_path, both, ["/usr/bin/env"]).returncode == 1


def test_checkpassword_misuse_and_temporary(
    conf_path: Path, dead_conf_path: Path, dataset: Dataset, tmp_path: Path
) -> None:
    good = b"alice@example.com\0" + alice(dataset).password.encode() + b"\0\0"
    assert run_checkpassword(conf_path, tmp_path, good, []).returncode == 2  # no PROG
    assert run_checkpassword(conf_path, tmp_path, None, ["/usr/bin/env"]).returncode == 2  # no fd 3
    assert run_checkpassword(conf_path, tmp_path, b"alice@example.com", ["/usr/bin/env"]).returncode == 2
    assert run_checkpassword(conf_path, tmp_path, b"x" * 70000, ["/usr/bin/env"]).returncode == 2
    done = run_checkpassword(dead_conf_path, tmp_path, good, ["/usr/bin/env"])
    assert (done.returncode, done.stdout) == (111, b"")
    done = run_checkpassword(conf_path, tmp_path, good, ["/nonexistent/prog"])
    assert done.returncode == 111


def test_checkpassword_config_from_environment(
    conf_path: Path, dataset: Dataset, tmp_path: Path
) -> None:
    good = b"alice@example.com\0" + alice(dataset).password.encode() + b"\0\0"
    done = run_checkpassword(
        None, tmp_path, good, ["/usr/bin/env"], env={"MAILROUTER_CONFIG": str(conf_path)}
    )
    assert done.returncode == 0


def test_checkpassword_authorized_lookup(conf_path: Path, tmp_path: Path) -> None:
    """Dovecot userdb lookups: AUTHORIZED=1, no password; answer AUTHORIZED=2."""
    done = run_checkpassword(
        conf_path, tmp_path, b"bob@example.com\0\0\0", ["/usr/bin/env"], env={"AUTHORIZED": "1"}
    )
    assert done.returncode == 0
    env = parse_env(done.stdout)
    assert (env["USER"], env["AUTHORIZED"]) == ("bob@example.com", "2")
    for login in (DISABLED, "nobody@example.com", "BOB@example.com"):
        request = login.encode() + b"\0\0\0"
        assert (
            run_checkpassword(
                conf_path, tmp_path, request, ["/usr/bin/env"], env={"AUTHORIZED": "1"}
            ).returncode
            == 1
        )
    # Without AUTHORIZED=1 the empty password is a plain refusal.
    assert run_checkpassword(conf_path, tmp_path, b"bob@example.com\0\0\0", ["/usr/bin/env"]).returncode == 1


# -- mailrouter-passwd ---------------------------------------------------------------
def slapcat_password(server: Slapd, dn: str) -> str:
    done = subprocess.run(
        ["slapcat", "-f", str(server.conf_path), "-a", f"(entryDN={dn})"], capture_output=True, check=True
    )
    text = done.stdout.decode().replace("\n ", "")
    for line in text.splitlines():
        if line.startswith("userPassword:: "):
            return base64.b64decode(line.split(" ", 1)[1]).decode()
        if line.startswith("userPassword: "):
            return line.split(" ", 1)[1]
    raise AssertionError("no userPassword")


def test_passwd_changes_own_password_hashed(tmp_path: Path, dataset: Dataset) -> None:
    from mailrouter.cmd import passwd

    server = start_slapd(tmp_path / "slapd", dataset)
    try:
        path = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [server.uri])
        secret = secret_path(path)
        secret.rename(tmp_path / "hidden")  # the tool must not need the service account
        old = dataset.account("bob@example.com").password
        new = "a brand new passphrase"
        old_file, new_file = tmp_path / "old", tmp_path / "new"
        old_file.write_text(old + "\n")
        new_file.write_text(new + "\n")
        argv = [
            "--config",
            str(path),
            "--login",
            "bob@example.com",
            "--old-password-file",
            str(old_file),
            "--new-password-file",
            str(new_file),
        ]
        assert passwd.main(argv) == 0
        stored = slapcat_password(server, dataset.account("bob@example.com").dn)
        assert stored.startswith("{ARGON2}$argon2id$") and new not in stored
        (tmp_path / "hidden").rename(secret)
        conf = config.load(str(path))
        assert auth.authenticate(conf, "bob@example.com", new).ok
        assert auth.authenticate(conf, "bob@example.com", old).verdict is auth.Verdict.REFUSED
        # The old password is now wrong: refused, nothing changed.
        assert passwd.main(argv) == 1
        assert auth.authenticate(conf, "bob@example.com", new).ok
        # Bad new passwords never reach LDAP.
        old_file.write_text(new + "\n")
        for bad in ("short", new, "tab\there ok?"):
            new_file.write_text(bad + "\n")
            assert passwd.main(argv) == 2
        # Another user's login with bob's password: refused.
        new_file.write_text("yet another passphrase\n")
        argv[3] = "alice@example.com"
        assert passwd.main(argv) == 1
        argv[3] = "BOB@example.com"
        assert passwd.main(argv) == 1
        # The shipped bin/ script, both passwords on stdin.
        done = subprocess.run(
            [
                str(ROOT / "bin" / "mailrouter-passwd"),
                "--config",
                str(path),
                "--login",
                "bob@example.com",
                "--old-password-file",
                "-",
                "--new-password-file",
                "-",
            ],
            input=f"{new}\nthe third passphrase\n".encode(),
            capture_output=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", **VENV_ENV},  # the wrapper runs the venv under test
        )
        assert (done.returncode, done.stdout) == (0, b"mailrouter-passwd: password changed\n"), done.stderr
        assert auth.authenticate(conf, "bob@example.com", "the third passphrase").ok
        server.stop()
        argv[3] = "bob@example.com"
        assert passwd.main(argv) == 75
    finally:
        server.stop()


def test_passwd_says_when_the_outcome_is_unknown(
    tmp_path: Path, dataset: Dataset, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A change sent with no answer back (directory.Session raises it, see
    test_directory) is 75, but never "try again later" as if nothing happened."""
    from mailrouter.cmd import passwd
    from mailrouter.errors import WriteOutcomeUnknown

    def no_answer(self: object, dn: str, changes: object) -> None:
        raise WriteOutcomeUnknown(f"modify {dn}: the outcome is unknown")

    monkeypatch.setattr(passwd.Session, "modify", no_answer)
    path = hook_config(tmp_path / "c" / "mailrouter.toml", dataset, [f"ldap://127.0.0.1:{free_port()}/"])
    (tmp_path / "pw").write_text(dataset.account("bob@example.com").password + "\na brand new passphrase\n")
    argv = ["--config", str(path), "--login", "bob@example.com",
            "--old-password-file", "-", "--new-password-file", "-"]
    with (tmp_path / "pw").open() as stdin:
        assert passwd.main(argv, stdin=stdin) == 75
    err = capsys.readouterr().err
    assert "may have been applied" in err and "unavailable" not in err


def test_shipped_pam_file_names_the_installed_helper() -> None:
    text = (ROOT / "popa3d" / "pam.d-popa3d").read_text()
    rules = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    auth_rules = [rule for rule in rules if rule[0] == "auth"]
    assert auth_rules == [
        [
            "auth",
            "required",
            "pam_exec.so",
            "expose_authtok",
            "quiet",
            "/opt/mailrouter/venv/bin/mailrouter-pam-auth",
            "--config",
            "/etc/mailrouter/mailrouter.toml",
            "--userdb",
            "/etc/userdb",
        ]
    ]
