"""The ``mailrouter-lookup`` contract, run exactly as Exim runs it.

The installed console script (``conftest.BIN``/mailrouter-lookup) is started
as Debian-exim with no environment, against a private slapd loaded from the
project's ldap/ files and the suite's data set.  (The same decisions against an
in-memory directory, without a process: tests/unit/test_routing.py.)  Every
call checks the two rules Exim depends on: stderr stays empty (Exim merges it
into the answer) and the exit code is 0 (answer), 1 (LDAP said no) or 75
(anything else).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, hook_config, needs_root, start_slapd
from dataset import Dataset
from mailrouter import routing
from mailrouter.sandbox.configs import write_config, write_private
from mailrouter.sandbox.exim import EXIM_USER, make_readable_dir
from mailrouter.sandbox.slapd import Slapd

pytestmark = needs_root

LOOKUP = str(BIN / "mailrouter-lookup")
BASE = "o=top"
RUN_TIMEOUT = 60  # Exim's own ${run} limit: the hook must always finish well inside it


@dataclass
class Setup:
    workdir: Path
    slapd: Slapd
    config: Path
    spool: Path

    def run(self, *args: str, config: Path | None = None) -> tuple[int, str]:
        """Run the hook as Exim does; assert the stderr rule; return (rc, stdout)."""
        done = subprocess.run(
            [LOOKUP, "--config", str(config or self.config), *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={},
            cwd=self.workdir,
            user=EXIM_USER,
            group=EXIM_USER,
            extra_groups=[],
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert done.stderr == b"", done.stderr
        assert done.returncode in (0, 1, 75), done.returncode
        stdout = done.stdout.decode("utf-8")
        if done.returncode != 0:
            assert stdout == "", stdout
        else:
            assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
        return done.returncode, stdout.rstrip("\n")


@pytest.fixture(scope="module")
def setup(dataset: Dataset) -> Iterator[Setup]:
    workdir = Path(tempfile.mkdtemp(prefix="mailrouter-lookup-"))
    slapd: Slapd | None = None
    try:
        workdir.chmod(0o755)
        slapd = start_slapd(workdir / "slapd", dataset)
        spool = make_readable_dir(workdir / "mail")
        (spool / "fulluser@example.com").write_bytes(b"x" * 2048)
        config = hook_config(workdir / "mailrouter.toml", dataset, [slapd.uri], spool)
        yield Setup(workdir, slapd, config, spool)
    finally:
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- answers -----------------------------------------------------------------------

def test_user_address_data_is_the_delivery_contract(setup: Setup) -> None:
    rc, out = setup.run("user", "alice", "example.com")
    assert rc == 0
    # Path from the template, not LDAP's mailMessageStore; ids of the storage account "mail".
    assert out == f"mailbox={setup.spool}/alice@example.com format=mbox quota=10M uid=8 gid=8"


def test_user_ignores_ldap_mailbox_and_ids(setup: Setup) -> None:
    rc, out = setup.run("user", "fulluser", "example.com")
    assert rc == 0
    assert out == f"mailbox={setup.spool}/fulluser@example.com format=mbox quota=1K uid=8 gid=8"


def test_unknown_and_disabled_users_are_not_found(setup: Setup) -> None:
    assert setup.run("user", "nobody", "example.com") == (1, "")
    assert setup.run("user", "disabled", "example.com") == (1, "")
    assert setup.run("user", "alice", "example.org") == (1, "")


def test_garbled_quota_is_temporary(setup: Setup) -> None:
    assert setup.run("user", "garbled", "example.com") == (75, "")


def test_domains(setup: Setup) -> None:
    assert setup.run("domain", "example.com") == (0, "example.com")
    assert setup.run("domain", "example.net") == (1, "")
    assert setup.run("backup-mx", "backup.example") == (0, "backup.example")
    assert setup.run("backup-mx", "example.com") == (1, "")


def test_alias_redirect_data(setup: Setup) -> None:
    assert setup.run("alias", "team", "example.com") == (0, "alice@example.com, bob@example.com")
    assert setup.run("alias", "alice", "example.com") == (1, "")
    assert setup.run("alias", "gone", "example.com") == (0, routing.FAIL_DISABLED)


def test_alias_targets_are_plain_addresses_only(setup: Setup) -> None:
    rc, out = setup.run("alias", "oddtargets", "example.com")
    assert rc == 0
    assert out == "bob@example.com, Remote.User@remote.example"
    assert setup.run("alias", "pipeonly", "example.com") == (0, routing.FAIL_NO_TARGET)


def test_catchall(setup: Setup) -> None:
    assert setup.run("catchall", "whoever", "example.org") == (0, "carol@example.org")
    assert setup.run("catchall", "whoever", "example.com") == (1, "")  # no catch-all
    assert setup.run("catchall", "whoever", "remote.example") == (1, "")
    assert setup.run("catchall", "disabled", "example.com") == (0, routing.FAIL_DISABLED)
    assert setup.run("catchall", "loopa", "example.com") == (0, routing.FAIL_ALIAS_LOOP)
    assert setup.run("catchall", "a/b", "example.org") == (0, routing.FAIL_BAD_LOCAL_PART)
    assert setup.run("catchall", "a/b", "remote.example") == (1, "")


def test_quota_follows_aliases(setup: Setup) -> None:
    # fulluser (1K quota) already holds more than its quota: full whatever the size...
    assert setup.run("quota", "fulluser", "example.com", "-1") == (0, "full fulluser@example.com")
    # ...and a message of known size can never fit 1K with what delivery adds.
    assert setup.run("quota", "fulluser", "example.com", "100") == (0, "toobig fulluser@example.com")
    # fullchain -> fullnested -> fulluser (and a remote address, which has no quota here).
    assert setup.run("quota", "fullchain", "example.com", "-1") == (0, "full fulluser@example.com")
    assert setup.run("quota", "loopa", "example.com", "100") == (1, "")
    assert setup.run("quota", "alice", "example.com", "1000") == (1, "")
    too_big = str(11 * 1024 * 1024)
    assert setup.run("quota", "alice", "example.com", too_big) == (0, "toobig alice@example.com")
    assert setup.run("quota", "team", "example.com", str(11 * 1024 * 1024)) == (
        0,
        "toobig alice@example.com bob@example.com",
    )


def test_policy_settings(setup: Setup) -> None:
    assert setup.run("relay-host", "127.0.0.1") == (0, "yes")
    assert setup.run("relay-host", "::1") == (0, "yes")
    assert setup.run("relay-host", "::ffff:127.0.0.1") == (0, "yes")
    assert setup.run("relay-host", "192.0.2.10") == (1, "")
    assert setup.run("relay-host", "") == (1, "")
    assert setup.run("blacklisted-host", "192.0.2.66") == (0, "yes")
    assert setup.run("blacklisted-host", "192.0.2.67") == (1, "")
    assert setup.run("blacklisted-sender", "Spammer@Bad.Example") == (0, "yes")
    assert setup.run("blacklisted-sender", "x@deep.sub.spam.example") == (0, "yes")
    assert setup.run("blacklisted-sender", "x@notspam.example") == (1, "")
    assert setup.run("blacklisted-sender", "") == (1, "")


def test_sender_ownership(setup: Setup) -> None:
    assert setup.run("sender-owner", "alice@example.com", "alice@example.com") == (0, "yes")
    assert setup.run("sender-owner", "team@example.com", "alice@example.com") == (0, "yes")
    assert setup.run("sender-owner", "bob@example.com", "alice@example.com") == (1, "")
    assert setup.run("sender-owner", "alice@example.org", "alice@example.com") == (1, "")
    assert setup.run("sender-owner", "", "alice@example.com") == (1, "")


def test_sender_ownership_can_be_switched_off(setup: Setup, dataset: Dataset) -> None:
    relaxed = hook_config(
        setup.workdir / "relaxed.toml", dataset, [setup.slapd.uri], setup.spool, sender_ownership=False
    )
    assert setup.run("sender-owner", "bob@example.com", "alice@example.com", config=relaxed) == (
        0,
        "yes",
    )


# -- hostile keys --------------------------------------------------------------------

HOSTILE_KEYS = [
    "ALICE",
    "Alice",
    "alice ",
    " alice",
    "alice\n",
    "alice\t",
    "*",
    "alice*",
    "al*",
    "alice)(uid=*",
    "(uid=*)",
    "alice,dc=example.org",
    "uid=alice",
    "alice\\",
    "alice\\2a",
    "../alice",
    "..",
    ".",
    "a/b",
    "${run{/bin/id}}",
    "|/bin/id",
    "alice\x7f",
    "alicé",
    "a" * 65,
    "a" * 5000,
    "",
    "--config",
    "-h",
]


@pytest.mark.parametrize("kind", ["user", "alias"])
def test_hostile_local_parts_match_nothing(setup: Setup, kind: str) -> None:
    for key in HOSTILE_KEYS:
        assert setup.run(kind, key, "example.com") == (1, ""), key


def test_hostile_quota_keys_match_nothing(setup: Setup) -> None:
    for key in ("FULLUSER", "fulluser ", "fulluser*", "*", "../fulluser"):
        assert setup.run("quota", key, "example.com", "100") == (1, ""), key


def test_hostile_domains_match_nothing(setup: Setup) -> None:
    # The IDN domain exists in its A-label form only: the U-label names nothing.
    assert setup.run("domain", "xn--bcher-kva.example") == (0, "xn--bcher-kva.example")
    for key in ["EXAMPLE.COM", "example.com.", "*", "*.com", "example.com)(dc=*", "..", "com",
                "example.com,o=top", "XN--BCHER-KVA.example", "bücher.example", "a" * 300]:
        assert setup.run("domain", key) == (1, ""), key
        assert setup.run("user", "alice", key) == (1, ""), key
        assert setup.run("catchall", "x", key) == (1, ""), key


# -- everything else is 75, silently ---------------------------------------------------

def test_usage_errors_are_temporary(setup: Setup) -> None:
    assert setup.run("nonsense", "x") == (75, "")
    assert setup.run("user", "alice") == (75, "")
    assert setup.run("user", "alice", "example.com", "extra") == (75, "")
    assert setup.run() == (75, "")


def test_config_problems_are_temporary(setup: Setup, dataset: Dataset) -> None:
    assert setup.run("domain", "example.com", config=setup.workdir / "missing.toml") == (75, "")
    garbage = write_private(setup.workdir / "garbage.toml", "[ldap\nuris = ")
    assert setup.run("domain", "example.com", config=garbage) == (75, "")
    unreadable = setup.workdir / "root-only.toml"
    shutil.copy(setup.config, unreadable)
    unreadable.chmod(0o600)
    assert setup.run("domain", "example.com", config=unreadable) == (75, "")
    wrong_password = write_config(
        setup.workdir / "wrong.toml",
        uris=[setup.slapd.uri],
        base_dn=BASE,
        bind_dn=dataset.account("service").dn,
        password="not-the-password",
        mbox_template=f"{setup.spool}/{{local}}@{{domain}}",
    )
    assert setup.run("domain", "example.com", config=wrong_password) == (75, "")


def test_failed_import_is_temporary_and_silent(setup: Setup) -> None:
    # A package whose lookup module cannot be imported (a broken install), shadowing
    # the real one; the console script's guard must still answer 75 and stay silent.
    import mailrouter.cmd.guard

    shadow = setup.workdir / "shadow" / "mailrouter"
    (shadow / "cmd").mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "cmd" / "__init__.py").write_text("")
    shutil.copy(mailrouter.cmd.guard.__file__, shadow / "cmd" / "guard.py")
    import mailrouter.exitcodes

    shutil.copy(mailrouter.exitcodes.__file__, shadow / "exitcodes.py")
    (shadow / "cmd" / "lookup.py").write_text("import mailrouter_no_such_module  # noqa\n")
    for path in (shadow.parent, shadow, *shadow.iterdir(), *(shadow / "cmd").iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    done = subprocess.run(
        [LOOKUP, "--config", str(setup.config), "domain", "example.com"],
        capture_output=True,
        env={"PYTHONPATH": str(shadow.parent)},
        user=EXIM_USER,
        group=EXIM_USER,
        extra_groups=[],
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (75, b"", b"")


@pytest.mark.slow
def test_ldap_stopped_or_frozen_is_temporary(setup: Setup) -> None:
    setup.slapd.stop()
    try:
        for args in (("domain", "example.com"), ("user", "alice", "example.com"),
                     ("alias", "team", "example.com"), ("relay-host", "127.0.0.1")):
            assert setup.run(*args) == (75, ""), args
    finally:
        setup.slapd.restart()
    setup.slapd.freeze()
    try:
        # Bounded by the config's timeouts (2 s here), far inside Exim's 60 s.
        assert setup.run("user", "alice", "example.com") == (75, "")
    finally:
        setup.slapd.thaw()
    assert setup.run("user", "alice", "example.com")[0] == 0
