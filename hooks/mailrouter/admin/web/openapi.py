"""The OpenAPI 3.0 document of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Built from one table of operations, so adding a route means adding a row
here; ``tests`` check that every API route of the app is described.
"""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}
FORMAT = {"type": "string", "enum": ["mbox", "maildir"]}
ERROR = {"$ref": "#/components/schemas/Error"}
RATE_LIMIT = {"type": "string", "description": "outbound limit: COUNT / PERIOD (100 / 1h), unlimited, or "
              "inherit (remove: the domain's, then the default_rate_limit setting applies)"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": STRING, "fields": {"type": "object", "additionalProperties": STRING}},
    },
    "Page": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "object"}}, "total": {"type": "integer"},
                       "offset": {"type": "integer"}, "limit": {"type": "integer"}},
    },
    "NewDomain": {"type": "object", "required": ["domain"],
                  "properties": {"domain": STRING, "description": STRING}},
    "NewUser": {"type": "object", "required": ["local", "password"],
                "properties": {"local": STRING, "password": {"type": "string", "format": "password"},
                               "quota": STRING, "name": STRING, "enabled": {"type": "boolean"},
                               "format": FORMAT}},
    "UserChange": {"type": "object",
                   "properties": {"quota": STRING, "enabled": {"type": "boolean"}, "name": STRING,
                                  "password": {"type": "string", "format": "password"},
                                  "rate_limit": RATE_LIMIT, "format": FORMAT}},
    "DomainChange": {"type": "object", "properties": {"rate_limit": RATE_LIMIT}},
    "NewAlias": {"type": "object", "required": ["local", "targets"],
                 "properties": {"local": STRING, "targets": STRINGS}},
    "Targets": {"type": "object", "required": ["targets"], "properties": {"targets": STRINGS}},
    "Values": {"type": "object", "required": ["values"], "properties": {"values": STRINGS}},
    "Vacation": {"type": "object", "required": ["text"],
                 "properties": {"text": STRING, "subject": STRING, "start": STRING, "end": STRING}},
    "SieveScript": {"type": "object", "required": ["script"], "properties": {"script": STRING}},
    "PasswordChange": {"type": "object", "required": ["old", "new"],
                       "properties": {"old": {"type": "string", "format": "password"},
                                      "new": {"type": "string", "format": "password"}}},
}

# (path, method, summary, request schema or None, success status, success schema or None)
OPERATIONS: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("/domains", "get", "List domains (q, offset, limit)", None, 200, "Page"),
    ("/domains", "post", "Add a domain (global admins)", "NewDomain", 201, None),
    ("/domains/{domain}", "get", "Show a domain", None, 200, None),
    ("/domains/{domain}", "patch", "Change the domain's outbound rate limit", "DomainChange", 200, None),
    ("/domains/{domain}", "delete", "Remove a domain (?recursive=1 with its entries)", None, 204, None),
    ("/domains/{domain}/users", "get", "List a domain's users (q, offset, limit)", None, 200, "Page"),
    ("/domains/{domain}/users", "post", "Add a user", "NewUser", 201, None),
    ("/domains/{domain}/users/{local}", "get", "Show a user", None, 200, None),
    ("/domains/{domain}/users/{local}", "patch", "Change quota, status, name, password, rate limit or "
     "mailbox format (409 while the old format's mailbox holds mail)", "UserChange",
     200, None),
    ("/domains/{domain}/users/{local}", "delete", "Remove a user", None, 204, None),
    ("/domains/{domain}/users/{local}/vacation", "get", "Show a user's vacation reply", None, 200, None),
    ("/domains/{domain}/users/{local}/vacation", "put",
     "Set and switch on a user's vacation reply (dates YYYY-MM-DD[THH:MM] UTC)", "Vacation", 200, None),
    ("/domains/{domain}/users/{local}/vacation", "delete", "Switch off a user's vacation reply", None, 204,
     None),
    ("/domains/{domain}/users/{local}/sieve", "get", "Show a user's Sieve script", None, 200, None),
    ("/domains/{domain}/users/{local}/sieve", "put",
     "Set a user's Sieve script (422 with the reason when it is refused)", "SieveScript", 200, None),
    ("/domains/{domain}/users/{local}/sieve", "delete", "Remove a user's Sieve script", None, 204, None),
    ("/domains/{domain}/aliases", "get", "List a domain's aliases (q, offset, limit)", None, 200, "Page"),
    ("/domains/{domain}/aliases", "post", "Add an alias", "NewAlias", 201, None),
    ("/domains/{domain}/aliases/{local}", "get", "Show an alias", None, 200, None),
    ("/domains/{domain}/aliases/{local}", "put", "Create or replace an alias's targets", "Targets", 200,
     None),
    ("/domains/{domain}/aliases/{local}", "delete", "Remove an alias", None, 204, None),
    ("/domains/{domain}/catchall", "get", "Show the catch-all", None, 200, None),
    ("/domains/{domain}/catchall", "put", "Set the catch-all's targets", "Targets", 200, None),
    ("/domains/{domain}/catchall", "delete", "Remove the catch-all", None, 204, None),
    ("/audit", "get", "The audit log, oldest first (domain, since, actor; as slapd lets you see it)",
     None, 200, None),
    ("/settings/{name}", "get", "Values of a system setting", None, 200, None),
    ("/settings/{name}", "put", "Replace a system setting's values (global admins)", "Values", 200, None),
    ("/me/password", "post", "Change your own password", "PasswordChange", 204, None),
]

ERRORS = {
    "400": "malformed request", "401": "no or bad credentials", "403": "refused by slapd's ACLs",
    "404": "no such entry", "409": "exists or not empty", "422": "invalid input",
    "429": "too many failed logins", "503": "LDAP unavailable (Retry-After)",
}


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method, summary, request_schema, status, response_schema in OPERATIONS:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": STRING}
            for name in ("domain", "local", "name") if "{" + name + "}" in path
        ]
        success: dict[str, Any] = {"description": "success"}
        if status != 204:
            schema = _ref(response_schema) if response_schema else {"type": "object"}
            success["content"] = {"application/json": {"schema": schema}}
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                str(status): success,
                **{code: {"description": text, "content": {"application/json": {"schema": ERROR}}}
                   for code, text in ERRORS.items()},
            },
        }
        if request_schema:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(request_schema)}},
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "mailrouter API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "security": [{"basic": []}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}, "schemas": SCHEMAS},
        "paths": paths,
    }
