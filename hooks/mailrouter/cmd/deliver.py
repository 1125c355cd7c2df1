"""mailrouter-deliver -- local delivery hook for Exim's pipe transport.

SYNOPSIS
    mailrouter-deliver [--config CONF] --address-data "mailbox=PATH format=mbox|maildir quota=RAW uid=N gid=N"
                       [--folder-from-environment]

DESCRIPTION
    Appends the message on stdin to one mailbox, as carefully as Exim's own
    appendfile transport: mbox by default (the file stock popa3d reads,
    ``/var/mail/<local>@<domain>``), Maildir as an option.

    The address data is the one line ``mailrouter-lookup`` printed for the router
    (Exim passes ``$address_data`` as ONE argument).  Nothing in it is trusted:

    * ``mailbox`` must be exactly ``spool.mailbox_path(template, local, domain)``
      for the configured template of that ``format`` and canonical names;
    * ``uid``/``gid`` must be the storage account, or with ``spool.per_user_ids``
      any ids at or above ``spool.min_uid``; never 0 (the rule:
      :mod:`mailrouter.mailbox.spool`);
    * ``quota`` is a raw ``mailQuota`` (``32M``, ``1G``, ``0`` = unlimited).

    Run as root (tests, a misconfigured transport) it drops to ``uid``/``gid``
    before touching the spool; run as another non-root uid it refuses.

    The storing is :func:`mailrouter.mailbox.store.deliver`, the code every
    delivery front end calls.  mbox delivery: every directory below the spool
    root is opened with ``O_NOFOLLOW`` (a symlinked parent is refused), the
    mailbox likewise; it must be a regular file with one link, owned by
    ``uid``.  A missing mailbox is created with ``O_EXCL``, mode 0600.  Locks:
    dotlock ``<mailbox>.lock`` (O_EXCL) plus an fcntl lock on the mailbox (see
    :mod:`mailrouter.mailbox.locking`), retried for ``spool.lock_timeout``
    seconds.  Under the locks: quota check against the current size (see
    :mod:`mailrouter.mailbox.usage`) + bytes to write, ``>From`` escaping as
    appendfile does (see :mod:`mailrouter.mailbox.mbox`), every write's count
    checked, ``fsync``.  On any failure the file is truncated back to its old
    size and its old mtime/atime restored.

STDIN
    The message as Exim's pipe transport sends it: first the ``From <sender> <date>``
    line of the default ``message_prefix``, then the message.  Required pipe
    transport options (see the Exim helper's config)::

        use_bsmtp = false            # the default
        message_prefix               # leave at its default (the From_ line)
        message_suffix =             # EMPTY: this hook writes the blank separator
        # check_string / escape_string: leave unset (the default): we escape
        temp_errors = 75:73
        return_fail_output = true    # puts the 100 reason in the bounce
        log_fail_output = true       # ... and in Exim's log
        log_defer_output = true      # puts a 75 reason in Exim's log
        freeze_signal = true         # a killed hook (kill -9, OOM) must not bounce:
        timeout_defer = true         #   the mbox is left consistent (see below)

    The whole message is read before anything else happens, so Exim never sees
    a broken pipe.

    A hook killed at any point (SIGKILL cannot be caught) leaves its dotlock
    behind, holding the append's journal (the mailbox's size before it, and the
    first bytes it writes).  The next delivery to that mailbox sees the owner is
    gone, truncates the mailbox back to that size -- only if the bytes beyond
    it are that append's -- and removes the lock, all under the fcntl lock;
    then it delivers.  So the mailbox ends exactly as if the killed delivery
    never started, and Exim's retry (the message is frozen by freeze_signal and
    thawed by auto_thaw or an operator) stores the message once, whole.
    Earlier entries are never touched.

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
    100 permanent: the message alone (as piped, without the From_ line and the
        >From escaping) is larger than the mailbox's whole quota (stdout:
        "message of N bytes exceeds the whole quota of Q"); Exim's DATA-time
        check refuses such a message before accepting it.  Not 77: Exim logs
        any sysexits code with a misleading guess ("could mean permission denied")
    (67 is never used here: only a definite "no such user" from LDAP may be
    permanent, and this hook does not query LDAP.)

FOLDERS (Sieve keep and fileinto)
    With ``--folder-from-environment`` (Exim's ``mailrouter_sieve_folder``
    transport) the target folder is ``$MAILROUTER_FOLDER``, Exim's
    ``$address_file`` of the Sieve router (tainted, so it cannot be an
    argument): ``inbox`` (Sieve's keep) is the mailbox itself; any other name
    is a Maildir++ folder (``mailrouter.rules.folder_directory``: ``Junk`` ->
    ``<Maildir>/.Junk``, created with its ``maildirfolder`` marker).  A name
    the rules refuse, or any folder of an mbox mailbox, is stored in the inbox
    instead -- a message is never lost or bounced for its folder -- and the
    outcome line says so.  Locks and quota as for the inbox; the quota counts
    every folder.

ENVIRONMENT
    MESSAGE_ID is copied (sanitised) into the log line only.  MAILROUTER_FOLDER
    is read only with ``--folder-from-environment`` (required then).  Nothing
    else from the environment is used.
"""

from __future__ import annotations

import os
import re
import sys
import syslog
from dataclasses import dataclass

from mailrouter import config as config_module
from mailrouter.config import Config
from mailrouter.errors import MailrouterError, NoFromLine, TemporaryFailure, TooBigForQuota
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL, EX_TOOBIG
from mailrouter.mailbox import mbox, spool, store
from mailrouter.mailbox.addressdata import AddressData, parse_address_data

_SAFE_LOG = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class Outcome:
    code: int
    reason: str


FOLDER_VARIABLE = "MAILROUTER_FOLDER"


def folder_target(data: AddressData, name: str | None) -> tuple[str | None, str]:
    """(Maildir++ folder directory or None for the inbox, a note for the outcome line)
    for the Sieve folder ``name`` (see FOLDERS)."""
    if name is None:
        return None, ""
    if not name:
        raise TemporaryFailure(f"--folder-from-environment without {FOLDER_VARIABLE}")
    if name.lower() == "inbox":
        return None, ""
    from mailrouter import rules  # only for Sieve deliveries: keeps the common start-up lean

    shown = _SAFE_LOG.sub("?", name)[:80]
    if data.format != "maildir":
        return None, f" (folder {shown!r}: an mbox has no folders, filed into the inbox)"
    try:
        return rules.folder_directory(name), ""
    except rules.RuleError:
        return None, f" (folder {shown!r} refused, filed into the inbox)"


def run(config: Config, data: AddressData, raw: bytes, folder_name: str | None = None) -> str:
    """Deliver ``raw`` (pipe transport input) as ``data`` says, into the Sieve folder
    ``folder_name`` when given; return the success reason."""
    try:
        prefix, message = mbox.split_from_line(raw)
    except NoFromLine as exc:
        raise TemporaryFailure(f"{exc}; keep the pipe transport's default message_prefix") from exc
    folder, note = folder_target(data, folder_name)
    spool.become(data.uid, data.gid, config.spool)  # checks the ids before switching
    return store.deliver(config.spool, data, message, from_line=prefix, folder=folder) + note


def parse_args(argv: list[str]) -> dict[str, str]:
    """``--config CONF --address-data DATA`` (either order, ``--opt=value`` too).

    Hand-rolled rather than argparse: argparse writes to stderr and exits 2,
    and importing it costs ~8 ms on every delivery.
    """
    options: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        if item == "--folder-from-environment" and item not in options:
            options[item] = ""
            continue
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
        folder = os.environ.get(FOLDER_VARIABLE, "") if "--folder-from-environment" in args else None
        return Outcome(EX_OK, run(config, data, raw, folder))
    except TooBigForQuota as exc:
        return Outcome(EX_TOOBIG, str(exc))
    except MailrouterError as exc:
        # Only TooBigForQuota is permanent: a bad target means a broken router or
        # config, never a definite "no such user" (this hook asks no LDAP).
        return Outcome(EX_TEMPFAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - anything unexpected is temporary
        return Outcome(EX_TEMPFAIL, f"internal error: {type(exc).__name__}: {exc}")


def _log(outcome: Outcome, argv: list[str], size: int) -> None:
    status = {EX_OK: "delivered", EX_TOOBIG: "bounced"}.get(outcome.code, "deferred")
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
