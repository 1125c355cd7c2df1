"""Admin grants: global admins (the global page) and each domain's admins (the domain page)."""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import admins
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import ActionForm, GrantForm
from mailrouter.admin.web.views import blueprint, done, submitted


@blueprint.route("/admins")
def admin_list() -> Any:
    person = auth.current()
    info = admins.list_admins(auth.ldap(), None)
    return render_template("admins.html", person=person, info=info, form=GrantForm(), action=ActionForm())


@blueprint.route("/admins", methods=["POST"])
def global_grant() -> Any:
    auth.current()
    form = submitted(GrantForm())
    result = admins.grant_global_admin(auth.ldap(), (form.who.data or "").strip())
    return done(f"{result['admin']} is a global admin", "views.admin_list")


@blueprint.route("/admins/revoke", methods=["POST"])
def global_revoke() -> Any:
    auth.current()
    form = submitted(GrantForm())
    result = admins.revoke_global_admin(auth.ldap(), (form.who.data or "").strip())
    return done(f"{result['admin']} is no longer a global admin", "views.admin_list")


@blueprint.route("/domains/<domain>/admins", methods=["POST"])
def domain_grant(domain: str) -> Any:
    auth.current()
    form = submitted(GrantForm())
    admins.grant_domain_admin(auth.ldap(), (form.who.data or "").strip(), domain)
    return done(f"{form.who.data} is an admin of {domain}", "views.domain_page", domain=domain)


@blueprint.route("/domains/<domain>/admins/revoke", methods=["POST"])
def domain_revoke(domain: str) -> Any:
    auth.current()
    form = submitted(GrantForm())
    admins.revoke_domain_admin(auth.ldap(), (form.who.data or "").strip(), domain)
    return done(f"{form.who.data} is no longer an admin of {domain}", "views.domain_page", domain=domain)
