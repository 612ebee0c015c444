"""RabbitMQ-compatible password hashes (`rabbit_password_hashing_sha256`, and the sha512 and md5 ones).

Format: base64(salt + digest(salt + utf8(password))) with a 4-byte salt, so hashes from a RabbitMQ
definitions export can be pasted into a Leveret config unchanged. New hashes are SHA-256, RabbitMQ's default.
"""

import base64
import binascii
import hmac
import secrets

from cryptography.hazmat.primitives import hashes

SALT_SIZE = 4
SHA256 = "rabbit_password_hashing_sha256"
# RabbitMQ's hashing_algorithm names and the digests they stand for.
ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    SHA256: hashes.SHA256,
    "rabbit_password_hashing_sha512": hashes.SHA512,
    "rabbit_password_hashing_md5": hashes.MD5,
}


def _digest(salt: bytes, password: str, algorithm: str) -> bytes:
    digest = hashes.Hash(ALGORITHMS[algorithm]())
    digest.update(salt + password.encode("utf-8"))
    return digest.finalize()


def _decode(password_hash: str, algorithm: str = SHA256) -> bytes | None:
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SALT_SIZE + ALGORITHMS[algorithm]().digest_size else None


def hash_password(password: str) -> str:
    """Hash `password` with SHA-256 and a fresh random salt."""
    salt = secrets.token_bytes(SALT_SIZE)
    return base64.b64encode(salt + _digest(salt, password, SHA256)).decode("ascii")


def check_password(password_hash: str, password: str, algorithm: str = SHA256) -> bool:
    """Whether `password` matches `password_hash`; a malformed hash (or an empty one) matches nothing."""
    if algorithm not in ALGORITHMS:
        return False
    raw = _decode(password_hash, algorithm)
    if raw is None:
        return False
    salt, expected = raw[:SALT_SIZE], raw[SALT_SIZE:]
    return hmac.compare_digest(expected, _digest(salt, password, algorithm))


def is_password_hash(value: str, algorithm: str = SHA256) -> bool:
    """Whether `value` is well-formed: base64 of a 4-byte salt and the algorithm's digest."""
    return algorithm in ALGORITHMS and _decode(value, algorithm) is not None
