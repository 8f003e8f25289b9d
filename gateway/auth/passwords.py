"""Password hashing: scrypt (hashlib, RFC 7914) with a random salt, parameters in the string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# RFC 7914 §2 parameters: 16 MiB of memory and tens of milliseconds per check here.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_OCTETS = 16
KEY_OCTETS = 32
SCHEME = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """`scrypt$n$r$p$salt$key`, base64 salt and key."""
    if not password:
        raise ValueError("an empty password is refused")
    salt = secrets.token_bytes(SALT_OCTETS)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_OCTETS,
        maxmem=256 * n * SCRYPT_R,
    )
    return f"{SCHEME}${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """n, r, p, salt and key of `scrypt$n$r$p$salt$key`, or None unless hashlib can check it
    (n a power of 2, parameters within bounds, salt and key non-empty base64)."""
    try:
        scheme, n_s, r_s, p_s, salt_s, key_s = stored.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_s, validate=True)
        key = base64.b64decode(key_s, validate=True)
    except ValueError:  # binascii.Error included
        return None
    if scheme != SCHEME or not (1 < n <= 2**20 and n & (n - 1) == 0):
        return None
    if not (0 < r <= 32 and 0 < p <= 16 and salt and key):
        return None
    return n, r, p, salt, key


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches `stored`, compared in constant time; never for a malformed
    hash. Blocks for the hash's duration: run it off the event loop."""
    parsed = parse_hash(stored)
    if parsed is None:
        return False
    n, r, p, salt, key = parsed
    candidate = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=256 * n * r
    )
    return hmac.compare_digest(candidate, key)


DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
