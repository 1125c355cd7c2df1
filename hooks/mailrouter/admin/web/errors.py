"""Every error the web front end can meet, mapped to an HTTP status in one place.

The same table serves the pages (an error page with one clear message) and
the API (``{"error": message, "fields": {field: message}}``).  Nothing ever
shows a traceback: an unexpected exception is a 500 with a fixed text (the
details go to the server's log only).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from mailrouter.errors import (
    AdminError,
    DirectoryUnavailable,
    InvalidName,
    LdapRefused,
    NotLoggedIn,
    ReadOnlyReplica,
    TemporaryFailure,
    Throttled,
)

RETRY_AFTER_SECONDS = 30

ADMIN_ERROR_STATUS = {"invalid": 422, "refused": 403, "not_found": 404, "exists": 409, "conflict": 409}
LDAP_REFUSAL_STATUS = {
    49: 401, 50: 403, 53: 403, 32: 404, 20: 409, 68: 409, 66: 409,
    19: 422, 21: 422, 34: 422, 64: 422, 65: 422,
}

log = logging.getLogger("mailrouter.web")


def status_of(exc: BaseException) -> tuple[int, str, dict[str, str]]:
    """``(status, message, field messages)`` for any exception."""
    if isinstance(exc, AdminError):
        kind = getattr(exc, "kind", "invalid")
        field = getattr(exc, "field", None)
        fields: dict[str, str] = dict(getattr(exc, "fields", None) or ({field: str(exc)} if field else {}))
        return ADMIN_ERROR_STATUS.get(kind, 422), str(exc), fields
    if isinstance(exc, LdapRefused):
        return LDAP_REFUSAL_STATUS.get(exc.code, 403), f"refused by the directory: {exc}", {}
    if isinstance(exc, InvalidName):
        return 422, str(exc), {}
    if isinstance(exc, ReadOnlyReplica):
        # A misconfiguration (ldap.write_uris names a replica): nothing was written.
        return 503, "the change reached a read-only replica and was not made (see the server log)", {}
    if isinstance(exc, (DirectoryUnavailable, TemporaryFailure)):
        return 503, "the directory is unavailable; try again later", {}
    if isinstance(exc, NotLoggedIn):
        return 401, "please log in", {}
    if isinstance(exc, Throttled):
        return 429, str(exc), {}
    if isinstance(exc, CSRFError):
        return 400, "the form expired or did not come from this site; reload the page and try again", {}
    if isinstance(exc, HTTPException):
        return exc.code or 500, exc.description or exc.name, {}
    return 500, "internal error", {}


def is_api() -> bool:
    return request.blueprint == "api"


def respond(exc: BaseException) -> Any:
    status, message, fields = status_of(exc)
    if status >= 500 and not isinstance(exc, (DirectoryUnavailable, TemporaryFailure)):
        log.exception("unexpected error on %s %s", request.method, request.path)
    if isinstance(exc, ReadOnlyReplica):
        log.error("%s %s: %s", request.method, request.path, exc)  # which server, where to write instead
    headers: dict[str, str] = {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(exc, Throttled):
        headers["Retry-After"] = str(exc.retry_after)
    if is_api():
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="mailrouter", charset="UTF-8"'
        body: dict[str, Any] = {"error": message}
        if fields:
            body["fields"] = fields
        return jsonify(body), status, headers
    if status == 401:
        from flask import redirect, url_for

        return redirect(url_for("auth.login", next=request.path))
    return render_template("error.html", status=status, message=message), status, headers


def register(app: Flask) -> None:
    app.register_error_handler(Exception, respond)
