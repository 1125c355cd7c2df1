"""A user's mail rules (issue 16): the vacation reply and the Sieve filter.

One page for the user themself (linked from "My account") and for their
domain's admins (linked from the user page); slapd decides who may write
(``ldap/acl.conf`` rule 2b).  A script is checked by ``mailrouter.admin.rules``
before it is stored: a refusal is shown with its reason (our rule, or Exim's
parser quoted).
"""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import rules
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import ActionForm, SieveForm, VacationForm
from mailrouter.admin.web.views import blueprint, done, submitted


def _address(local: str, domain: str) -> str:
    return f"{local}@{domain}"


def _date(value: str | None) -> str:
    return (value or "")[:10]


@blueprint.route("/domains/<domain>/users/<local>/rules")
def user_rules(domain: str, local: str) -> Any:
    person = auth.current()
    session = auth.ldap()
    vacation = rules.vacation_show(session, _address(local, domain))
    sieve = rules.sieve_show(session, _address(local, domain))
    return render_template(
        "rules.html", person=person, domain=domain, local=local, vacation=vacation, sieve=sieve,
        vacation_form=VacationForm(subject=vacation["subject"], text=vacation["text"],
                                   start=_date(vacation["start"]), end=_date(vacation["end"])),
        sieve_form=SieveForm(script=sieve["script"]), action=ActionForm(),
    )


@blueprint.route("/domains/<domain>/users/<local>/vacation", methods=["POST"])
def user_vacation(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(VacationForm())
    result = rules.vacation_set(auth.ldap(), _address(local, domain), form.text.data or "",
                                subject=form.subject.data or None, start=form.start.data or "",
                                end=form.end.data or "")
    return done(result["message"], "views.user_rules", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/vacation/off", methods=["POST"])
def user_vacation_off(domain: str, local: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = rules.vacation_off(auth.ldap(), _address(local, domain))
    return done(result["message"], "views.user_rules", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/sieve", methods=["POST"])
def user_sieve(domain: str, local: str) -> Any:
    auth.current()
    form = submitted(SieveForm())
    result = rules.sieve_set(auth.ldap(), _address(local, domain), form.script.data or "")
    return done(result["message"], "views.user_rules", domain=domain, local=local)


@blueprint.route("/domains/<domain>/users/<local>/sieve/remove", methods=["POST"])
def user_sieve_remove(domain: str, local: str) -> Any:
    auth.current()
    submitted(ActionForm())
    result = rules.sieve_remove(auth.ldap(), _address(local, domain))
    return done(result["message"], "views.user_rules", domain=domain, local=local)
