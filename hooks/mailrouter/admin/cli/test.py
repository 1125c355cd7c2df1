"""``mailrouter-admin test address|auth|smtp|pop3``: what the hub does, checked.

These run the hooks' code (bound as the service account) or talk to a running
server: no admin bind, so no --bind-dn needed.
"""

from __future__ import annotations

from typing import Any

from mailrouter.admin import eximcmd, probes
from mailrouter.admin.cli.base import Cli, group, leaf
from mailrouter.admin.cli.output import pairs
from mailrouter.errors import UsageError
from mailrouter.exitcodes import EX_OK, EX_REFUSED

EXIM_COMMAND_HELP = (f"the Exim command line to run (shell words; default ${eximcmd.EXIM_ENV}, else "
                     f"{eximcmd.EXIM}); the sandbox's comes from `mailrouter-sandbox env`")


def address(cli: Cli) -> int:
    args = cli.args
    if args.mailrouter_bin and not args.exim_config:
        raise UsageError("--mailrouter-bin goes with --exim-config (the deployed Exim has its own)")
    if args.exim_command is not None and args.exim_config:
        raise UsageError("--exim-command and --exim-config exclude each other")
    use_exim = args.exim or bool(args.exim_config) or args.exim_command is not None
    info = probes.probe_address(cli.config, args.address, exim=use_exim,
                                exim_config=args.exim_config, mailrouter_bin=args.mailrouter_bin,
                                exim_command=eximcmd.exim_argv(args.exim_command))

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
    return EX_OK if info["ok"] else EX_REFUSED


def smtp(cli: Cli) -> int:
    args = cli.args
    password = cli.secret(f"password for {args.auth_user}: ") if args.auth_user else None
    result = probes.probe_smtp(args.server, sender=args.sender, recipients=args.to, starttls=args.starttls,
                               insecure=args.insecure, auth_user=args.auth_user, password=password,
                               send=args.send, timeout=args.timeout, ca_file=args.ca_file)
    transcript: list[dict[str, Any]] = result["transcript"]
    cli.output.emit(result, lambda: "\n".join(
        f"{t['code']} {t['step']}: {t['text'].splitlines()[0] if t['text'] else ''}" for t in transcript))
    return EX_OK if result["ok"] else EX_REFUSED


def pop3(cli: Cli) -> int:
    args = cli.args
    password = cli.secret(f"password for {args.user}: ")
    info = probes.probe_pop3(args.server, args.user, password, tls=args.tls, insecure=args.insecure,
                             timeout=args.timeout, ca_file=args.ca_file)
    cli.output.emit(info, lambda: pairs(info))
    return EX_OK if info.get("ok") else EX_REFUSED


def tls_options(p: Any) -> None:
    p.add_argument("--ca-file", metavar="FILE",
                   help="verify the server's certificate against the CA(s) in FILE (PEM; the sandbox's "
                   "is its ca_cert) instead of the system's")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate at all")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up after SECONDS per step (default 30)")


def register(top: Any) -> None:
    g = group(top, "test", "check what the hub does (no admin bind needed)")
    p = leaf(g, "address", address, "what Exim would do with an address: router, targets, mailbox, quota")
    p.add_argument("address", help="any address, local@domain (ours or remote)")
    p.add_argument("--exim", action="store_true",
                   help="also run exim -bt ADDRESS (the deployed Exim, or --exim-command's)")
    p.add_argument("--exim-command", metavar="CMD", help=EXIM_COMMAND_HELP + "; implies --exim")
    p.add_argument("--exim-config", metavar="FILE",
                   help="run exim -C FILE -bt with this --config instead (root; implies --exim)")
    p.add_argument("--mailrouter-bin", metavar="DIR",
                   help="with --exim-config: directory of the hooks (default: this Python's bin/)")
    p = leaf(g, "auth", auth, "check a login the way POP3/IMAP/SMTP AUTH do")
    p.add_argument("address", help="the login, local@domain")
    p.add_argument("--secret-file", metavar="FILE", help="password: first line of FILE; default: prompt")
    p = leaf(g, "smtp", smtp, "talk SMTP to a running hub: EHLO, [STARTTLS, AUTH,] MAIL, RCPT each --to")
    p.add_argument("server", help="HOST[:PORT] (default port 25)")
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="MAIL FROM address (default: <>)")
    p.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                   help="a recipient to try (repeat for several)")
    p.add_argument("--starttls", action="store_true", help="STARTTLS after EHLO")
    p.add_argument("--auth-user", metavar="LOGIN", help="AUTH as LOGIN (password from --secret-file)")
    p.add_argument("--secret-file", metavar="FILE", help="AUTH password: first line of FILE; default: prompt")
    p.add_argument("--send", action="store_true", help="send a test message, not just RCPT checks")
    tls_options(p)
    p = leaf(g, "pop3", pop3, "log in to a running POP3 server and count the messages")
    p.add_argument("server", help="HOST[:PORT] (default port 110, 995 with --tls)")
    p.add_argument("user", help="the login, local@domain")
    p.add_argument("--secret-file", metavar="FILE", help="password: first line of FILE; default: prompt")
    p.add_argument("--tls", action="store_true", help="POP3S (TLS on connect)")
    tls_options(p)
