"""The landing page and the self-service pages of every logged-in person."""

from __future__ import annotations

from typing import Any

from flask import redirect, render_template, url_for

from mailrouter.admin import ratelimits, users
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import OwnPasswordForm
from mailrouter.admin.web.views import blueprint, done, submitted
from mailrouter.errors import AdminError


@blueprint.route("/")
def home() -> Any:
    person = auth.current()
    if person.global_admin:
        return redirect(url_for("views.domain_list"))
    if len(person.admin_of) == 1:
        return redirect(url_for("views.domain_page", domain=person.admin_of[0]))
    if person.admin_of:
        return redirect(url_for("views.domain_list"))
    return redirect(url_for("views.me"))


def percent_used(quota: dict[str, Any]) -> int | None:
    """How full a mailbox is, from the library's quota object (None: unlimited or unknown)."""
    used, limit = quota.get("used_bytes"), quota.get("limit_bytes")
    if used is None or not limit:
        return None
    return int(min(100, round(100 * used / limit)))


@blueprint.route("/me")
def me() -> Any:
    person = auth.current()
    info: dict[str, Any] = {"login": person.login, "dn": person.dn, "role": person.role}
    if person.address is not None:
        user = users.show_user(auth.ldap(), person.address)
        info.update(name=user.get("name"), quota=user["quota"], percent=percent_used(user["quota"]),
                    rate_limit=ratelimits.describe(user), address=person.address)
    return render_template("me.html", person=person, info=info, form=OwnPasswordForm())


@blueprint.route("/me/password", methods=["POST"])
def own_password() -> Any:
    person = auth.current()
    form = submitted(OwnPasswordForm())
    if form.new.data != form.again.data:
        raise AdminError("the two new passwords differ", kind="invalid", field="again")
    old, new = form.old.data or "", form.new.data or ""
    change_own_password(person.dn, old, new)
    # The session held the old password: log in afresh with the new one.
    auth.start_session(person, new)
    return done("your password was changed", "views.me")


def change_own_password(dn: str, old: str, new: str) -> None:
    """Password Modify as the person, proving the old password (slapd hashes the new one)."""
    if old == new:
        raise AdminError("the new password equals the old one", kind="invalid", field="new")
    try:
        auth.ldap().password_modify(dn, new, "change your password", "your password", "no such account",
                                    old_password=old)
    except AdminError as exc:
        if exc.kind == "refused":
            raise AdminError("the current password is wrong, or the change was refused", kind="refused",
                             field="old") from None
        raise
