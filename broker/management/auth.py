"""HTTP basic auth as RabbitMQ's management plugin checks it: users, tags, loopback-only users.

The answers copy RabbitMQ 3.10's: no credentials -> 401 with an empty body; a wrong password ->
401 {"error":"not_authorized","reason":"Login failed"} (RabbitMQ spells this one with a z); a user
without a management tag -> 401 {"error":"not_authorised","reason":"Not management user"}.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

from leveret.config import User, check_password

# Any of these tags lets a user into the management API (RabbitMQ's management, policymaker,
# monitoring and administrator tags; policymaker implies management).
MANAGEMENT_TAGS = frozenset({"management", "policymaker", "monitoring", "administrator"})
REALM_HEADER = {"www-authenticate": 'Basic realm="RabbitMQ Management"'}


class NotAuthorised(Exception):
    """A refused request: the status, the JSON body (None: empty) and the headers to answer with."""

    def __init__(self, body: dict[str, str] | None, *, challenge: bool) -> None:
        super().__init__(body)
        self.body = body
        self.headers = REALM_HEADER if challenge else {}


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an Authorization header, None when there is no usable basic one."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if colon else None


def login(users: dict[str, User], header: str | None, client_host: str | None) -> User:
    """The user a request authenticates as, or NotAuthorised."""
    credentials = basic_credentials(header)
    if credentials is None:
        raise NotAuthorised(None, challenge=True)
    username, password = credentials
    user = users.get(username)
    if user is None or not check_password(user.password_hash, password, user.hashing_algorithm):
        raise NotAuthorised({"error": "not_authorized", "reason": "Login failed"}, challenge=True)
    if user.loopback_only and not is_loopback(client_host):
        raise NotAuthorised(
            {"error": "not_authorised", "reason": "User can only log in via localhost"}, challenge=False
        )
    if not MANAGEMENT_TAGS.intersection(user.tags):
        raise NotAuthorised({"error": "not_authorised", "reason": "Not management user"}, challenge=False)
    return user


def require_administrator(user: User) -> None:
    if "administrator" not in user.tags:
        raise NotAuthorised({"error": "not_authorised", "reason": "Not administrator user"}, challenge=False)
