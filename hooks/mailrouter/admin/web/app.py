"""The application factory's body: configuration, security headers, blueprints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from mailrouter.admin.web import api, auth, errors, views
from mailrouter.admin.web.state import State
from mailrouter.config import Config

# No script at all; styles and images from our own origin; forms post only to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
MAX_REQUEST_BYTES = 1 << 20


def build(config: Config, overrides: dict[str, Any]) -> Flask:
    app = Flask("mailrouter.admin.web", static_folder="static", template_folder="templates")
    web = config.web
    app.config.update(
        SECRET_KEY=overrides.pop("SECRET_KEY", None) or web.secret_key(),
        SESSION_COOKIE_NAME="mailrouter",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=web.absolute_timeout),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        # The CSRF token lives as long as the login; the login's own timeouts end it.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=True,
        MAILROUTER_CONFIG=config,
    )
    app.config.update(overrides)
    app.extensions["mailrouter_state"] = State(
        web.state_dir, web.idle_timeout, web.absolute_timeout
    ).prepare()
    if web.proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=web.proxies, x_proto=web.proxies, x_host=web.proxies
        )
    csrf = CSRFProtect(app)
    csrf.exempt(api.blueprint)
    app.jinja_env.autoescape = True
    app.register_blueprint(auth.blueprint)
    app.register_blueprint(views.blueprint)
    app.register_blueprint(api.blueprint)
    errors.register(app)
    app.after_request(_security_headers)
    app.after_request(auth.log_action)
    app.teardown_request(auth.close_ldap)
    return app


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: Flask-WTF checks that HTTPS form posts come from our own pages.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if request.endpoint != "static" or g.get("person") is not None:
        response.headers["Cache-Control"] = "no-store"
    return response
