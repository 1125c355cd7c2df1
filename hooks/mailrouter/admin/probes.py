"""Check what the hub does: routing of an address, a login, an SMTP or POP3 session.

No admin bind here.  :func:`route_address` and :func:`probe_auth` run the hooks'
own code (``mailrouter.lookup.answer``, ``mailrouter.auth.authenticate``), which
binds as the config's service account like Exim and the POP3 server do; the SMTP
and POP3 probes talk to a running server.  Secrets arrive as strings.

Exit-code-like outcomes are data: a refused login or recipient is ``ok: False``
(or ``verdict: "refused"``), never an exception.  A server that does not answer
raises :class:`~mailrouter.errors.TemporaryFailure`; LDAP down raises
:class:`~mailrouter.errors.DirectoryUnavailable`; bad input or an unusable Exim
raises :class:`~mailrouter.errors.AdminError`.
"""

from __future__ import annotations

import os
import poplib
import pwd
import re
import smtplib
import ssl
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailrouter import auth, lookup, names, quota, routing
from mailrouter.admin import eximcmd
from mailrouter.admin.eximcmd import EXIM
from mailrouter.admin.normalise import normalise_domain, normalise_target
from mailrouter.config import Config
from mailrouter.directory import Directory
from mailrouter.errors import AdminError, DirectoryUnavailable, GarbledQuota, TemporaryFailure
from mailrouter.mailbox.addressdata import parse_address_data
from mailrouter.mailbox.usage import mailbox_usage

EXIM_USER = "Debian-exim"
EXIM_MEANING = {0: "routed", 1: "deferred", 2: "undeliverable"}
# A macro definition line of an Exim configuration: NAME = value (names start upper-case).
_MACRO_LINE = re.compile(r"^\s*([A-Z][A-Za-z0-9_]*)\s*=")
EHLO_NAME = "mailrouter-admin.invalid"


# -- test address ------------------------------------------------------------------------
def route_address(config: Config, local: str, domain: str) -> dict[str, Any]:
    """What Exim's routers decide for ``local@domain``: the hook's own answers
    (``mailrouter.lookup.answer``, the code behind every ``${run}``) asked in the
    order of exim/mailrouter.conf -- local domain, aliases, users, catchall."""
    result: dict[str, Any] = {"address": f"{local}@{domain}"}

    def ask(kind: str, *args: str) -> str | None:
        return lookup.answer(config, kind, list(args))

    if ask("domain", domain) is None:
        backup = ask("backup-mx", domain) is not None
        result.update(
            local_domain=False,
            router="remote",
            outcome="relayed as a backup MX" if backup
            else "not a local domain: remote delivery, only for clients allowed to relay",
        )
        return result
    result["local_domain"] = True
    with Directory(config.ldap) as directory:
        result["domain_enabled"] = directory.domain_active(domain)
    for router, kind in (("aliases", "alias"), ("users", "user"), ("catchall", "catchall")):
        data = ask(kind, local, domain)
        if data is None:
            continue
        result["router"] = router
        if kind == "user":
            target = parse_address_data(data)
            limit = quota.parse_quota(target.quota_raw)
            used = mailbox_usage(target.mailbox, target.format)
            result.update(
                address_data=data,
                mailbox=target.mailbox,
                format=target.format,
                uid=target.uid,
                gid=target.gid,
                quota=quota_object(target.quota_raw, used),
                over_quota=used is not None and routing.is_over_quota(used, 0, limit),
                outcome="delivered to the mailbox by mailrouter-deliver",
            )
            if result["over_quota"]:
                result["outcome"] = "deferred at RCPT (452): mailbox full"
        elif kind == "catchall" and data == routing.FAIL_DISABLED:
            # Exim's catch-all router is the one that refuses a disabled user (so
            # that it is not swallowed), but the user is what the admin must look at.
            why = "its domain is disabled" if not result["domain_enabled"] else "the account is disabled"
            result.update(router="users", refused_by="catchall",
                          outcome=f"refused with 550 (5.2.1 mailbox disabled): {why}")
        elif data.startswith(":fail:"):
            result.update(outcome="refused: " + data[len(":fail:"):].strip())
        else:
            result.update(targets=[t.strip() for t in data.split(",") if t.strip()], outcome="redirected")
            full = ask("quota", local, domain, "-1")  # "full ADDRESS..." (size unknown: never toobig)
            if full:
                result.update(full_mailboxes=full.split()[1:], outcome="deferred at RCPT (452): mailbox full")
        return result
    result.update(router=None, outcome="unknown user: refused with 550")
    return result


def quota_object(raw: str | None, used: int | None) -> dict[str, Any]:
    """The one shape of a quota in every JSON answer: ``{"limit": "10M", "limit_bytes":
    10485760, "used_bytes": 2048}``.  ``limit_bytes`` 0 = unlimited, ``None`` when the
    stored value is garbled; ``used_bytes`` ``None`` when the mailbox cannot be read here."""
    text = (raw or "0").strip() or "0"
    try:
        limit: int | None = quota.parse_quota(text)
    except GarbledQuota:
        limit = None
    return {"limit": text, "limit_bytes": limit, "used_bytes": used}


def probe_address(
    config: Config,
    address: str,
    exim: bool = False,
    exim_config: str | None = None,
    mailrouter_bin: str | None = None,
    exim_command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`route_address` of ``address`` as Exim would see it (local part lower-cased);
    with ``exim`` also :func:`exim_address_test` under key ``"exim"`` (and a ``note``
    when Exim finds no route for a remote domain)."""
    text = address.strip()
    local_raw, at, dom = text.rpartition("@")
    if not at:
        raise AdminError(f"invalid address {text!r}: expected local@domain", field="address")
    domain = normalise_domain(dom, field="address")
    local = local_raw.lower()
    if not names.is_local_part(local):
        info: dict[str, Any] = {"address": f"{local}@{domain}", "router": None,
                                "outcome": "refused: not a valid local part here"}
    else:
        info = route_address(config, local, domain)
    if exim:
        tested = exim_address_test(config, f"{local}@{domain}", exim_config, mailrouter_bin, exim_command)
        info["exim"] = tested
        if info.get("router") == "remote" and tested["rc"] == 2:
            info["note"] = (
                f"Exim found no route to {domain}: this Exim configuration routes remote mail "
                f"by DNS (MX, then A records) and found none for {domain} (no DNS here?); "
                "with MAILROUTER_RELAY_HOST set every remote address goes to that host instead"
            )
    return info


def exim_address_test(
    config: Config,
    address: str,
    exim_config: str | None = None,
    mailrouter_bin: str | None = None,
    exim_command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``exim -bt ADDRESS``: ``{"rc", "meaning", "output"}`` (rc 0 routed, 1 deferred,
    2 undeliverable; meaning ``"configuration error"`` when Exim did not start).

    Without ``exim_config``: ``exim_command`` (default: the system's Exim with its
    own configuration -- on a deployed hub, ours in /etc/exim4; the sandbox's
    command comes from ``$MAILROUTER_EXIM``, see :mod:`mailrouter.admin.eximcmd`).
    With it: that configuration (``-C``, which Exim honours for ``-bt`` only as
    root) with this mailrouter config (``MAILROUTER_CONFIG``), the hooks in
    ``mailrouter_bin`` (default: this Python's bin/) and a private, throwaway spool
    and log directory -- each of these four macros only when the file does not
    define it itself (a sandbox's generated wrapper defines them all: Exim refuses
    a -D for a macro the file defines again)."""
    if exim_config is None:
        return _run_exim([*(exim_command or [EXIM]), "-bt", address])
    if config.path is None or any(c.isspace() for c in config.path):
        raise AdminError("--exim needs a config file path without white space", field="config")
    if os.geteuid() != 0:
        raise AdminError("--exim-config needs root (Exim honours -C only for root)", kind="refused")
    if not Path(exim_config).is_file():
        raise AdminError(f"no Exim configuration {exim_config}", kind="not_found", field="exim_config")
    try:
        exim_user = pwd.getpwnam(EXIM_USER)
    except KeyError:
        raise AdminError(f"no user {EXIM_USER}: is Exim installed?", kind="not_found") from None
    bin_dir = mailrouter_bin or str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="mailrouter-bt-") as work:
        # Traversable by Debian-exim (Exim runs some lookups as that user), the
        # spool and logs its own.
        os.chmod(work, 0o711)  # noqa: S103
        spool = Path(work) / "spool"
        spool.mkdir(mode=0o750)
        os.chown(spool, exim_user.pw_uid, exim_user.pw_gid)
        macros = {
            "MAILROUTER_CONFIG": os.path.abspath(config.path),
            "MAILROUTER_BIN": bin_dir,
            "MAILROUTER_SPOOL_DIRECTORY": str(spool),
            "MAILROUTER_LOG_FILE_PATH": str(spool / "%slog"),
        }
        defined = defined_macros(Path(exim_config))
        return _run_exim([EXIM, "-C", str(Path(exim_config).resolve()),
                          *(f"-D{name}={value}" for name, value in macros.items() if name not in defined),
                          "-bt", address])


def defined_macros(path: Path) -> set[str]:
    """Names of the macros the Exim configuration ``path`` defines unconditionally
    in its own lines.  A definition inside ``.ifndef NAME`` is a default that a -D
    overrides (exim/mailrouter.conf is made of those); an unconditional one (a
    sandbox's generated wrapper) makes Exim refuse the -D, so it is left out."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror}", field="exim_config") from None
    defined: set[str] = set()
    guards: list[str] = []  # the NAME of each open .ifndef/.ifdef (or "" for other conditionals)
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in (".ifdef", ".ifndef", ".elifdef", ".elifndef") and len(words) > 1:
            if words[0].startswith(".elif") and guards:
                guards.pop()
            guards.append(words[1] if words[0].endswith("ifndef") else "")
            continue
        if words and words[0] == ".else" and guards:
            guards[-1] = ""
            continue
        if words and words[0] == ".endif" and guards:
            guards.pop()
            continue
        found = _MACRO_LINE.match(line)
        if found and found.group(1) not in guards:
            defined.add(found.group(1))
    return defined


def _run_exim(argv: Sequence[str]) -> dict[str, Any]:
    ran = eximcmd.run(argv)
    meaning = EXIM_MEANING.get(ran.rc, "error")
    if ran.rc != 0 and eximcmd.configuration_error(ran.output):
        meaning = "configuration error"
    return {"rc": ran.rc, "meaning": meaning, "output": ran.output}


# -- test auth -----------------------------------------------------------------------------
def probe_auth(config: Config, login: str, password: str) -> dict[str, Any]:
    """The login check POP3/IMAP/SMTP AUTH use: ``{"login", "verdict", "reason"}``
    with verdict ``"ok"`` or ``"refused"``; LDAP down raises DirectoryUnavailable."""
    login = login.strip()
    result = auth.authenticate(config, login, password)
    if result.verdict is auth.Verdict.TEMPORARY:
        raise DirectoryUnavailable(result.reason)
    ok = result.verdict is auth.Verdict.OK
    return {"login": login, "ok": ok, "verdict": result.verdict.name.lower(), "reason": result.reason}


# -- test smtp / pop3 ----------------------------------------------------------------------
def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def host_port(text: str, default: int) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` too) as ``(host, port)``."""
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return text.strip("[]"), default


def _tls_context(insecure: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying against the system's CAs, or ``ca_file`` (a PEM bundle such as the
    sandbox's ``ca_cert``) instead; ``insecure`` verifies nothing."""
    if ca_file is not None and not os.path.isfile(ca_file):
        raise AdminError(f"no CA file {ca_file}", kind="not_found", field="ca_file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise AdminError(f"unusable CA file {ca_file}: {exc}", field="ca_file") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _unverified(host: str, port: int, exc: ssl.SSLCertVerificationError) -> AdminError:
    """A certificate that does not verify is a definite answer, not a reason to retry."""
    return AdminError(f"TLS certificate of {host}:{port} not accepted: {exc.verify_message}; "
                      "name its CA with --ca-file FILE (or skip the check with --insecure)",
                      kind="refused")


def probe_smtp(
    server: str,
    sender: str | None = None,
    recipients: Sequence[str] = (),
    starttls: bool = False,
    insecure: bool = False,
    auth_user: str | None = None,
    password: str | None = None,
    send: bool = False,
    timeout: float = 30.0,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """An SMTP session with ``server`` (HOST[:PORT], default port 25): EHLO, optional
    STARTTLS and AUTH (``auth_user`` + ``password``), MAIL and each RCPT, then RSET
    -- or, with ``send``, a short test message.  Returns ``{"server", "ok",
    "transcript": [{"step", "code", "text"}]}``; ``ok`` is False when the login or
    a recipient was refused.  TLS is verified against the system's CAs, or
    ``ca_file``; ``insecure`` skips the check."""
    host, port = host_port(server, 25)
    transcript: list[dict[str, Any]] = []
    ok = True
    mail_from = normalise_target(sender, field="sender") if sender else ""
    rcpts = [normalise_target(t, field="recipients") for t in recipients]
    if auth_user and not password:
        raise AdminError(f"AUTH as {auth_user} needs a password", field="password")
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as client:
            code, text = client.ehlo(EHLO_NAME)
            transcript.append({"step": "EHLO", "code": code, "text": _decode(text)})
            if starttls:
                code, text = client.starttls(context=_tls_context(insecure, ca_file))
                transcript.append({"step": "STARTTLS", "code": code, "text": _decode(text)})
                client.ehlo(EHLO_NAME)
            if auth_user and password:
                try:
                    code, reply = client.login(auth_user, password)
                except smtplib.SMTPAuthenticationError as exc:
                    code, reply, ok = exc.smtp_code, _decode(exc.smtp_error).encode(), False
                transcript.append({"step": "AUTH", "code": code, "text": _decode(reply)})
            if ok and (rcpts or mail_from):
                code, text = client.mail(mail_from)
                transcript.append({"step": f"MAIL FROM:<{mail_from}>", "code": code, "text": _decode(text)})
                ok = ok and code == 250
                accepted = []
                for rcpt in rcpts:
                    code, text = client.rcpt(rcpt)
                    transcript.append({"step": f"RCPT TO:<{rcpt}>", "code": code, "text": _decode(text)})
                    if code in (250, 251):
                        accepted.append(rcpt)
                    else:
                        ok = False
                if send and accepted and ok:
                    body = (f"From: <{mail_from}>\r\nTo: {', '.join(accepted)}\r\n"
                            "Subject: mailrouter-admin test\r\n\r\nA test message from mailrouter-admin.\r\n")
                    code, text = client.data(body.encode("utf-8"))
                    transcript.append({"step": "DATA", "code": code, "text": _decode(text)})
                    ok = code == 250
                else:
                    client.rset()
    except ssl.SSLCertVerificationError as exc:
        raise _unverified(host, port, exc) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TemporaryFailure(f"SMTP server {host}:{port}: {exc}") from None
    return {"server": f"{host}:{port}", "ok": ok, "transcript": transcript}


def probe_pop3(
    server: str,
    user: str,
    password: str,
    tls: bool = False,
    insecure: bool = False,
    timeout: float = 30.0,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """Log in to the POP3 server ``server`` (HOST[:PORT], default 110, POP3S 995 with
    ``tls``) and STAT: ``{"server", "user", "greeting", "ok", "messages", "size"}``
    or ``{..., "ok": False, "error"}``."""
    host, port = host_port(server, 995 if tls else 110)
    info: dict[str, Any] = {"server": f"{host}:{port}", "user": user}
    try:
        if tls:
            context = _tls_context(insecure, ca_file)
            client: poplib.POP3 = poplib.POP3_SSL(host, port, timeout=timeout, context=context)
        else:
            client = poplib.POP3(host, port, timeout=timeout)
        try:
            info["greeting"] = client.getwelcome().decode(errors="replace")
            client.user(user)
            try:
                client.pass_(password)
            except poplib.error_proto as exc:
                info.update(ok=False, error=str(exc))
            else:
                messages, size = client.stat()
                info.update(ok=True, messages=messages, size=size)
        finally:
            try:
                client.quit()
            except (OSError, poplib.error_proto):
                pass
    except ssl.SSLCertVerificationError as exc:
        raise _unverified(host, port, exc) from None
    except (OSError, poplib.error_proto) as exc:
        raise TemporaryFailure(f"POP3 server {host}:{port}: {exc}") from None
    return info
