"""The mailbox package without daemons: the address-data contract, the storage-id rule,
one mailbox-size rule for RCPT time and delivery time, the store's own refusals."""

from __future__ import annotations

import ast
import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import mailrouter.mailbox
from mailrouter import routing
from mailrouter.config import SpoolConfig
from mailrouter.directory import User
from mailrouter.errors import ConfigError, OverQuota, TemporaryFailure
from mailrouter.mailbox import addressdata, maildir, mbox, spool, store, usage
from mailrouter.mailbox.addressdata import AddressData, format_address_data, parse_address_data

MAIL_UID = pwd.getpwnam("mail").pw_uid
MAIL_GID = grp.getgrnam("mail").gr_gid
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def make_user(local: str, quota: str | None = None) -> User:
    return User(dn=f"uid={local},dc=example.com,o=top", local=local, domain="example.com",
                uid_number=None, gid_number=None, quota=quota, active=True)


# --- the $address_data contract --------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        AddressData("/var/mail/alice@example.com", "mbox", "0", 8, 8),
        AddressData("/var/mail/example.com/bob/Maildir", "maildir", "32M", 1000, 1001),
        AddressData("/opt/mailspool/example.org/o'hara", "mbox", "1G", 5000, 100),
    ],
)
def test_address_data_round_trips(data: AddressData) -> None:
    line = format_address_data(data)
    assert "\n" not in line and len(line.split()) == len(addressdata.KEYS)
    assert parse_address_data(line) == data
    # Exim's ${extract{uid}{$address_data}} reads the same items.
    assert dict(item.split("=", 1) for item in line.split())["uid"] == str(data.uid)


@pytest.mark.parametrize(
    "data",
    [
        AddressData("/var/mail/a b@example.com", "mbox", "0", 8, 8),
        AddressData("/var/mail/a@example.com", "mbox", "", 8, 8),
        AddressData("/var/mail/a@example.com", "mh", "0", 8, 8),
        AddressData("/var/mail/a@example.com", "mbox", "0", -1, 8),
        AddressData("/var/mail/a@example.com", "mbox", "1\tG", 8, 8),
    ],
)
def test_address_data_that_would_not_read_back_is_refused(data: AddressData) -> None:
    with pytest.raises(ConfigError):
        format_address_data(data)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "mailbox=/m format=mbox quota=0 uid=8",
        "mailbox=/m format=mbox quota=0 uid=8 gid=8 gid=8",
        "mailbox=/m format=mbox quota=0 uid=8 gid=8 extra=1",
        "mailbox=/m format=mbox quota=0 uid=8 gid",
        "mailbox=/m format=mbx quota=0 uid=8 gid=8",
        "mailbox=/m format=mbox quota=0 uid=-8 gid=8",
        "mailbox=/m format=mbox quota=0 uid=\u0668 gid=8",  # an Arabic-Indic digit
    ],
)
def test_bad_address_data_is_temporary(line: str) -> None:
    with pytest.raises(TemporaryFailure):
        parse_address_data(line)


def test_router_writes_what_the_delivery_reads() -> None:
    user = make_user("alice", quota=" 32M ")
    config = SpoolConfig(storage_uid=8, storage_gid=8)
    line = routing.address_data(user, config)
    assert line == "mailbox=/var/mail/alice@example.com format=mbox quota=32M uid=8 gid=8"
    assert parse_address_data(line) == routing.mailbox_target(user, config)


# --- the storage-id rule -------------------------------------------------------

SHARED = SpoolConfig(storage_user="mail", storage_uid=8, storage_gid=8, min_uid=100)
PER_USER = replace(SHARED, per_user_ids=True)


def test_storage_ids_shared_account() -> None:
    assert spool.storage_ids(5000, 5000, SHARED) == (8, 8)
    assert spool.storage_ids(None, None, SHARED) == (8, 8)
    spool.check_ids(8, 8, SHARED)
    for uid, gid in [(5000, 5000), (8, 9), (0, 8), (8, 0)]:
        with pytest.raises(ConfigError):
            spool.check_ids(uid, gid, SHARED)


def test_storage_ids_per_user() -> None:
    assert spool.storage_ids(5000, 5001, PER_USER) == (5000, 5001)
    spool.check_ids(5000, 5001, PER_USER)
    spool.check_ids(100, 100, PER_USER)
    for uid, gid in [(None, 5000), (5000, None), (99, 5000), (5000, 99), (8, 8)]:
        with pytest.raises(ConfigError, match="u1"):
            spool.storage_ids(uid, gid, PER_USER, who="u1")
    for uid, gid in [(99, 5000), (5000, 99), (0, 0), (8, 8)]:
        with pytest.raises(ConfigError):
            spool.check_ids(uid, gid, PER_USER)


def test_no_id_rule_ever_gives_root() -> None:
    rootish = replace(PER_USER, min_uid=0)
    for uid, gid in [(0, 5000), (5000, 0), (0, 0)]:
        with pytest.raises(ConfigError):
            spool.storage_ids(uid, gid, rootish)
        with pytest.raises(ConfigError):
            spool.check_ids(uid, gid, rootish)
    with pytest.raises(ConfigError):
        spool.storage_ids(None, None, replace(SHARED, storage_gid=0))


def test_what_storage_ids_gives_check_ids_accepts() -> None:
    for config in (SHARED, PER_USER):
        for uid, gid in [(100, 100), (5000, 7000), (65533, 100)]:
            spool.check_ids(*spool.storage_ids(uid, gid, config), config)


# --- one mailbox size at RCPT time and at delivery time -----------------------


@pytest.fixture
def box_dir(tmp_path: Path) -> Path:
    return tmp_path


def fd_usage(path: Path, fmt: str) -> int | None:
    """The delivery side's count: on what it holds open."""
    if fmt == "mbox":
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return usage.mbox_usage(os.fstat(fd))
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return usage.maildir_usage(fd)
    finally:
        os.close(fd)


def make_maildir(path: Path, files: dict[str, bytes]) -> None:
    for sub in maildir.SUBDIRS:
        (path / sub).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (path / name).write_bytes(content)


def test_mbox_size_agrees(box_dir: Path) -> None:
    box = box_dir / "alice@example.com"
    assert usage.mailbox_usage(str(box), "mbox") == 0
    box.write_bytes(mbox.entry(mbox.from_line("a@b.example"), b"Subject: x\n\nhello\n") * 3)
    size = box.stat().st_size
    assert usage.mailbox_usage(str(box), "mbox") == fd_usage(box, "mbox") == size


def test_maildir_size_agrees_without_size_fields(box_dir: Path) -> None:
    md = box_dir / "Maildir"
    make_maildir(md, {"new/1.a.host": b"x" * 100, "cur/2.b.host:2,S": b"y" * 250,
                      "tmp/3.c.host": b"z" * 4000})
    assert usage.mailbox_usage(str(md), "maildir") == fd_usage(md, "maildir") == 350


def test_maildir_size_agrees_with_size_fields(box_dir: Path) -> None:
    md = box_dir / "Maildir"
    # The ,S= field wins over the file's size, on both sides (maildir++, Dovecot).
    make_maildir(md, {"new/1.a.host,S=1000": b"x" * 10, "cur/2.b.host,S=2000,W=2050:2,S": b"y" * 20,
                      "cur/3.c.host,S=\u00b2:2,": b"z" * 30, "new/4.d.host": b"w" * 40})
    assert usage.mailbox_usage(str(md), "maildir") == fd_usage(md, "maildir") == 1000 + 2000 + 30 + 40


def test_maildir_delivery_writes_what_usage_counts(box_dir: Path) -> None:
    md = box_dir / "Maildir"
    make_maildir(md, {})
    fd = os.open(md, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stored = maildir.deliver(fd, b"Subject: s\n\n" + b"x" * 500)
    finally:
        os.close(fd)
    assert usage.entry_size(stored) == (md / stored).stat().st_size
    assert usage.mailbox_usage(str(md), "maildir") == fd_usage(md, "maildir") == 512


def test_symlinks_are_never_followed(box_dir: Path) -> None:
    elsewhere = box_dir / "elsewhere"
    make_maildir(elsewhere, {"new/1.a.host": b"x" * 100})
    md = box_dir / "Maildir"
    make_maildir(md, {"cur/2.b.host": b"y" * 7})
    (md / "new" / "link,S=999").symlink_to(elsewhere / "new" / "1.a.host")
    assert usage.mailbox_usage(str(md), "maildir") == fd_usage(md, "maildir") == 7
    link = box_dir / "link"
    link.symlink_to(md)
    assert usage.mailbox_usage(str(link), "maildir") is None
    shutil.rmtree(md / "new")
    (md / "new").symlink_to(elsewhere / "new")
    assert usage.mailbox_usage(str(md), "maildir") is None
    with pytest.raises(OSError):
        fd_usage(md, "maildir")
    box = box_dir / "box"
    box.symlink_to(elsewhere / "new" / "1.a.host")
    assert usage.mailbox_usage(str(box), "mbox") is None


def test_maildir_folders_count_but_not_dovecots_files_nor_symlinked_folders(box_dir: Path) -> None:
    """Maildir++ folders (what Dovecot makes for Sent, Trash, ...) use quota like the INBOX;
    Dovecot's index files and a symlinked folder do not."""
    elsewhere = box_dir / "elsewhere"
    make_maildir(elsewhere, {"cur/9.z.host": b"q" * 5000})
    md = box_dir / "Maildir"
    make_maildir(md, {"new/1.a.host": b"x" * 100, "dovecot-uidlist": b"u" * 700,
                      "dovecot.index.log": b"i" * 900, "maildirsize": b"99999 1\n"})
    make_maildir(md / ".Trash", {"cur/2.b.host,S=300:2,S": b"y"})
    make_maildir(md / ".Sent.2026", {"new/3.c.host": b"z" * 40, "tmp/4.d.host": b"t" * 6000})
    (md / ".Link").symlink_to(elsewhere)
    (md / ".notes").write_bytes(b"n" * 800)  # a file, not a folder
    assert usage.mailbox_usage(str(md), "maildir") == fd_usage(md, "maildir") == 100 + 300 + 40


def test_rcpt_time_check_uses_the_same_count(box_dir: Path) -> None:
    md = box_dir / "example.com" / "carol" / "Maildir"
    make_maildir(md, {"new/1.a.host,S=900": b"x"})
    config = SpoolConfig(format="maildir", maildir_template=f"{box_dir}/{{domain}}/{{local}}/Maildir")
    user = make_user("carol", quota="10000")

    class OneUser:
        def alias(self, *_: str) -> None:
            return None

        def user(self, *_: str) -> User:
            return user

        def is_local_domain(self, _: str) -> bool:
            return True

    def verdict(size: int) -> object:
        return routing.quota_verdict(OneUser(), config, "carol", "example.com", size)  # type: ignore[arg-type]

    room = 10000 - 900 - routing.DELIVERY_ALLOWANCE  # what fits beside the 900 used octets
    assert verdict(-1) is None and verdict(room) is None
    assert verdict(room + 1) == routing.QuotaVerdict(routing.FULL, ("carol@example.com",))
    # Larger than the whole quota (with what delivery adds): it can never fit.
    largest = 10000 - routing.DELIVERY_ALLOWANCE
    assert verdict(largest) == routing.QuotaVerdict(routing.FULL, ("carol@example.com",))
    assert verdict(largest + 1) == routing.QuotaVerdict(
        routing.TOO_BIG, ("carol@example.com",)
    )


# --- the store ---------------------------------------------------------------


@pytest.fixture
def spool_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mr-store-"))
    try:
        root.chmod(0o755)
        box_spool = root / "spool"
        box_spool.mkdir()
        os.chown(box_spool, 0, MAIL_GID)
        box_spool.chmod(0o2775)
        yield box_spool
    finally:
        shutil.rmtree(root, ignore_errors=True)


def store_config(box_spool: Path, **kwargs: object) -> SpoolConfig:
    return SpoolConfig(mbox_template=f"{box_spool}/{{local}}@{{domain}}",
                       maildir_template=f"{box_spool}/{{domain}}/{{local}}/Maildir",
                       storage_uid=MAIL_UID, storage_gid=MAIL_GID, lock_timeout=1.0,
                       **kwargs)  # type: ignore[arg-type]


def deliver_as_mail(config: SpoolConfig, target: AddressData, message: bytes, sender: str) -> str:
    """store.deliver in a child switched to the storage account, as an LMTP worker would."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(target.gid)
            os.setuid(target.uid)
            try:
                text = "OK " + store.deliver(config, target, message, from_line=mbox.from_line(sender))
            except TemporaryFailure as exc:
                text = f"{type(exc).__name__} {exc}"
            os.write(write_end, text.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


@needs_root
def test_store_refuses_to_write_as_another_uid(spool_root: Path) -> None:
    config = store_config(spool_root)
    target = AddressData(f"{spool_root}/alice@example.com", "mbox", "0", MAIL_UID, MAIL_GID)
    with pytest.raises(TemporaryFailure, match="running as uid 0"):
        store.deliver(config, target, b"Subject: x\n\n", from_line=mbox.from_line("a@b.example"))
    assert list(spool_root.iterdir()) == []


@needs_root
def test_store_with_an_envelope_sender_writes_appendfiles_entry(spool_root: Path) -> None:
    """The LMTP shape: an envelope sender and a raw message, no From_ line in the data."""
    config = store_config(spool_root)
    target = AddressData(f"{spool_root}/alice@example.com", "mbox", "0", MAIL_UID, MAIL_GID)
    message = b"Subject: one\n\nFrom here\n>From there\n"
    answer = deliver_as_mail(config, target, message, "bob@example.org")
    assert answer.startswith("OK delivered "), answer
    written = Path(target.mailbox).read_bytes()
    first, rest = written.split(b"\n", 1)
    assert mbox.is_from_line(first + b"\n") and first.startswith(b"From bob@example.org ")
    assert rest == b"Subject: one\n\n>From here\n>From there\n\n"
    assert Path(target.mailbox).stat().st_uid == MAIL_UID


@needs_root
def test_store_quota_matches_usage(spool_root: Path) -> None:
    config = store_config(spool_root, format="maildir")
    path = spool.mailbox_path(config.maildir_template, "carol", "example.com")
    message = b"Subject: q\n\n" + b"x" * 88  # 100 bytes
    target = AddressData(path, "maildir", "250", MAIL_UID, MAIL_GID)
    assert deliver_as_mail(config, target, message, "a@b.example").startswith("OK ")
    assert deliver_as_mail(config, target, message, "a@b.example").startswith("OK ")
    assert usage.mailbox_usage(path, "maildir") == 200
    answer = deliver_as_mail(config, target, message, "a@b.example")
    assert answer.startswith(OverQuota.__name__), answer
    assert usage.mailbox_usage(path, "maildir") == 200


# --- the boundary ----------------------------------------------------------------

FORBIDDEN = {"ldap3", "mailrouter.directory", "mailrouter.auth", "mailrouter.routing"}


def test_mailbox_package_never_imports_ldap() -> None:
    folder = Path(mailrouter.mailbox.__path__[0])
    files = sorted(folder.glob("*.py"))
    assert {f.name for f in files} >= {"store.py", "spool.py", "usage.py", "addressdata.py"}
    for source in files:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                imported = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                imported = {module} | {f"{module}.{alias.name}" for alias in node.names}
            else:
                continue
            bad = {name for name in imported if name.split(".")[0] == "ldap3"} | (imported & FORBIDDEN)
            assert not bad, f"{source.name} imports {bad}"
