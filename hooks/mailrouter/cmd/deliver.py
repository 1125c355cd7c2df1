"""mailrouter-deliver -- local delivery hook for Exim's pipe transport.

SYNOPSIS
    mailrouter-deliver [--config CONF] --address-data "mailbox=PATH format=mbox|maildir quota=RAW uid=N gid=N"

DESCRIPTION
    Appends the message on stdin to one mailbox, as carefully as Exim's own
    appendfile transport: mbox by default (the file stock popa3d reads,
    ``/var/mail/<local>@<domain>``), Maildir as an option.

    The address data is the one line ``mailrouter-lookup`` printed for the router
    (Exim passes ``$address_data`` as ONE argument).  Nothing in it is trusted:

    * ``mailbox`` must be exactly ``spool.mailbox_path(template, local, domain)``
      for the configured template of that ``format`` and canonical names;
    * ``uid``/``gid`` must be the storage account, or with ``spool.per_user_ids``
      any ids at or above ``spool.min_uid`` (never 0);
    * ``quota`` is a raw ``mailQuota`` (``32M``, ``1G``, ``0`` = unlimited).

    Run as root (tests, a misconfigured transport) it drops to ``uid``/``gid``
    before touching the spool; run as another non-root uid it refuses.

    mbox delivery: every directory below the spool root is opened with
    ``O_NOFOLLOW`` (a symlinked parent is refused), the mailbox likewise; it must be
    a regular file with one link, owned by ``uid``.  A missing mailbox is created
    with ``O_EXCL``, mode 0600.  Locks: dotlock ``<mailbox>.lock`` (O_EXCL) plus an
    fcntl lock on the mailbox (see :mod:`mailrouter.mailbox.locking`), retried for
    ``spool.lock_timeout`` seconds.  Under the locks: quota check against current
    size + bytes to write, ``>From`` escaping as appendfile does (see
    :mod:`mailrouter.mailbox.mbox`), every write's count checked, ``fsync``.  On any
    failure the file is truncated back to its old size and its old mtime/atime
    restored.

STDIN
    The message as Exim's pipe transport sends it: first the ``From <sender> <date>``
    line of the default ``message_prefix``, then the message.  Required pipe
    transport options (see the Exim helper's config)::

        use_bsmtp = false            # the default
        message_prefix               # leave at its default (the From_ line)
        message_suffix =             # EMPTY: this hook writes the blank separator
        # check_string / escape_string: leave unset (the default): we escape
        temp_errors = 75:73
        return_fail_output = true    # puts the 77 reason in the bounce
        log_defer_output = true      # puts a 75 reason in Exim's log
        freeze_signal = true         # a killed hook (kill -9, OOM) must not bounce:
        timeout_defer = true         #   the mbox is left consistent (see below)

    The whole message is read before anything else happens, so Exim never sees
    a broken pipe.

    A hook killed mid-write (SIGKILL cannot be caught) leaves a torn entry and
    its dotlock behind.  The dotlock names our pid, so the next delivery removes
    it at once; that delivery sees the mailbox does not end in a blank line and
    writes one first, so its ``From `` line still starts a new entry.  Earlier
    entries are never touched.

CONFIG
    ``--config`` is the project TOML (``[spool]`` is what matters here).  The
    LDAP secret (``bind_password_file``) is never read: config.load reads it
    only on connect, this hook never connects, and the storage account this
    runs as must not be able to read it.

STDOUT
    One short line: the outcome, for Exim's log / the bounce.  Nothing on stderr.

SYSLOG
    Exactly one line per run, facility LOG_MAIL, ident ``mailrouter-deliver``.

EXIT CODES
    0   delivered (data fsynced)
    75  temporary, Exim retries: mailbox locked, over quota, garbled quota,
        disk full or any I/O error (mailbox restored), refused mailbox (symlink,
        hard link, not a regular file, wrong owner, path outside the template),
        bad arguments, address data or config, missing From_ line, any
        unexpected exception
    77  permanent: the message alone is larger than the mailbox's whole quota
    (67 is never used here: only a definite "no such user" from LDAP may be
    permanent, and this hook does not query LDAP.)

ENVIRONMENT
    MESSAGE_ID is copied (sanitised) into the log line only.  Nothing else from
    the environment is used.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import syslog
from dataclasses import dataclass

from mailrouter import config as config_module
from mailrouter import names
from mailrouter.config import Config
from mailrouter.errors import (
    GarbledQuota,
    MailboxRefused,
    MailrouterError,
    NoFromLine,
    OverQuota,
    TemporaryFailure,
    TooBigForQuota,
)
from mailrouter.exitcodes import EX_NOPERM, EX_OK, EX_TEMPFAIL
from mailrouter.mailbox import locking, maildir, mbox, spool
from mailrouter.quota import parse_quota

_DATA_KEYS = ("mailbox", "format", "quota", "uid", "gid")
_OPEN_MAILBOX = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_IDENTITY_RETRIES = 3
_SAFE_LOG = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class AddressData:
    mailbox: str
    format: str
    quota_raw: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Outcome:
    code: int
    reason: str


def parse_address_data(text: str) -> AddressData:
    """Parse ``mailbox=... format=... quota=... uid=... gid=...`` (each key exactly once)."""
    fields: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or key not in _DATA_KEYS or key in fields:
            raise TemporaryFailure(f"bad address data item {item[:40]!r}")
        fields[key] = value
    missing = [key for key in _DATA_KEYS if key not in fields]
    if missing:
        raise TemporaryFailure(f"address data lacks {', '.join(missing)}")
    if fields["format"] not in ("mbox", "maildir"):
        raise TemporaryFailure("address data format must be mbox or maildir")
    if not (fields["uid"].isdigit() and fields["gid"].isdigit()):
        raise TemporaryFailure("address data uid/gid must be decimal numbers")
    return AddressData(
        mailbox=fields["mailbox"],
        format=fields["format"],
        quota_raw=fields["quota"],
        uid=int(fields["uid"]),
        gid=int(fields["gid"]),
    )


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = ""
    seen: set[str] = set()
    for literal, field in re.findall(r"([^{]*)(\{local\}|\{domain\}|$)", template):
        pattern += re.escape(literal)
        if field:
            name = field[1:-1]
            pattern += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)"
            seen.add(name)
    return re.compile(pattern)


def check_mailbox_path(config: Config, data: AddressData) -> str:
    """The template of ``data.format`` must produce exactly ``data.mailbox``; return the template."""
    template = config.spool.maildir_template if data.format == "maildir" else config.spool.mbox_template
    match = _template_regex(template).fullmatch(data.mailbox)
    if not match:
        raise TemporaryFailure("mailbox path does not match the configured template")
    local, domain = match.group("local"), match.group("domain")
    names.local_part(local)  # InvalidName is permanent by class, but mapped to 75 below
    names.domain(domain)
    if spool.mailbox_path(template, local, domain) != data.mailbox:
        raise TemporaryFailure("mailbox path is not the canonical one")
    return template


def check_ids(config: Config, data: AddressData) -> None:
    if data.uid == 0 or data.gid == 0:
        raise TemporaryFailure("refusing to deliver as root")
    if config.spool.per_user_ids:
        if data.uid < config.spool.min_uid:
            raise TemporaryFailure(f"uid {data.uid} below spool.min_uid")
    elif (data.uid, data.gid) != (config.spool.storage_uid, config.spool.storage_gid):
        raise TemporaryFailure("uid/gid are not the storage account's")


def become(uid: int, gid: int) -> None:
    """Drop root to ``uid``/``gid``; refuse to run as any other non-root uid."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    elif os.geteuid() != uid:
        raise TemporaryFailure(f"running as uid {os.geteuid()}, address data says {uid}")


def open_parent(template: str, path: str) -> tuple[int, str]:
    """Open the mailbox's directory without following symlinks below the spool root.

    Returns (directory fd, final name).  Missing directories below the root are
    created (mode 0750, owned by the delivering uid).
    """
    root = spool.spool_root(template)
    parts = path[len(root) :].split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                next_fd = maildir.open_dir(part, fd, create=True, mode=0o750)
            except OSError as exc:
                raise MailboxRefused(f"spool directory {part!r}: {exc.strerror}") from exc
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _check_file(st: os.stat_result, uid: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise MailboxRefused("mailbox is not a regular file")
    if st.st_nlink != 1:
        raise MailboxRefused(f"mailbox has {st.st_nlink} links")
    if st.st_uid != uid:
        raise MailboxRefused(f"mailbox owned by uid {st.st_uid}, not {uid}")


def open_mailbox(dir_fd: int, name: str, uid: int) -> int:
    """Open (or create with O_EXCL, 0600) the mbox file ``name``; checked, never followed."""
    for _ in range(2):
        try:
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            try:
                fd = os.open(name, _OPEN_MAILBOX | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue  # created concurrently: open the existing one
            except OSError as exc:
                raise TemporaryFailure(f"cannot create mailbox: {exc.strerror}") from exc
            os.fchmod(fd, 0o600)  # whatever the umask
            return fd
        # Check before opening so a FIFO or device is never even opened.
        _check_file(before, uid)
        try:
            fd = os.open(name, _OPEN_MAILBOX, dir_fd=dir_fd)
        except OSError as exc:
            raise MailboxRefused(f"cannot open mailbox: {exc.strerror}") from exc
        try:
            after = os.fstat(fd)
            _check_file(after, uid)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise MailboxRefused("mailbox replaced while opening")
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise TemporaryFailure("mailbox appeared and vanished while opening")


def _restore(fd: int, old: os.stat_result) -> None:
    """Undo a partial append: old size, old times, on disk."""
    os.ftruncate(fd, old.st_size)
    os.utime(fd, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.fsync(fd)


def deliver_mbox(config: Config, template: str, data: AddressData, prefix: bytes,
                 message: bytes, quota: int) -> str:
    entry = mbox.entry(prefix, message)
    if quota and len(entry) > quota:
        raise TooBigForQuota(f"message of {len(entry)} bytes exceeds the whole quota of {quota}")
    dir_fd, name = open_parent(template, data.mailbox)
    try:
        for _ in range(_IDENTITY_RETRIES):
            fd = open_mailbox(dir_fd, name, data.uid)
            dotlock: locking.DotLock | None = None
            try:
                dotlock = locking.lock_mailbox(
                    dir_fd, name, fd,
                    timeout=config.spool.lock_timeout,
                    stale_age=config.spool.stale_lock_age,
                )
                old = os.fstat(fd)
                current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (current.st_dev, current.st_ino) != (old.st_dev, old.st_ino):
                    continue  # renamed/replaced before we locked it: start again
                _check_file(old, data.uid)
                return _append_locked(fd, old, entry, quota)
            finally:
                # Close first (drops the fcntl lock), then remove the dotlock, as Exim does.
                os.close(fd)
                if dotlock is not None:
                    dotlock.release()
        raise TemporaryFailure("mailbox kept changing identity while locking")
    finally:
        os.close(dir_fd)


def _append_locked(fd: int, old: os.stat_result, entry: bytes, quota: int) -> str:
    tail = os.pread(fd, 2, max(0, old.st_size - 2)) if old.st_size else b""
    data = mbox.separator_for(tail, old.st_size) + entry
    if quota and old.st_size + len(data) > quota:
        raise OverQuota(
            f"mailbox full: {old.st_size} + {len(data)} bytes > quota {quota}"
        )
    try:
        maildir.write_all(fd, data)
        os.fsync(fd)
    except BaseException as exc:
        try:
            _restore(fd, old)
        except OSError as restore_exc:
            raise TemporaryFailure(
                f"write failed ({exc}) and restore failed ({restore_exc.strerror})"
            ) from exc
        if isinstance(exc, OSError):
            raise TemporaryFailure(f"write failed: {exc.strerror or exc}; mailbox restored") from exc
        raise
    return f"delivered {len(data)} bytes"


def deliver_maildir(template: str, data: AddressData, message: bytes, quota: int) -> str:
    if quota and len(message) > quota:
        raise TooBigForQuota(f"message of {len(message)} bytes exceeds the whole quota of {quota}")
    parent_fd, name = open_parent(template, data.mailbox)
    try:
        try:
            box_fd = maildir.open_dir(name, parent_fd, create=True)
        except OSError as exc:
            raise MailboxRefused(f"maildir: {exc.strerror}") from exc
        try:
            st = os.fstat(box_fd)
            if st.st_uid != data.uid:
                raise MailboxRefused(f"maildir owned by uid {st.st_uid}, not {data.uid}")
            # No lock in maildir: the quota is approximate under concurrency.
            if quota and maildir.usage(box_fd) + len(message) > quota:
                raise OverQuota(f"maildir full for a message of {len(message)} bytes")
            stored = maildir.deliver(box_fd, message)
        finally:
            os.close(box_fd)
    finally:
        os.close(parent_fd)
    return f"delivered {len(message)} bytes as {stored}"


def run(config: Config, data: AddressData, raw: bytes) -> str:
    """Deliver ``raw`` (pipe transport input) as ``data`` says; return the success reason."""
    template = check_mailbox_path(config, data)
    check_ids(config, data)
    try:
        quota = parse_quota(data.quota_raw)
    except GarbledQuota as exc:
        raise TemporaryFailure(str(exc)) from exc
    try:
        prefix, message = mbox.split_from_line(raw)
    except NoFromLine as exc:
        raise TemporaryFailure(f"{exc}; keep the pipe transport's default message_prefix") from exc
    become(data.uid, data.gid)
    if data.format == "maildir":
        return deliver_maildir(template, data, message, quota)
    return deliver_mbox(config, template, data, prefix, message, quota)


def parse_args(argv: list[str]) -> dict[str, str]:
    """``--config CONF --address-data DATA`` (either order, ``--opt=value`` too).

    Hand-rolled rather than argparse: argparse writes to stderr and exits 2,
    and importing it costs ~8 ms on every delivery.
    """
    options: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        key, eq, value = item.partition("=")
        if key not in ("--config", "--address-data") or key in options:
            raise ValueError(item)
        options[key] = value if eq else next(items)
    if "--address-data" not in options:
        raise ValueError("--address-data missing")
    return options


def _outcome(argv: list[str], raw: bytes) -> Outcome:
    try:
        args = parse_args(argv)
    except (ValueError, StopIteration):
        return Outcome(EX_TEMPFAIL, "usage: --config CONF --address-data DATA")
    try:
        config = config_module.load(args.get("--config"))
        data = parse_address_data(args["--address-data"])
        return Outcome(EX_OK, run(config, data, raw))
    except TooBigForQuota as exc:
        return Outcome(EX_NOPERM, str(exc))
    except MailrouterError as exc:
        # InvalidName is a PermanentFailure by class, but here a bad name means a
        # broken router, not a definite "no such user": keep the mail.
        return Outcome(EX_TEMPFAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - anything unexpected is temporary
        return Outcome(EX_TEMPFAIL, f"internal error: {type(exc).__name__}: {exc}")


def _log(outcome: Outcome, argv: list[str], size: int) -> None:
    status = {EX_OK: "delivered", EX_NOPERM: "bounced"}.get(outcome.code, "deferred")
    message_id = _SAFE_LOG.sub("?", os.environ.get("MESSAGE_ID", "-"))[:100]
    mailbox = "-"
    for i, item in enumerate(argv):
        if item == "--address-data" and i + 1 < len(argv):
            found = re.search(r"mailbox=(\S+)", argv[i + 1])
            mailbox = _SAFE_LOG.sub("?", found.group(1))[:300] if found else "-"
    reason = outcome.reason.replace("\n", " ")[:300]
    syslog.openlog("mailrouter-deliver", syslog.LOG_PID, syslog.LOG_MAIL)
    try:
        level = syslog.LOG_INFO if outcome.code == EX_OK else syslog.LOG_WARNING
        syslog.syslog(
            level,
            f"status={status} code={outcome.code} mailbox={mailbox} id={message_id} "
            f"input={size} reason={reason}",
        )
    finally:
        syslog.closelog()


def main(argv: list[str]) -> int:
    try:
        raw = sys.stdin.buffer.read()
    except OSError as exc:
        outcome = Outcome(EX_TEMPFAIL, f"cannot read the message: {exc.strerror}")
        raw = b""
    else:
        outcome = _outcome(argv, raw)
    try:
        _log(outcome, argv, len(raw))
    except Exception:  # noqa: BLE001, S110 - logging must never change the outcome
        pass
    try:
        sys.stdout.write(outcome.reason[:500] + "\n")
        sys.stdout.flush()
    except OSError:
        pass
    return outcome.code
