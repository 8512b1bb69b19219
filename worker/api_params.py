"""Parse and check the backup endpoint's JSON body; every message is safe to return.

Nothing here echoes a value back (a body may hold a password), only field names.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from common.config import ApiSettings, validate_task_id
from common.db import DatabaseTarget
from common.exceptions import ConfigurationError

FIELDS: dict[str, type] = {
    "task_id": str,
    "db_connection": str,
    "truncate_vector_tables": bool,
    "backup_vector_tables": bool,
    "wait": bool,
}


class InvalidParams(ValueError):
    """400: the body is not a valid request."""


class ForbiddenDatabase(ValueError):
    """403: `db_connection` names a host the API may not reach."""


@dataclass(frozen=True)
class BackupParams:
    task_id: str | None = None
    db_connection: str | None = None
    truncate: bool = False
    backup: bool = True
    wait: bool = True


def parse_backup_body(raw: bytes) -> BackupParams:
    """`{}`, an empty body, or an object of the known fields with the right types."""
    if not raw.strip():
        return BackupParams()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: also a 5,000-digit number
        raise InvalidParams("the body must be a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise InvalidParams("the body must be a JSON object")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidParams(f"unknown field(s): {shown}; known: {', '.join(FIELDS)}")
    for name, kind in FIELDS.items():
        value = body.get(name)
        if value is not None and type(value) is not kind:
            expected = "true or false" if kind is bool else "a string"
            raise InvalidParams(f"{name} must be {expected}")
    task_id = body.get("task_id")
    if task_id is not None:
        try:
            validate_task_id(task_id)
        except ConfigurationError as exc:
            raise InvalidParams(f"invalid task_id: {exc}") from None
    truncate = bool(body.get("truncate_vector_tables", False))
    backup = body.get("backup_vector_tables")
    return BackupParams(
        task_id=task_id,
        db_connection=body.get("db_connection") or None,
        truncate=truncate,
        backup=True if backup is None else backup or truncate,  # truncate implies backup
        wait=body.get("wait") is not False,
    )


# The only query parameters a request's URL may carry, and the values each may take.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
URL_FORM = "postgresql://" + "user:password@host:port/dbname"  # the form, not a credential


def check_db_connection(url: str, api: ApiSettings) -> tuple[DatabaseTarget, str]:
    """The database `url` names and the URL the workers will use, if `url` is exactly
    `URL_FORM` (or a socket directory allowed as
    `?host=/path`), with at most `sslmode` and `connect_timeout` (1-60) beside, and a host
    on `VECTOR_API_DB_HOSTS` whose every address is allowed too. The URL handed on
    connects to the address checked here (`hostaddr`), so DNS cannot change it later.

    `InvalidParams` (400) for anything else, `ForbiddenDatabase` (403) for a host or an
    address off the list. No message repeats the URL: it holds a password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 5432
    except ValueError:
        raise InvalidParams(f"db_connection must look like {URL_FORM}") from None
    if parts.scheme not in ("postgresql", "postgres") or parts.fragment or "," in parts.netloc:
        raise InvalidParams(f"db_connection must look like {URL_FORM} (one host, no fragment)")
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    dbname = unquote(parts.path[1:])
    if not user or not password or not dbname or "/" in dbname or "\0" in user + password + dbname:
        # Without a password libpq would use the server's own PGPASSWORD or ~/.pgpass.
        raise InvalidParams(f"db_connection must name a user, a password and a database: {URL_FORM}")
    params = _query(parts.query)
    socket_dir = params.pop("host", None)
    if (socket_dir is None) == (not parts.hostname):
        raise InvalidParams(f"db_connection must name one host: {URL_FORM}")
    if socket_dir is not None:
        if socket_dir not in api.allowed_db_hosts:
            raise ForbiddenDatabase("db_connection: that socket directory is not on VECTOR_API_DB_HOSTS")
        target = DatabaseTarget.from_parts(socket_dir, port, dbname, user, password or None, **params)
        return target, _url(target, host=socket_dir)
    host = parts.hostname or ""
    address = allowed_address(host, port, api)
    target = DatabaseTarget.from_parts(host, port, dbname, user, password or None, hostaddr=address, **params)
    return target, _url(target, hostaddr=address)


def allowed_address(host: str, port: int, api: ApiSettings) -> str:
    """The address to connect to: `host` must be on the list (by name or address), and
    every address it resolves to must be allowed (an address or network on the list; when
    the list has none, an address one of its names resolves to). `ForbiddenDatabase` if not."""
    listed = {h.lower() for h in api.allowed_db_hosts}
    if host.lower() not in listed:
        raise ForbiddenDatabase(
            f"db_connection: host {host[:100]!r} is not allowed; allowed hosts: "
            f"{', '.join(api.allowed_db_hosts) or 'none'} (VECTOR_API_DB_HOSTS)"
        )
    networks = [n for n in map(_network, api.allowed_db_hosts) if n is not None]
    if not networks:
        names = [h for h in api.allowed_db_hosts if _network(h) is None and not h.startswith("/")]
        networks = [ipaddress.ip_network(a) for name in names for a in _resolve(name, port)]
    addresses = _resolve(host, port)
    if not addresses:
        raise ForbiddenDatabase(f"db_connection: host {host[:100]!r} does not resolve")
    for address in addresses:
        if not any(ipaddress.ip_address(address) in network for network in networks):
            raise ForbiddenDatabase(
                f"db_connection: host {host[:100]!r} resolves to {address}, which is not allowed"
            )
    return addresses[0]


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(info[4][0] for info in found))


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidParams("db_connection: its query string could not be read") from None
    params = dict(pairs)
    unknown = sorted({k for k, _ in pairs} - {"host", "sslmode", "connect_timeout"})
    if unknown or len(params) != len(pairs):
        shown = ", ".join(repr(k[:30]) for k in unknown[:5]) or "a parameter given twice"
        raise InvalidParams(f"db_connection: only sslmode and connect_timeout may be given, not {shown}")
    if params.get("sslmode", "prefer") not in SSL_MODES:
        raise InvalidParams(f"db_connection: sslmode must be one of {', '.join(SSL_MODES)}")
    timeout = params.get("connect_timeout", "10")
    if not re.fullmatch(r"[0-9]{1,2}", timeout, re.ASCII) or not 1 <= int(timeout) <= 60:
        raise InvalidParams("db_connection: connect_timeout must be 1 to 60 seconds")
    host = params.get("host")
    if host is not None and not host.startswith("/"):
        raise InvalidParams(f"db_connection: the host goes in the URL: {URL_FORM}")
    return params


def _url(target: DatabaseTarget, **extra: str) -> str:
    """`target` as the URL the workers will read (`DatabaseTarget.from_url`)."""
    query = urlencode({**dict(target.options), **extra, "port": target.port})
    host = "" if "host" in extra else f"[{target.host}]" if ":" in target.host else target.host
    credentials = f"{quote(target.user, safe='')}:{quote(target.password or '', safe='')}"
    return f"postgresql://{credentials}@{host}/{quote(target.dbname, safe='')}?{query}"
