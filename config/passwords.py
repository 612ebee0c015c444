"""RabbitMQ-compatible password hashes (`rabbit_password_hashing_sha256`).

Format: base64(salt + sha256(salt + utf8(password))) with a 4-byte salt, so hashes from a RabbitMQ
definitions export can be pasted into a Leveret config unchanged.
"""

import base64
import binascii
import hmac
import secrets

from cryptography.hazmat.primitives import hashes

SALT_SIZE = 4
DIGEST_SIZE = 32


def _digest(salt: bytes, password: str) -> bytes:
    sha256 = hashes.Hash(hashes.SHA256())
    sha256.update(salt + password.encode("utf-8"))
    return sha256.finalize()


def _decode(password_hash: str) -> bytes | None:
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SALT_SIZE + DIGEST_SIZE else None


def hash_password(password: str) -> str:
    """Hash `password` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_SIZE)
    return base64.b64encode(salt + _digest(salt, password)).decode("ascii")


def check_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; a malformed hash matches nothing."""
    raw = _decode(password_hash)
    if raw is None:
        return False
    salt, expected = raw[:SALT_SIZE], raw[SALT_SIZE:]
    return hmac.compare_digest(expected, _digest(salt, password))


def is_password_hash(value: str) -> bool:
    """Whether `value` is well-formed: base64 of a 4-byte salt and a SHA-256 digest."""
    return _decode(value) is not None
