"""The JSON API, ``/api/v1/``: the pages' operations for automation, same authorization.

Authentication: HTTP Basic over TLS on every request, with the logins of the
pages (full address, or a global admin's name); each request binds to LDAP as
that person, so slapd's ACLs decide exactly as for the pages.  The cookie is
never accepted here, and request bodies must be ``application/json``: a
cross-site HTML form can send neither, which is this API's CSRF defence.
Refused logins are throttled and answered like the login page.

Statuses: 200 read or changed, 201 created, 204 deleted; 400 malformed request
(not JSON, not an object); 401 no or bad credentials (``WWW-Authenticate``);
403 slapd refused; 404 no such entry; 409 exists / not empty; 422 invalid input
(``{"error": ..., "fields": {field: message}}``, one message per field);
429 throttled; 503 LDAP unavailable (``Retry-After``).  The input rules are
the CLI's (``mailrouter.admin.normalise``).  The OpenAPI document is at
``/api/v1/openapi.json`` (no login needed).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from mailrouter.admin import aliases, audit, catchall, domains, ratelimits, rules, settings, users
from mailrouter.admin.normalise import normalise_format, normalise_quota
from mailrouter.admin.web import auth
from mailrouter.admin.web.views.home import change_own_password
from mailrouter.errors import AdminError, FieldErrors

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _body(required: dict[str, type], optional: dict[str, type]) -> dict[str, Any]:
    """The JSON object of the request, its fields type-checked (422 per field)."""
    if not request.is_json:
        from werkzeug.exceptions import BadRequest

        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        from werkzeug.exceptions import BadRequest

        raise BadRequest("the body must be a JSON object")
    problems: dict[str, str] = {}
    for name in required:
        if name not in data:
            problems[name] = "required"
    for name, value in data.items():
        kind = required.get(name) or optional.get(name)
        if kind is None:
            problems[name] = "unknown field"
        elif kind is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems[name] = "must be a list of strings"
        elif kind is bool and not isinstance(value, bool):
            problems[name] = "must be true or false"
        elif kind is str and not isinstance(value, str):
            problems[name] = "must be a string"
    if problems:
        raise FieldErrors(problems)
    return data


def _page() -> tuple[str | None, int, int]:
    try:
        offset = max(0, int(request.args.get("offset", "0")))
        limit = min(MAX_LIMIT, max(1, int(request.args.get("limit", str(DEFAULT_LIMIT)))))
    except ValueError:
        raise FieldErrors({"offset": "must be a number", "limit": "must be a number"}) from None
    return (request.args.get("q") or None), offset, limit


def _listing(page: Any) -> Response:
    return jsonify({"items": page.items, "total": page.total, "offset": page.offset, "limit": page.limit})


def _no_content() -> Response:
    return Response(status=204)


# -- domains ----------------------------------------------------------------------------
@blueprint.get("/domains")
def get_domains() -> Any:
    auth.current()
    q, offset, limit = _page()
    return _listing(domains.list_domains(auth.ldap(), contains=q, offset=offset, limit=limit, counts=True))


@blueprint.post("/domains")
def post_domains() -> Any:
    auth.current()
    body = _body({"domain": str}, {"description": str})
    return jsonify(domains.add_domain(auth.ldap(), body["domain"], body.get("description"))), 201


@blueprint.get("/domains/<domain>")
def get_domain(domain: str) -> Any:
    auth.current()
    return jsonify(domains.show_domain(auth.ldap(), domain))


@blueprint.patch("/domains/<domain>")
def patch_domain(domain: str) -> Any:
    auth.current()
    body = _body({}, {"rate_limit": str})
    _check_rate_limit(body)
    ldap = auth.ldap()
    if "rate_limit" in body:
        ratelimits.set_domain_rate_limit(ldap, domain, body["rate_limit"])
    return jsonify(domains.show_domain(ldap, domain))


def _check_rate_limit(body: dict[str, Any]) -> None:
    """422 for a ``rate_limit`` that is not COUNT / PERIOD, unlimited or inherit."""
    if "rate_limit" in body:
        try:
            ratelimits.typed_limit(body["rate_limit"])
        except AdminError as exc:
            raise FieldErrors({"rate_limit": str(exc)}) from None


@blueprint.delete("/domains/<domain>")
def delete_domain(domain: str) -> Any:
    auth.current()
    recursive = request.args.get("recursive") in ("1", "true", "yes")
    domains.remove_domain(auth.ldap(), domain, recursive=recursive)
    return _no_content()


# -- users ------------------------------------------------------------------------------
@blueprint.get("/domains/<domain>/users")
def get_users(domain: str) -> Any:
    auth.current()
    q, offset, limit = _page()
    return _listing(users.list_users(auth.ldap(), domain, contains=q, offset=offset, limit=limit))


@blueprint.post("/domains/<domain>/users")
def post_users(domain: str) -> Any:
    auth.current()
    body = _body({"local": str, "password": str},
                 {"quota": str, "name": str, "enabled": bool, "format": str})
    created = users.add_user(
        auth.ldap(), f"{body['local']}@{domain}", body["password"], quota=body.get("quota"),
        name=body.get("name"), enabled=body.get("enabled", True), mailbox_format=body.get("format"),
    )
    return jsonify(users.show_user(auth.ldap(), created["address"])), 201


@blueprint.get("/domains/<domain>/users/<local>")
def get_user(domain: str, local: str) -> Any:
    auth.current()
    return jsonify(users.show_user(auth.ldap(), f"{local}@{domain}"))


@blueprint.patch("/domains/<domain>/users/<local>")
def patch_user(domain: str, local: str) -> Any:
    auth.current()
    body = _body({}, {"quota": str, "enabled": bool, "name": str, "password": str, "rate_limit": str,
                      "format": str})
    address = f"{local}@{domain}"
    ldap = auth.ldap()
    # Every value is checked before the first write, so a bad one changes nothing.
    if "quota" in body:
        try:
            normalise_quota(body["quota"])
        except AdminError as exc:
            raise FieldErrors({"quota": str(exc)}) from None
    _check_rate_limit(body)
    if "format" in body:
        try:
            normalise_format(body["format"])
        except AdminError as exc:
            raise FieldErrors({"format": str(exc)}) from None
    if "password" in body and len(body["password"]) < 8:
        raise FieldErrors({"password": "at least 8 characters"})
    users.show_user(ldap, address)  # 404 before anything is written
    if "format" in body:  # first: the one change that can be refused (409) for the mailbox's state
        users.set_format(ldap, address, body["format"])
    if "quota" in body:
        users.set_quota(ldap, address, body["quota"])
    if "enabled" in body:
        users.set_enabled(ldap, address, body["enabled"])
    if "name" in body:
        users.set_name(ldap, address, body["name"])
    if "rate_limit" in body:
        ratelimits.set_user_rate_limit(ldap, address, body["rate_limit"])
    if "password" in body:
        users.set_password(ldap, address, body["password"])
    return jsonify(users.show_user(ldap, address))


@blueprint.delete("/domains/<domain>/users/<local>")
def delete_user(domain: str, local: str) -> Any:
    auth.current()
    users.remove_user(auth.ldap(), f"{local}@{domain}")
    return _no_content()


# -- a user's mail rules (issue 16; the user themself and the domain's admins) -------------
@blueprint.get("/domains/<domain>/users/<local>/vacation")
def get_vacation(domain: str, local: str) -> Any:
    auth.current()
    return jsonify(rules.vacation_show(auth.ldap(), f"{local}@{domain}"))


@blueprint.put("/domains/<domain>/users/<local>/vacation")
def put_vacation(domain: str, local: str) -> Any:
    auth.current()
    body = _body({"text": str}, {"subject": str, "start": str, "end": str})
    result = rules.vacation_set(auth.ldap(), f"{local}@{domain}", body["text"], subject=body.get("subject"),
                                start=body.get("start"), end=body.get("end"))
    result.pop("ok", None)
    result.pop("message", None)
    return jsonify(result)


@blueprint.delete("/domains/<domain>/users/<local>/vacation")
def delete_vacation(domain: str, local: str) -> Any:
    auth.current()
    rules.vacation_off(auth.ldap(), f"{local}@{domain}")
    return _no_content()


@blueprint.get("/domains/<domain>/users/<local>/sieve")
def get_sieve(domain: str, local: str) -> Any:
    auth.current()
    return jsonify(rules.sieve_show(auth.ldap(), f"{local}@{domain}"))


@blueprint.put("/domains/<domain>/users/<local>/sieve")
def put_sieve(domain: str, local: str) -> Any:
    auth.current()
    body = _body({"script": str}, {})
    rules.sieve_set(auth.ldap(), f"{local}@{domain}", body["script"])
    return jsonify(rules.sieve_show(auth.ldap(), f"{local}@{domain}"))


@blueprint.delete("/domains/<domain>/users/<local>/sieve")
def delete_sieve(domain: str, local: str) -> Any:
    auth.current()
    rules.sieve_remove(auth.ldap(), f"{local}@{domain}")
    return _no_content()


# -- aliases ------------------------------------------------------------------------------
@blueprint.get("/domains/<domain>/aliases")
def get_aliases(domain: str) -> Any:
    auth.current()
    q, offset, limit = _page()
    return _listing(aliases.list_aliases(auth.ldap(), domain, contains=q, offset=offset, limit=limit))


@blueprint.post("/domains/<domain>/aliases")
def post_aliases(domain: str) -> Any:
    auth.current()
    body = _body({"local": str, "targets": list}, {})
    created = aliases.add_alias(auth.ldap(), f"{body['local']}@{domain}", body["targets"])
    return jsonify(aliases.show_alias(auth.ldap(), created["address"])), 201


@blueprint.get("/domains/<domain>/aliases/<local>")
def get_alias(domain: str, local: str) -> Any:
    auth.current()
    return jsonify(aliases.show_alias(auth.ldap(), f"{local}@{domain}"))


@blueprint.put("/domains/<domain>/aliases/<local>")
def put_alias(domain: str, local: str) -> Any:
    auth.current()
    body = _body({"targets": list}, {})
    result = aliases.put_alias(auth.ldap(), f"{local}@{domain}", body["targets"])
    status = 201 if result.get("created") else 200
    return jsonify(aliases.show_alias(auth.ldap(), f"{local}@{domain}")), status


@blueprint.delete("/domains/<domain>/aliases/<local>")
def delete_alias(domain: str, local: str) -> Any:
    auth.current()
    aliases.remove_alias(auth.ldap(), f"{local}@{domain}")
    return _no_content()


# -- catch-all ---------------------------------------------------------------------------
@blueprint.get("/domains/<domain>/catchall")
def get_catchall(domain: str) -> Any:
    auth.current()
    return jsonify(catchall.show_catchall(auth.ldap(), domain))


@blueprint.put("/domains/<domain>/catchall")
def put_catchall(domain: str) -> Any:
    auth.current()
    body = _body({"targets": list}, {})
    return jsonify(catchall.set_catchall(auth.ldap(), domain, body["targets"]))


@blueprint.delete("/domains/<domain>/catchall")
def delete_catchall(domain: str) -> Any:
    auth.current()
    catchall.clear_catchall(auth.ldap(), domain)
    return _no_content()


# -- audit log --------------------------------------------------------------------------------
@blueprint.get("/audit")
def get_audit() -> Any:
    auth.current()
    filters = {name: request.args.get(name) or None for name in ("domain", "since", "actor")}
    return jsonify(audit.records(auth.ldap(), **filters))


# -- settings -------------------------------------------------------------------------------
@blueprint.get("/settings/<name>")
def get_setting(name: str) -> Any:
    auth.current()
    return jsonify(settings.get_setting(auth.ldap(), name))


@blueprint.put("/settings/<name>")
def put_setting(name: str) -> Any:
    auth.current()
    body = _body({"values": list}, {})
    return jsonify(settings.change_setting(auth.ldap(), name, "set", body["values"]))


# -- self-service -----------------------------------------------------------------------------
@blueprint.post("/me/password")
def post_own_password() -> Any:
    person = auth.current()
    body = _body({"old": str, "new": str}, {})
    if len(body["new"]) < 8:
        raise FieldErrors({"new": "at least 8 characters"})
    change_own_password(person.dn, body["old"], body["new"])
    return _no_content()


@blueprint.get("/openapi.json")
def openapi() -> Any:
    from mailrouter.admin.web.openapi import document

    return jsonify(document())
