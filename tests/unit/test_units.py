"""Pure functions: config parsing, canonical names, quotas, mailbox paths, the entry guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, install_differences
from mailrouter import config, names, quota
from mailrouter.errors import ConfigError, InvalidName
from mailrouter.mailbox import spool


def write_config(tmp_path: Path, text: str) -> str:
    (tmp_path / "secret").write_text("s3cret\n")
    path = tmp_path / "mailrouter.toml"
    path.write_text(text)
    return str(path)


def test_config_reads_a_full_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[ldap]
uris = ["ldap://a/", "ldap://b/"]
bind_dn = "uid=mailrouter,o=top"
bind_password_file = "secret"
operation_timeout = 2
[spool]
format = "maildir"
""",
    )
    loaded = config.load(path)
    assert loaded.ldap.uris == ("ldap://a/", "ldap://b/")
    assert loaded.ldap.service_password() == "s3cret"
    assert loaded.ldap.operation_timeout == 2.0
    assert loaded.spool.format == "maildir"
    assert loaded.spool.storage_uid == 8  # Debian's "mail"
    assert "s3cret" not in repr(loaded)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[ldap]\nuris = []\n",
        "[ldap]\nuris = 'ldap://a/'\n",
        "[ldap]\nuris = ['ldap://a/']\nbind_dn = 'x'\n",
        "[ldap]\nuris = ['ldap://a/']\noperation_timeout = 90\n",
        "[ldap]\nuris = ['ldap://a/']\nconnect_timeout = true\n",
        "[ldap]\nuris = ['ldap://a/']\n[spool]\nformat = 'mh'\n",
        "[ldap]\nuris = ['ldap://a/']\n[spool]\nmbox_template = 'mail/{local}'\n",
        "[ldap]\nuris = ['ldap://a/']\n[spool]\nstorage_user = 'root'\n",
        "[ldap]\nuris = ['ldap://a/']\n[spool]\nstorage_user = 'no-such-user-here'\n",
        "not toml at all [",
        "[ldap]\nuris = ['ldap://a/']\nconnection_max_requests = 0\n",
        "[ldap]\nuris = ['ldap://a/']\nconnection_max_age = -1\n",
        "[ldap]\nuris = ['ldap://a/']\n[auth]\nargon2_time = 0\n",
        "[ldap]\nuris = ['ldap://a/']\n[auth]\nargon2_memory_kib = '64M'\n",
        "[ldap]\nuris = ['ldap://a/']\n[auth]\nargon2_memory_kib = 16\nargon2_parallelism = 4\n",
    ],
)
def test_config_errors_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        config.load(write_config(tmp_path, text))


def test_the_secret_is_read_when_needed_not_at_load(tmp_path: Path) -> None:
    text = "[ldap]\nuris = ['ldap://a/']\nbind_dn = 'x'\nbind_password_file = 'missing'\n"
    path = write_config(tmp_path, text)
    loaded = config.load(path)  # the delivery hook loads the file without the secret
    with pytest.raises(ConfigError):
        loaded.ldap.service_password()


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config.load(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("good", ["alice", "a.b", "x+tag", "first_last", "a-b", "a=b", "a" * 64, "0"])
def test_canonical_local_parts(good: str) -> None:
    assert names.local_part(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "Alice", "a/b", "../x", ".alice", "alice.", "a..b", "a b", "a\x00", "a\n", "a" * 65,
     "é", "a*", "a(", "a\\b", '"a"', "${run{x}}", "a,b", "a@b"],
)
def test_non_canonical_local_parts_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        names.local_part(bad)


@pytest.mark.parametrize("bad", ["", "com", "Example.com", "a..com", "-a.com", "a-.com", "ex_ample.com",
                                 "exämple.com", "a." * 127 + "com", "x" * 64 + ".com", "a/b.com"])
def test_non_canonical_domains_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        names.domain(bad)


def test_addresses() -> None:
    assert names.address("bob@xn--bcher-kva.example") == ("bob", "xn--bcher-kva.example")
    for bad in ["bob", "bob@", "@example.com", "BOB@example.com", "../x@example.com", "a@b@example.com"]:
        with pytest.raises(InvalidName):
            names.address(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 0), ("", 0), ("0", 0), ("1024", 1024), ("32M", 32 * 1024**2), ("1G", 1024**3), ("500k", 512000)],
)
def test_quota_values(raw: str | None, expected: int) -> None:
    assert quota.parse_quota(raw) == expected


@pytest.mark.parametrize("raw", ["lots", "-1", "32 MB extra", "1T", "1.5G"])
def test_garbled_quotas(raw: str) -> None:
    with pytest.raises(quota.GarbledQuota):
        quota.parse_quota(raw)


def test_mailbox_paths_stay_in_the_spool() -> None:
    template = "/var/mail/{local}@{domain}"
    assert spool.mailbox_path(template, "bob", "example.com") == "/var/mail/bob@example.com"
    assert spool.mailbox_path("/opt/mailspool/{domain}/{local}", "bob", "example.com") == (
        "/opt/mailspool/example.com/bob"
    )
    for local, domain in [("..", "example.com"), ("a/../../etc", "example.com"), ("bob", "../etc")]:
        with pytest.raises(InvalidName):
            spool.mailbox_path("/var/mail/{local}@{domain}", local, domain)


def test_entry_guard_turns_a_broken_import_into_the_temporary_code() -> None:
    code = (
        "import sys; from mailrouter.cmd.guard import _guarded; "
        "sys.exit(_guarded('mailrouter.no_such_module', 75, True))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 75
    assert done.stderr == b"" and done.stdout == b""


def test_ci_runs_exactly_the_readme_test_command() -> None:
    debian12, marker, debian13 = (ROOT / ".ci" / "run").read_text().partition(
        "\n# -- after the README's test command"
    )
    assert marker and "\nbash .ci/trixie\n" in debian13  # then the Debian 13 stage
    ci_commands = [
        line.strip()
        for line in debian12.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    readme = (ROOT / "README.md").read_text()
    test_command = " && ".join(ci_commands)
    assert f"\n{test_command}\n" in readme, test_command


def test_install_check_names_every_difference(tmp_path: Path) -> None:
    """The session-start check (conftest.pytest_sessionstart) compares bytes of every *.py."""
    checkout, installed = tmp_path / "hooks", tmp_path / "site-packages"
    for tree in (checkout, installed):
        (tree / "sub" / "__pycache__").mkdir(parents=True)
        (tree / "same.py").write_text("x = 1\n")
        (tree / "sub" / "__pycache__" / "ignored.py").write_text(str(tree))
    (checkout / "sub" / "changed.py").write_text("x = 1\n")
    (installed / "sub" / "changed.py").write_text("x = 2\n")
    (checkout / "new.py").write_text("")
    (installed / "gone.py").write_text("")
    assert install_differences(installed, checkout) == [
        "missing from the install: new.py",
        "not in hooks/: gone.py",
        "differs: sub/changed.py",
    ]
    assert install_differences(checkout, checkout) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("spammer@bad.example", ("spammer", "bad.example")),
        ('"spammer"@bad.example', ("spammer", "bad.example")),
        ('"Spam\\Mer"@BAD.Example.', ("spammer", "bad.example")),
        ('"spam"mer@bad.example', ("spammer", "bad.example")),
        ('"a\\"b"@x.example', ('a"b', "x.example")),
        ('"a@b"@x.example', ("a@b", "x.example")),
        ('"a b"@x.example', ("a b", "x.example")),
        ("ÄLICE@x.example", ("Älice", "x.example")),  # ASCII-only lower case, as Exim's
        ("", None),
        ("no-at-sign", None),
        ('""@x.example', None),
        ("a@", None),
        ("a@.", None),
    ],
)
def test_envelope_address_is_the_form_exim_routes(raw: str, expected: tuple[str, str] | None) -> None:
    assert names.envelope_address(raw) == expected


def test_connection_and_argon2_settings(tmp_path: Path) -> None:
    defaults = config.load(write_config(tmp_path, "[ldap]\nuris = ['ldap://a/']\n"))
    assert (defaults.ldap.connection_max_requests, defaults.ldap.connection_max_age,
            defaults.ldap.connection_max_idle) == (1000, 300.0, 20.0)
    from mailrouter import passwords

    # Left out: passwords.ARGON2_*, RFC 9106's second recommended option.
    assert passwords.configured_cost(defaults.auth) == passwords.ARGON2 == passwords.RFC9106_SECOND
    text = ("[ldap]\nuris = ['ldap://a/']\nconnection_max_requests = 5\nconnection_max_age = 2\n"
            "[auth]\nargon2_memory_kib = 8192\nargon2_time = 2\n")
    loaded = config.load(write_config(tmp_path, text))
    assert (loaded.ldap.connection_max_requests, loaded.ldap.connection_max_age) == (5, 2.0)
    cost = passwords.configured_cost(loaded.auth)
    assert cost == passwords.Argon2Cost(8192, 2, passwords.ARGON2_PARALLELISM)
    assert passwords.configured_label(loaded.auth) == "{ARGON2}m=8192,t=2,p=4"
    assert passwords.slapd_moduleload(cost) == "argon2 m=8192 t=2 p=4"
    assert "$m=8192,t=2,p=4$" in passwords.configured_hash("pw", loaded.auth)
    # The dummy work of an unknown user costs what the configured hashes cost.
    assert "$m=8192,t=2,p=4$" in passwords.dummy_work("pw", cost)
