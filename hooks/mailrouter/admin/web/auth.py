"""Logging in and out, the per-request LDAP identity, throttling and the action log.

One answer for every refused login: unknown user, wrong password, disabled
account and a login that cannot be one all show "invalid login or password",
and none is answered before :data:`MIN_REFUSAL_SECONDS` have passed since the
request arrived.  Why a floor and not dummy hashing: the web has no service
account to look a user up with, and a bind to a DN that does not exist fails
in microseconds while a wrong password costs slapd a hash check; a fixed floor
far above that check hides the difference and slows guessing down too.

Throttling (``State.failures``): more than ``web.login_failures_per_account``
refused logins for one account name, or ``web.login_failures_per_client`` for
one client address, within ``web.login_window`` seconds gives 429 (also for the
right password) until the window has moved on.  A successful login clears the
account's count.

The action log: every request that changes something (POST/PUT/PATCH/DELETE)
and succeeded is logged to syslog (LOG_AUTHPRIV for logins, LOG_MAIL for the
rest) with the acting DN, method, path and status -- paths and DNs only, never
a form value, so never a password.
"""

from __future__ import annotations

import base64
import binascii
import syslog
import time
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from mailrouter.admin.session import AdminSession
from mailrouter.admin.web import identity
from mailrouter.admin.web.errors import is_api
from mailrouter.admin.web.state import State
from mailrouter.config import Config
from mailrouter.errors import AdminError, LdapRefused, NotLoggedIn, Throttled

MIN_REFUSAL_SECONDS = 0.5
REFUSED = "invalid login or password"

blueprint = Blueprint("auth", __name__)


class LoginForm(FlaskForm):  # type: ignore[misc]
    # No length limits here: an over-long login or password is judged by the
    # rules of every login front end (identity.authenticate) and gets the one
    # refusal, after the floor -- not an instant "please give a login" page.
    login = StringField("Login (your mail address, or an admin name)", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class LogoutForm(FlaskForm):  # type: ignore[misc]
    pass


def config() -> Config:
    value: Config = current_app.config["MAILROUTER_CONFIG"]
    return value


def state() -> State:
    value: State = current_app.extensions["mailrouter_state"]
    return value


def client_address() -> str:
    return request.remote_addr or "unknown"


def _log(priority: int, facility: int, message: str) -> None:
    syslog.openlog("mailrouter-web", syslog.LOG_PID, facility)
    try:
        syslog.syslog(priority, message)
    finally:
        syslog.closelog()


# -- throttling ----------------------------------------------------------------------
def _check_throttle(account: str) -> None:
    web = config().web
    store = state()
    if (
        store.failures("account", account, web.login_window) >= web.login_failures_per_account
        or store.failures("client", client_address(), web.login_window) >= web.login_failures_per_client
    ):
        raise Throttled(web.login_window)


def _refused(account: str, started: float, why: str) -> None:
    store = state()
    store.record_failure("account", account)
    store.record_failure("client", client_address())
    _log(syslog.LOG_NOTICE, syslog.LOG_AUTHPRIV,
         f"refused login account={account[:100]!r} client={client_address()} ({why})")
    delay = MIN_REFUSAL_SECONDS - (time.monotonic() - started)
    if delay > 0:
        time.sleep(delay)


def check_login(login: str, password: str) -> identity.Person | None:
    """Throttle, then authenticate; ``None`` (after the floor) for any refusal."""
    started = time.monotonic()
    account = login.strip().lower()[:320]
    _check_throttle(account)
    person = identity.authenticate(config(), login, password)
    if person is None:
        _refused(account, started, "bad credentials or disabled")
        return None
    state().clear_failures("account", account)
    return person


# -- the per-request identity ----------------------------------------------------------
def current() -> identity.Person:
    """The logged-in person, with ``g.ldap`` bound as them; :class:`NotLoggedIn` otherwise."""
    person: identity.Person | None = g.get("person")
    if person is not None:
        return person
    if is_api():
        dn, password = _basic_credentials()
    else:
        dn, password = _session_credentials()
    try:
        ldap = AdminSession(config(), dn, password)
    except (AdminError, LdapRefused) as exc:
        # The password changed elsewhere, or the account went away: the login ends.
        if not is_api():
            _end_session()
        raise NotLoggedIn() from exc
    g.ldap = ldap
    person = identity.load(config(), ldap, dn)
    if person is None:
        raise NotLoggedIn()
    g.person = person
    return person


def ldap() -> AdminSession:
    current()
    value: AdminSession = g.ldap
    return value


def _session_credentials() -> tuple[str, str]:
    session_id, key_text = session.get("sid"), session.get("k")
    if not isinstance(session_id, str) or not isinstance(key_text, str):
        raise NotLoggedIn()
    try:
        key = base64.urlsafe_b64decode(key_text)
    except (binascii.Error, ValueError) as exc:
        raise NotLoggedIn() from exc
    login = state().load(session_id, key)
    if login is None:
        session.clear()
        raise NotLoggedIn()
    return login.dn, login.password


def _basic_credentials() -> tuple[str, str]:
    if "Authorization" not in request.headers:
        raise NotLoggedIn()
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username or not auth.password:
        # Credentials that cannot be read (not UTF-8, no colon, empty, another
        # scheme) are a refused login like any other: one answer, after the floor.
        check_login(auth.username or "" if auth is not None else "", "")
        raise NotLoggedIn()
    person = check_login(auth.username, auth.password)
    if person is None:
        raise NotLoggedIn()
    return person.dn, auth.password


def _end_session() -> None:
    session_id = session.get("sid")
    if isinstance(session_id, str):
        state().delete(session_id)
    session.clear()


def start_session(person: identity.Person, password: str) -> None:
    """Log ``person`` in: a fresh server-side session and a fresh cookie."""
    _end_session()
    session_id, key = state().create(person.dn, password)
    session["sid"] = session_id
    session["k"] = base64.urlsafe_b64encode(key).decode("ascii")


def close_ldap(_exc: BaseException | None) -> None:
    ldap_session: AdminSession | None = g.pop("ldap", None)
    if ldap_session is not None:
        ldap_session.close()


def log_action(response: Response) -> Response:
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and response.status_code < 400:
        person: identity.Person | None = g.get("person")
        if person is not None:
            _log(syslog.LOG_INFO, syslog.LOG_MAIL,
                 f"actor={person.dn} {request.method} {request.path} -> {response.status_code} "
                 f"client={client_address()}")
    return response


def safe_next(target: str | None) -> str:
    """Only a path of this site: never an open redirect."""
    if not target:
        return url_for("views.home")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("views.home")
    return target


# -- views -------------------------------------------------------------------------------
@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm()
    message = None
    status = 200
    if form.validate_on_submit():
        person = check_login(form.login.data or "", form.password.data or "")
        if person is not None:
            start_session(person, form.password.data or "")
            _log(syslog.LOG_INFO, syslog.LOG_AUTHPRIV, f"login actor={person.dn} client={client_address()}")
            return redirect(safe_next(request.args.get("next")))
        message, status = REFUSED, 401
    elif request.method == "POST":
        message, status = "please give a login and a password", 400
    return render_template("login.html", form=form, message=message), status


@blueprint.route("/logout", methods=["POST"])
def logout() -> Any:
    form = LogoutForm()
    if form.validate_on_submit():
        person: identity.Person | None = None
        try:
            person = current()
        except NotLoggedIn:
            pass
        _end_session()
        if person is not None:
            _log(syslog.LOG_INFO, syslog.LOG_AUTHPRIV, f"logout actor={person.dn}")
    return redirect(url_for("auth.login"))
