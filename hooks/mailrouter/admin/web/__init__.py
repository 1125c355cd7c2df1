"""mailrouter's web interface: admin pages, self-service pages and the JSON API.

``create_app(config)`` is the application factory (Flask); ``mailrouter-web``
(``mailrouter.cmd.web``) serves it with gunicorn.  Nothing happens at import
time.

Security model, written down (the reasons are in the modules named):

* **slapd decides.**  Every read and write binds to LDAP as the logged-in
  person (``session.py``); the pages only hide what a role cannot do.  A
  forged request is refused by slapd and shown as one message with 403.
* **No password in a cookie, none readable on the server** (``state.py``):
  the cookie holds a session id and a key; the server holds the password
  encrypted under that key.  Idle and absolute timeouts end a login.
* **CSRF**: a Flask-WTF token on every state-changing form; the API takes
  only JSON bodies (a cross-site form cannot send ``application/json``) and
  HTTP Basic credentials, never the cookie.
* **Cookies** ``Secure``, ``HttpOnly``, ``SameSite=Strict``; a strict
  Content-Security-Policy (no script at all, styles from our origin only);
  every value escaped by Jinja's autoescape.
* **Logins** (``auth.py``): throttled per account and per client address;
  unknown user, wrong password and disabled account give the same answer
  after the same minimum time.  Every admin action and every login is logged
  to syslog with the acting DN (never a password).
* **Errors** map to HTTP statuses in one place (``errors.py``): 400 malformed,
  401 not logged in, 403 slapd refused, 404 no such entry, 409 exists,
  422 invalid input, 429 throttled, 503 LDAP unavailable (``Retry-After``).
"""

from __future__ import annotations

from typing import Any

from mailrouter.config import Config


def create_app(config: Config, **overrides: Any) -> Any:
    """The Flask application for ``config``; ``overrides`` go into ``app.config`` (tests)."""
    from mailrouter.admin.web.app import build

    return build(config, overrides)
