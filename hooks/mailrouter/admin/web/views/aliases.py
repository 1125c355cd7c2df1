"""Aliases of a domain: list, add, targets (add/remove), remove."""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import aliases, domains
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import ActionForm, AliasForm, TargetsForm, lines
from mailrouter.admin.web.views import blueprint, done, pager, submitted


@blueprint.route("/domains/<domain>/aliases")
def alias_list(domain: str) -> Any:
    person = auth.current()
    ldap = auth.ldap()
    info = domains.show_domain(ldap, domain)
    pages = pager()
    page = aliases.list_aliases(ldap, info["domain"], contains=pages.q or None, offset=pages.offset,
                                limit=pages.size)
    return render_template("aliases.html", person=person, info=info, page=page, pager=pages,
                           form=AliasForm(), action=ActionForm())


@blueprint.route("/domains/<domain>/aliases", methods=["POST"])
def alias_add(domain: str) -> Any:
    auth.current()
    form = submitted(AliasForm())
    result = aliases.add_alias(auth.ldap(), f"{(form.local.data or '').strip()}@{domain}",
                               lines(form.targets.data))
    local = result["address"].partition("@")[0]
    return done(f"added alias {result['address']}", "views.alias_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/aliases/<local>")
def alias_page(domain: str, local: str) -> Any:
    person = auth.current()
    info = aliases.show_alias(auth.ldap(), f"{local}@{domain}")
    return render_template("alias.html", person=person, info=info, domain=domain, local=local,
                           form=TargetsForm(), action=ActionForm())


@blueprint.route("/domains/<domain>/aliases/<local>/<any(add, remove):action>", methods=["POST"])
def alias_targets(domain: str, local: str, action: str) -> Any:
    auth.current()
    form = submitted(TargetsForm())
    change = aliases.add_targets if action == "add" else aliases.remove_targets
    change(auth.ldap(), f"{local}@{domain}", lines(form.targets.data))
    return done("targets changed", "views.alias_page", domain=domain, local=local)


@blueprint.route("/domains/<domain>/aliases/<local>/target", methods=["POST"])
def alias_target_remove(domain: str, local: str) -> Any:
    """One target's own remove button (the target comes as the form's ``targets``)."""
    return alias_targets(domain, local, "remove")


@blueprint.route("/domains/<domain>/aliases/<local>/remove", methods=["POST"])
def alias_remove(domain: str, local: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = aliases.remove_alias(auth.ldap(), f"{local}@{domain}")
    return done(f"removed alias {result['address']}", "views.alias_list", domain=domain)
