"""The HTML pages: one blueprint, one module per group of pages.

Every handler reads and writes through the admin library
(``mailrouter.admin.domains``, ``users``...) with ``auth.ldap()``, the session
bound as the logged-in person; what they may do is slapd's answer.  State
changes are POST forms (CSRF-checked), answered with a redirect to the page
that shows the result (post/redirect/get) and a one-line notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, flash, redirect, request, url_for
from flask_wtf import FlaskForm

from mailrouter.errors import AdminError

blueprint = Blueprint("views", __name__)

PAGE_SIZE = 50
MAX_FILTER = 100


@dataclass(frozen=True)
class Pager:
    q: str
    page: int
    size: int = PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def pages(self, total: int) -> int:
        return max(1, -(-total // self.size))


def pager() -> Pager:
    q = (request.args.get("q") or "").strip()[:MAX_FILTER]
    try:
        page = max(1, int(request.args.get("page") or "1"))
    except ValueError:
        page = 1
    return Pager(q, page)


def submitted(form: FlaskForm) -> FlaskForm:
    """The validated form, or a 422 naming the first field that is wrong."""
    if not form.validate_on_submit():
        for name, messages in form.errors.items():
            label = getattr(getattr(form, name, None), "label", None)
            text = label.text if label is not None else name
            raise AdminError(f"{text}: {messages[0]}", kind="invalid", field=name)
        raise AdminError("invalid form", kind="invalid")
    return form


def done(message: str, endpoint: str, **values: Any) -> Any:
    flash(message)
    return redirect(url_for(endpoint, **values))


# Route modules register themselves on the blueprint.
from mailrouter.admin.web.views import (  # noqa: E402,F401
    admins,
    aliases,
    audit,
    domains,
    home,
    rules,
    settings,
    users,
)
