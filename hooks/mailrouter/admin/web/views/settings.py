"""System settings (relay hosts, blacklists, backup MX): global admins write, others read."""

from __future__ import annotations

from typing import Any

from flask import render_template

from mailrouter.admin import settings
from mailrouter.admin.web import auth
from mailrouter.admin.web.forms import SettingForm, lines
from mailrouter.admin.web.views import blueprint, done, submitted


@blueprint.route("/settings")
def setting_list() -> Any:
    person = auth.current()
    rows = settings.list_settings(auth.ldap())
    forms = {
        row["setting"]: SettingForm(prefix=row["setting"], values="\n".join(row["values"])) for row in rows
    }
    return render_template("settings.html", person=person, rows=rows, forms=forms)


@blueprint.route("/settings/<name>", methods=["POST"])
def setting_set(name: str) -> Any:
    auth.current()
    form = submitted(SettingForm(prefix=name))
    result = settings.change_setting(auth.ldap(), name, "set", lines(form.values.data))
    return done(f"{result['setting']} saved", "views.setting_list")
