"""The pages' forms (Flask-WTF: each carries the CSRF token).

Only shape is checked here (present, not absurdly long).  What a valid
domain, address, target or quota is stays the admin library's rule
(``mailrouter.admin.normalise``), so the CLI, the pages and the API can never
disagree; its message is shown beside the field.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

MAX_TEXT = 1000
MAX_LIST = 20000
TARGETS = "Targets (one address per line)"


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A button that changes something (remove, enable, revoke...): only the CSRF token."""


class DomainForm(FlaskForm):  # type: ignore[misc]
    domain = StringField("Domain", validators=[DataRequired(), Length(max=300)])
    description = StringField("Description", validators=[Optional(), Length(max=MAX_TEXT)])


class UserForm(FlaskForm):  # type: ignore[misc]
    local = StringField("Local part", validators=[DataRequired(), Length(max=100)])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=1024)])
    quota = StringField("Quota (32M, 1G; 0 = unlimited)", validators=[Optional(), Length(max=30)])
    name = StringField("Full name", validators=[Optional(), Length(max=MAX_TEXT)])
    # "" = store no mailMessageFormat: the hub's spool.format applies (and follows it).
    format = SelectField("Mailbox format", choices=[
        ("", "the hub's default"), ("maildir", "Maildir (IMAP, webmail)"), ("mbox", "mbox (POP3 and IMAP)"),
    ], default="", validate_choice=False)
    admin = BooleanField("Also an admin of this domain")


class FormatForm(FlaskForm):  # type: ignore[misc]
    format = SelectField("Mailbox format", choices=[
        ("maildir", "Maildir (IMAP, webmail)"), ("mbox", "mbox (POP3 and IMAP)"),
    ], validate_choice=False)


class QuotaForm(FlaskForm):  # type: ignore[misc]
    quota = StringField("Quota (32M, 1G; 0 = unlimited)", validators=[DataRequired(), Length(max=30)])


class RateLimitForm(FlaskForm):  # type: ignore[misc]
    rate_limit = StringField("Outbound limit (100/1h, unlimited, or inherit)",
                             validators=[DataRequired(), Length(max=40)])


class NameForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Full name", validators=[DataRequired(), Length(max=MAX_TEXT)])


class ResetPasswordForm(FlaskForm):  # type: ignore[misc]
    password = PasswordField("New password", validators=[DataRequired(), Length(min=8, max=1024)])


class OwnPasswordForm(FlaskForm):  # type: ignore[misc]
    old = PasswordField("Current password", validators=[DataRequired(), Length(max=1024)])
    new = PasswordField("New password", validators=[DataRequired(), Length(min=8, max=1024)])
    again = PasswordField("New password again", validators=[DataRequired(), Length(max=1024)])


class AliasForm(FlaskForm):  # type: ignore[misc]
    local = StringField("Alias (local part)", validators=[DataRequired(), Length(max=100)])
    targets = TextAreaField(TARGETS, validators=[DataRequired(), Length(max=MAX_LIST)])


class TargetsForm(FlaskForm):  # type: ignore[misc]
    targets = TextAreaField(TARGETS, validators=[DataRequired(), Length(max=MAX_LIST)])


class SettingForm(FlaskForm):  # type: ignore[misc]
    values = TextAreaField("Values (one per line)", validators=[Optional(), Length(max=MAX_LIST)])


class GrantForm(FlaskForm):  # type: ignore[misc]
    who = StringField("Address (domain admin) or name (global admin)",
                      validators=[DataRequired(), Length(max=320)])


def lines(text: str | None) -> list[str]:
    """The non-empty lines (also comma-separated items) of a textarea."""
    items: list[str] = []
    for line in (text or "").replace(",", "\n").splitlines():
        if line.strip():
            items.append(line.strip())
    return items


class VacationForm(FlaskForm):  # type: ignore[misc]
    subject = StringField("Subject (default: Out of office)", validators=[Optional(), Length(max=200)])
    text = TextAreaField("Reply text", validators=[DataRequired(), Length(max=8000)])
    start = StringField("First day (YYYY-MM-DD, UTC; empty: now)", validators=[Optional(), Length(max=30)])
    end = StringField("Last day (YYYY-MM-DD, UTC; empty: until switched off)",
                      validators=[Optional(), Length(max=30)])


class SieveForm(FlaskForm):  # type: ignore[misc]
    script = TextAreaField("Sieve script", validators=[DataRequired(), Length(max=32768)])
