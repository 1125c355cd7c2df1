"""mailrouter-web -- the web interface (admin and self-service pages, JSON API) under gunicorn.

Usage::

    mailrouter-web [--config CONF] [--check]

Serves ``mailrouter.admin.web.create_app(config)`` with gunicorn on
``web.listen`` (default ``127.0.0.1:8443``), ``web.workers`` worker processes,
HTTPS with ``web.tls_certificate``/``web.tls_key`` when both are set.  Without
them it speaks plain HTTP and MUST sit behind a TLS reverse proxy on the same
host (set ``web.proxies = 1`` so the client address and scheme come from the
proxy's ``X-Forwarded-*`` headers): the session cookie is ``Secure`` and
browsers will not send it over plain HTTP.  Example (nginx)::

    location / { proxy_pass http://127.0.0.1:8080;
                 proxy_set_header X-Forwarded-For $remote_addr;
                 proxy_set_header X-Forwarded-Proto https;
                 proxy_set_header X-Forwarded-Host $host; }

``--check`` builds the application (reads the configuration and the web
secret, prepares ``web.state_dir``) and exits: 0 fine, 75 not.

Reads: the TOML configuration (``[ldap]``, ``[spool]``, ``[web]``); the web
secret file (``web.secret_key_file``, at least 32 characters: it signs
cookies and CSRF tokens); never the service account's secret -- the web binds
as each logged-in person.  Writes: ``web.state_dir`` (sessions with encrypted
passwords, login throttles; see ``mailrouter.admin.web.state``).  Run it as an
unprivileged user that owns ``web.state_dir`` and may read the config and the
web secret (``systemd/mailrouter-web.service``).

Logs: gunicorn's error log on stderr; logins, refused logins and every admin
action to syslog (ident ``mailrouter-web``), with the acting DN and never a
password.

Exit codes: 0 after SIGTERM/SIGINT (gunicorn's graceful stop) or a good
``--check``; 75 bad configuration, the address cannot be bound, any
unexpected error (``mailrouter.cmd.guard``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailrouter import config as config_module
from mailrouter.errors import MailrouterError
from mailrouter.exitcodes import EX_OK, EX_TEMPFAIL

REQUEST_TIMEOUT = 60  # seconds; LDAP's own timeouts are far shorter


def gunicorn_options(config: config_module.Config) -> dict[str, Any]:
    web = config.web
    options: dict[str, Any] = {
        "bind": web.listen,
        "workers": web.workers,
        "timeout": REQUEST_TIMEOUT,
        "graceful_timeout": 10,
        "proc_name": "mailrouter-web",
        # Built once in the master: a broken config fails before any fork.
        "preload_app": True,
        "accesslog": "-",
        # No query strings or headers beyond the defaults: nothing secret is logged.
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "forwarded_allow_ips": "127.0.0.1,::1" if web.proxies else "",
    }
    if web.tls_certificate and web.tls_key:
        options.update(certfile=web.tls_certificate, keyfile=web.tls_key)
    return options


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailrouter-web", description="mailrouter's web interface")
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH)
    parser.add_argument("--check", action="store_true", help="build the application and exit")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
        from mailrouter.admin.web import create_app

        application = create_app(config)
    except (MailrouterError, OSError) as exc:
        print(f"mailrouter-web: cannot start: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if args.check:
        return EX_OK

    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_options(config).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return application

    try:
        Server().run()
    except SystemExit as exc:  # gunicorn exits 1 when it cannot bind or boot a worker
        return EX_OK if exc.code in (0, None) else EX_TEMPFAIL
    return EX_OK
