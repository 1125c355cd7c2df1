"""The lean POP3/PAM path: ``mailrouter-pam-auth --authd-socket`` asking a real mailrouter-authd.

The helper runs exactly as pam_exec runs it (the installed console script, the
login in PAM_USER, the password on stdin, a clean environment); authd is the
real daemon over the suite's slapd.  The end-to-end test logs in through stock
popa3d with the shipped ``popa3d/pam.d-popa3d-authd``.
"""

from __future__ import annotations

import json
import os
import poplib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, CASES, ROOT, alice, hook_config, needs_root, refusal_cases
from dataset import DISABLED_LOGIN, DISABLED_PASSWORD, Dataset
from mailrouter import userrecords
from mailrouter.sandbox.popa3d import Popa3d
from mailrouter.sandbox.slapd import Slapd
from test_auth import HOSTILE_PASSWORDS
from test_authd import Authd
from test_pop3 import MESSAGE, REFUSAL, login_reply, write_mailbox

pytestmark = needs_root

PAM_AUTH = str(BIN / "mailrouter-pam-auth")
# What the lean path must never load: the LDAP library, a TOML parser, the
# password library, and the project modules that pull them in.
HEAVY = ("ldap3", "tomllib", "tomli", "passlib", "mailrouter.config", "mailrouter.directory",
         "mailrouter.auth", "mailrouter.passwords")


class Setup:
    def __init__(self, workdir: Path, authd: Authd, config: Path) -> None:
        self.workdir = workdir
        self.authd = authd
        self.config = config
        self.userdb = workdir / "userdb"

    def pam(
        self, login: str, password: bytes, sock: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [PAM_AUTH, "--authd-socket", str(sock or self.authd.socket_path), "--userdb", str(self.userdb)],
            input=password,
            env={"PATH": "/usr/bin:/bin", "PAM_TYPE": "auth", "PAM_SERVICE": "popa3d", "PAM_USER": login},
            capture_output=True, check=False, timeout=60,
        )


@pytest.fixture(scope="module")
def setup(slapd: Slapd, dataset: Dataset) -> Iterator[Setup]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-pam-authd-"))
    try:
        workdir.chmod(0o755)
        (workdir / "userdb").mkdir()
        config = hook_config(workdir / "conf" / "mailrouter.toml", dataset, [slapd.uri])
        server = Authd(workdir, config, "--workers", "2")
        try:
            yield Setup(workdir, server, config)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_accepts_silently_and_writes_the_record(setup: Setup, dataset: Dataset) -> None:
    record = setup.userdb / "alice@example.com.user"
    record.unlink(missing_ok=True)
    done = setup.pam("alice@example.com", alice(dataset).password.encode())
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    # The very record the full path writes (mailrouter.userrecords).
    assert json.loads(record.read_text()) == {
        "userName": "alice@example.com", "uid": 8, "gid": 8, "homeDirectory": userrecords.NO_HOME,
        "shell": userrecords.NOLOGIN_SHELL, "service": userrecords.USERDB_SERVICE,
    }
    assert setup.pam("alice@example.com", alice(dataset).password.encode() + b"\0").returncode == 0


@pytest.mark.parametrize("case", CASES)
def test_refusals_exit_1(setup: Setup, dataset: Dataset, case: str) -> None:
    login, password = refusal_cases(dataset)[case]
    if "\x00" in login:
        pytest.skip("an environment variable cannot hold a NUL")
    done = setup.pam(login, password.encode())
    assert (done.returncode, done.stdout, done.stderr) == (1, b"", b"")


@pytest.mark.parametrize("case", HOSTILE_PASSWORDS)
def test_hostile_passwords_exit_1(setup: Setup, case: str) -> None:
    for login in ("alice@example.com", "nobody@example.com"):
        done = setup.pam(login, HOSTILE_PASSWORDS[case])
        assert (done.returncode, done.stdout, done.stderr) == (1, b"", b""), login


def test_authd_unreachable_is_temporary(setup: Setup, dataset: Dataset) -> None:
    password = alice(dataset).password.encode()
    done = setup.pam("alice@example.com", password, sock=setup.workdir / "absent.sock")
    assert (done.returncode, done.stdout, done.stderr) == (75, b"", b"")
    stale = setup.workdir / "stale.sock"  # a socket file nobody listens on
    import socket as socket_module

    with socket_module.socket(socket_module.AF_UNIX) as listener:
        listener.bind(str(stale))
    assert setup.pam("alice@example.com", password, sock=stale).returncode == 75


def write_record(setup: Setup, login: str) -> Path:
    userrecords.write(str(setup.userdb), login, {"userName": login, "uid": 8, "gid": 8,
                                                 "service": userrecords.USERDB_SERVICE})
    return setup.userdb / f"{login}.user"


def test_records_of_gone_or_disabled_users_are_removed(setup: Setup, dataset: Dataset) -> None:
    gone = write_record(setup, "nobody@example.com")
    assert setup.pam("nobody@example.com", b"whatever").returncode == 1
    assert not gone.exists()
    disabled = write_record(setup, DISABLED_LOGIN)
    assert setup.pam(DISABLED_LOGIN, DISABLED_PASSWORD.encode()).returncode == 1
    assert not disabled.exists()
    # A wrong password alone never removes a record.
    kept = write_record(setup, "bob@example.com")
    assert setup.pam("bob@example.com", b"wrong").returncode == 1
    assert kept.exists()


def test_the_lean_helper_loads_no_ldap_and_no_toml(setup: Setup, dataset: Dataset) -> None:
    """The console script's own entry point (guard.pam_auth), then a look at sys.modules."""
    probe = (
        "import sys\n"
        "from mailrouter.cmd import guard\n"
        f"sys.argv = ['mailrouter-pam-auth', '--authd-socket', {str(setup.authd.socket_path)!r},"
        f" '--userdb', {str(setup.userdb)!r}]\n"
        "code = guard.pam_auth()\n"
        "print(code)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [str(BIN / "python"), "-c", probe], input=alice(dataset).password.encode(),
        env={"PATH": "/usr/bin:/bin", "PAM_TYPE": "auth", "PAM_USER": "alice@example.com"},
        capture_output=True, check=False, timeout=60,
    )
    code, modules = done.stdout.decode().splitlines()
    assert code == "0", done
    loaded = set(modules.split())
    assert "mailrouter.cmd.pam_auth" in loaded
    assert not loaded.intersection(HEAVY), sorted(loaded.intersection(HEAVY))


def test_full_path_still_loads_them(setup: Setup, dataset: Dataset) -> None:
    """The same probe without --authd-socket: the check above can tell the two apart."""
    probe = (
        "import sys\n"
        "from mailrouter.cmd import guard\n"
        f"sys.argv = ['mailrouter-pam-auth', '--config', {str(setup.config)!r}]\n"
        "print(guard.pam_auth())\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], input=alice(dataset).password.encode(),
        env={"PATH": "/usr/bin:/bin", "PAM_TYPE": "auth", "PAM_USER": "alice@example.com"},
        capture_output=True, check=False, timeout=60,
    )
    code, modules = done.stdout.decode().splitlines()
    assert code == "0" and {"ldap3", "tomllib"} <= set(modules.split())


def test_popa3d_with_the_shipped_lean_pam_file(setup: Setup, dataset: Dataset) -> None:
    pop = Popa3d(setup.workdir / "pop", str(setup.config), root=ROOT, tls=False,
                 authd_socket=str(setup.authd.socket_path))
    pop.start()
    try:
        pam_file = (pop.pam_dir / "popa3d").read_text()
        assert "--authd-socket " + str(setup.authd.socket_path) in pam_file and "--config" not in pam_file
        write_mailbox(pop, "alice@example.com", MESSAGE)
        client = poplib.POP3("127.0.0.1", pop.port, timeout=30)
        try:
            assert login_reply(client, "alice@example.com", alice(dataset).password).startswith(b"+OK")
            assert client.stat()[0] == 1
        finally:
            client.quit()
        client = poplib.POP3("127.0.0.1", pop.port, timeout=30)
        try:
            assert login_reply(client, "alice@example.com", "wrong") == REFUSAL
        finally:
            client.close()
    finally:
        pop.stop()
    assert os.path.exists(pop.userdb / "alice@example.com.user")
