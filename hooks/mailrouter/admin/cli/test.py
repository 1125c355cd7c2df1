"""``mailrouter-admin test address|auth|smtp|pop3``: what the hub does, checked.

These run the hooks' code (bound as the service account) or talk to a running
server: no admin bind, so no --bind-dn needed.
"""

from __future__ import annotations

from typing import Any

from mailrouter.admin import probes
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.admin.cli.output import pairs
from mailrouter.errors import UsageError
from mailrouter.exitcodes import EX_OK, EX_REFUSED


def address(cli: Cli) -> int:
    args = cli.args
    if args.mailrouter_bin and not args.exim_config:
        raise UsageError("--mailrouter-bin goes with --exim-config (the deployed Exim has its own)")
    info = probes.probe_address(cli.config, args.address, exim=args.exim or bool(args.exim_config),
                                exim_config=args.exim_config, mailrouter_bin=args.mailrouter_bin)

    def human() -> str:
        text = pairs({k: v for k, v in info.items() if k != "exim"})
        if "exim" in info:
            text += "\n--- exim -bt (rc {rc}: {meaning}) ---\n{output}".format(**info["exim"])
        return text

    cli.output.emit(info, human)
    return EX_OK


def auth(cli: Cli) -> int:
    login = cli.args.address.strip()
    info = probes.probe_auth(cli.config, login, cli.secret(f"password for {login}: "))
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK if info["verdict"] == "ok" else EX_REFUSED


def smtp(cli: Cli) -> int:
    args = cli.args
    password = cli.secret(f"password for {args.auth_user}: ") if args.auth_user else None
    result = probes.probe_smtp(args.server, sender=args.sender, recipients=args.to, starttls=args.starttls,
                               insecure=args.insecure, auth_user=args.auth_user, password=password,
                               send=args.send, timeout=args.timeout)
    transcript: list[dict[str, Any]] = result["transcript"]
    cli.output.emit(result, lambda: "\n".join(
        f"{t['code']} {t['step']}: {t['text'].splitlines()[0] if t['text'] else ''}" for t in transcript))
    return EX_OK if result["ok"] else EX_REFUSED


def pop3(cli: Cli) -> int:
    args = cli.args
    password = cli.secret(f"password for {args.user}: ")
    info = probes.probe_pop3(args.server, args.user, password, tls=args.tls, insecure=args.insecure,
                             timeout=args.timeout)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK if info.get("ok") else EX_REFUSED


def register(top: Any) -> None:
    g = group(top, "test", "check what the hub does")
    p = leaf(g, "address", address, "what Exim would do with an address")
    p.add_argument("address")
    p.add_argument("--exim", action="store_true", help="also run exim -bt (the deployed Exim and its config)")
    p.add_argument("--exim-config", help="run exim -bt with this Exim config instead (root; implies --exim)")
    p.add_argument("--mailrouter-bin",
                   help="with --exim-config: directory of the hooks (default: this Python's bin/)")
    p = leaf(g, "auth", auth, "check a login the way POP3/IMAP/SMTP AUTH do")
    p.add_argument("address")
    p.add_argument("--secret-file", help="password: first line of FILE; default: prompt")
    p = leaf(g, "smtp", smtp, "talk SMTP to a running hub")
    p.add_argument("server", help="HOST[:PORT]")
    p.add_argument("--from", dest="sender")
    p.add_argument("--to", action="append", default=[])
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    p.add_argument("--auth-user")
    p.add_argument("--secret-file")
    p.add_argument("--send", action="store_true", help="send a test message, not just RCPT checks")
    p.add_argument("--timeout", type=float, default=30.0)
    p = leaf(g, "pop3", pop3, "log in to a running POP3 server")
    p.add_argument("server", help="HOST[:PORT]")
    p.add_argument("user")
    p.add_argument("--secret-file")
    p.add_argument("--tls", action="store_true", help="POP3S")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
