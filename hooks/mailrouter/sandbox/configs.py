"""The one writer of ``mailrouter.toml`` files for the sandbox, the tests and the benchmarks.

:func:`write_config` writes the configuration (mode 0644, root:``group``: the
delivery hook reads it as the storage user) and, when a service password is
given, the secret beside it as ``<stem>.secret`` (mode ``secret_mode``,
root:``group``), named by ``bind_password_file``.  Keys left at ``None`` are not
written, so the loader's documented default applies (``mailrouter.config``).
Every string is written as a TOML basic string (JSON escaping is valid TOML).
"""

from __future__ import annotations

import grp
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mailrouter.sandbox.exim import EXIM_USER

TomlValue = str | int | float | bool


def write_private(path: Path, text: str, group: str = EXIM_USER, mode: int = 0o640) -> Path:
    """Write ``text`` to ``path`` as root:group with ``mode`` (default 0640, for secrets).

    Created 0600 and never through a symlink; the final mode is set after the owner.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    path.chmod(mode)
    return path


def secret_path(config_path: Path) -> Path:
    """Where :func:`write_config` puts the service password of ``config_path``."""
    return config_path.with_name(config_path.stem + ".secret")


def _toml(value: TomlValue | Sequence[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def _table(name: str, items: dict[str, TomlValue | Sequence[str] | None]) -> list[str]:
    lines = [f"{key} = {_toml(value)}" for key, value in items.items() if value is not None]
    return [f"[{name}]", *lines, ""] if lines else []


def write_config(
    path: Path,
    *,
    uris: Sequence[str],
    write_uris: Sequence[str] | None = None,
    base_dn: str | None = None,
    bind_dn: str | None = None,
    password: str | None = None,
    connect_timeout: float | None = 2.0,
    operation_timeout: float | None = 2.0,
    connection_max_requests: int | None = None,
    connection_max_age: float | None = None,
    connection_max_idle: float | None = None,
    spool_format: str | None = None,
    mbox_template: str | None = None,
    maildir_template: str | None = None,
    storage_user: str | None = None,
    per_user_ids: bool | None = None,
    min_uid: int | None = None,
    lock_timeout: float | None = None,
    stale_lock_age: float | None = None,
    sender_ownership: bool | None = None,
    password_scheme: str | None = None,
    auth_socket: str | None = None,
    argon2_memory_kib: int | None = None,
    argon2_time: int | None = None,
    argon2_parallelism: int | None = None,
    web: dict[str, TomlValue] | None = None,
    group: str = EXIM_USER,
    secret_mode: int = 0o640,
) -> Path:
    """Write the configuration ``path`` (and its secret when ``password`` is given).

    ``secret_mode`` 0640 lets ``group`` read the secret (Debian-exim for the
    SMTP-time hooks, dovecot for checkpassword); 0600 keeps it root's.
    ``web`` is the ``[web]`` table (``mailrouter.sandbox.web.web_settings``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = None
    if password is not None:
        secret = write_private(secret_path(path), password + "\n", group, mode=secret_mode)
    lines = _table("ldap", {
        "uris": list(uris),
        "write_uris": list(write_uris) if write_uris else None,
        "base_dn": base_dn,
        "bind_dn": bind_dn,
        "bind_password_file": str(secret) if secret else None,
        "connect_timeout": connect_timeout,
        "operation_timeout": operation_timeout,
        "connection_max_requests": connection_max_requests,
        "connection_max_age": connection_max_age,
        "connection_max_idle": connection_max_idle,
    })
    lines += _table("spool", {
        "format": spool_format,
        "mbox_template": mbox_template,
        "maildir_template": maildir_template,
        "storage_user": storage_user,
        "per_user_ids": per_user_ids,
        "min_uid": min_uid,
        "lock_timeout": lock_timeout,
        "stale_lock_age": stale_lock_age,
    })
    lines += _table("auth", {
        "sender_ownership": sender_ownership,
        "password_scheme": password_scheme,
        "auth_socket": auth_socket,
        "argon2_memory_kib": argon2_memory_kib,
        "argon2_time": argon2_time,
        "argon2_parallelism": argon2_parallelism,
    })
    lines += _table("web", dict(web or {}))
    return write_private(path, "\n".join(lines), group, mode=0o644)
