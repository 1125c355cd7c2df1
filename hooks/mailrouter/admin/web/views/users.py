"""Users of a domain: add, show, quota (with current use), outbound limit, mailbox format, status, name,
password, remove."""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import ratelimits, users
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import (
    ActionForm,
    FormatForm,
    NameForm,
    QuotaForm,
    RateLimitForm,
    ResetPasswordForm,
    UserForm,
)
from mailrouter.admin.web.views import blueprint, done, submitted
from mailrouter.admin.web.views.home import percent_used


def _address(local: str, domain: str) -> str:
    return f"{local}@{domain}"


@blueprint.route("/domains/<domain>/users", methods=["POST"])
def user_add(domain: str) -> Any:
    auth.current()
    form = submitted(UserForm())
    result = users.add_user(
        auth.ldap(), _address((form.local.data or "").strip(), domain), form.password.data or "",
        quota=form.quota.data or None, name=form.name.data or None, admin=bool(form.admin.data),
        mailbox_format=form.format.data or None,
    )
    local = result["address"].partition("@")[0]
    return done(f"added user {result['address']}", "views.user_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>")
def user_page(domain: str, local: str) -> Any:
    person = auth.current()
    info = users.show_user(auth.ldap(), _address(local, domain))
    return render_template(
        "user.html", person=person, info=info, percent=percent_used(info["quota"]), domain=domain,
        local=local,
        quota_form=QuotaForm(quota=info["quota"]["limit"]), name_form=NameForm(name=info.get("name")),
        password_form=ResetPasswordForm(), action=ActionForm(),
        rate_limit=ratelimits.describe(info),
        rate_limit_form=RateLimitForm(rate_limit=info["rate_limit"] or ratelimits.INHERIT),
        format_form=FormatForm(format=info["mailbox_format"]),
    )


@blueprint.route("/domains/<domain>/users/<local>/quota", methods=["POST"])
def user_quota(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(QuotaForm())
    result = users.set_quota(auth.ldap(), _address(local, domain), form.quota.data or "")
    return done(f"quota of {result['address']} is now {result['quota']['limit']}", "views.user_page",
                domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/ratelimit", methods=["POST"])
def user_rate_limit(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(RateLimitForm())
    result = ratelimits.set_user_rate_limit(auth.ldap(), _address(local, domain), form.rate_limit.data or "")
    return done(result["message"], "views.user_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/format", methods=["POST"])
def user_format(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(FormatForm())
    result = users.set_format(auth.ldap(), _address(local, domain), form.format.data or "")
    return done(result["message"], "views.user_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/name", methods=["POST"])
def user_name(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(NameForm())
    users.set_name(auth.ldap(), _address(local, domain), form.name.data or "")
    return done("name changed", "views.user_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/password", methods=["POST"])
def user_password(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(ResetPasswordForm())
    users.set_password(auth.ldap(), _address(local, domain), form.password.data or "")
    return done("password reset", "views.user_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/<any(enable, disable):action>", methods=["POST"])
def user_status(domain: str, local: str, action: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = users.set_enabled(auth.ldap(), _address(local, domain), action == "enable")
    return done(f"{result['address']} is now {result['status']}", "views.user_page",
                domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/remove", methods=["POST"])
def user_remove(domain: str, local: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = users.remove_user(auth.ldap(), _address(local, domain))
    return done(f"removed user {result['address']}", "views.domain_page", domain=domain)
