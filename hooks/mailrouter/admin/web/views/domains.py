"""Domains: the list (global admins add and remove), and each domain's page."""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import aliases, catchall, domains, ratelimits, users
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import ActionForm, DomainForm, GrantForm, RateLimitForm, TargetsForm, UserForm
from mailrouter.admin.web.views import blueprint, done, pager, submitted


@blueprint.route("/domains")
def domain_list() -> Any:
    person = auth.current()
    pages = pager()
    page = domains.list_domains(auth.ldap(), contains=pages.q or None, offset=pages.offset,
                                limit=pages.size, counts=True)
    return render_template("domains.html", person=person, page=page, pager=pages,
                           form=DomainForm(), action=ActionForm())


@blueprint.route("/domains", methods=["POST"])
def domain_add() -> Any:
    auth.current()
    form = submitted(DomainForm())
    result = domains.add_domain(auth.ldap(), form.domain.data or "", form.description.data or None)
    return done(f"added domain {result['domain']}", "views.domain_page", domain=result["domain"])


@blueprint.route("/domains/<domain>")
def domain_page(domain: str) -> Any:
    person = auth.current()
    ldap = auth.ldap()
    info = domains.show_domain(ldap, domain)
    pages = pager()
    page = users.list_users(ldap, info["domain"], contains=pages.q or None, offset=pages.offset,
                            limit=pages.size)
    return render_template(
        "domain.html", person=person, info=info, page=page, pager=pages,
        user_form=UserForm(), grant_form=GrantForm(), catchall_form=TargetsForm(), action=ActionForm(),
        catchall=catchall.show_catchall(ldap, info["domain"]),
        alias_count=aliases.list_aliases(ldap, info["domain"], limit=0).total,
        rate_limit=ratelimits.describe(info),
        rate_limit_form=RateLimitForm(rate_limit=info["rate_limit"] or ratelimits.INHERIT),
    )


@blueprint.route("/domains/<domain>/ratelimit", methods=["POST"])
def domain_rate_limit(domain: str) -> Any:
    auth.current()
    form = submitted(RateLimitForm())
    result = ratelimits.set_domain_rate_limit(auth.ldap(), domain, form.rate_limit.data or "")
    return done(result["message"], "views.domain_page", domain=result["domain"])


@blueprint.route("/domains/<domain>/remove", methods=["POST"])
def domain_remove(domain: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = domains.remove_domain(auth.ldap(), domain, recursive=True)
    return done(f"removed domain {result['domain']}", "views.domain_list")


@blueprint.route("/domains/<domain>/catchall", methods=["POST"])
def catchall_set(domain: str) -> Any:
    from mailrouter.admin.web.forms import lines

    auth.current()
    form = submitted(TargetsForm())
    result = catchall.set_catchall(auth.ldap(), domain, lines(form.targets.data))
    return done(f"catch-all of {result['domain']} set", "views.domain_page", domain=result["domain"])


@blueprint.route("/domains/<domain>/catchall/clear", methods=["POST"])
def catchall_clear(domain: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = catchall.clear_catchall(auth.ldap(), domain)
    return done(f"catch-all of {result['domain']} removed", "views.domain_page", domain=result["domain"])
