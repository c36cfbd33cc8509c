"""Signed stores: the secret, the store's signing key, and the MAC of a message.

A store created with ``secret=`` is *signed*: every value record carries a MAC
under a key only holders of the secret can compute, and a record without a
valid one is refused before anything unpickles it. This module owns the
cryptography of it:

- `secret_bytes`: what a secret may be (bytes, or a str taken as UTF-8; at
  least `MIN_SECRET_SIZE` bytes);
- `Signer`: the store's signing key, derived from the secret and the store's
  random salt (HMAC-SHA256), and the MAC of a message under it (keyed
  BLAKE2b-256, whose keyed state is computed once and copied per message);
- `signed_settings` and `store_signer`: the ``signature`` entry of the
  store's metadata (algorithm, salt, and a MAC of a fixed message that tells a
  wrong secret at open), written at creation and checked at every open.

It must never store, print or put the secret in a message (only `Shelf`'s
pickle carries it, see `_shelf`), nor know the record layout: `_signed`
decides which bytes of a record its MAC covers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from ._errors import CorruptError, SignatureError, UnsupportedFormatError

__all__ = [
    "ALGORITHM",
    "MAC_SIZE",
    "MIN_SECRET_SIZE",
    "SIGNED_VALUE_FORMAT",
    "Signer",
    "secret_bytes",
    "signed_settings",
    "store_signer",
]

ALGORITHM = "blake2b-256"
MAC_SIZE = 32
MIN_SECRET_SIZE = 16
# The metadata's value_format of a signed store: older objstores accept only 1,
# so they refuse to open a signed store (and to write unsigned records into it).
SIGNED_VALUE_FORMAT = 2
_SALT_SIZE = 16
_DERIVE = b"objstore signing key\x00"
# The message whose MAC the metadata keeps. A record's MAC message holds the
# byte 0xff (before its key): no record message can equal this one.
_CHECK = b"objstore secret check"


def secret_bytes(secret: object) -> bytes:
    """The bytes of `secret` (a str is encoded as UTF-8); `ValueError` if shorter than `MIN_SECRET_SIZE`."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    elif isinstance(secret, (bytearray, memoryview)):
        secret = bytes(secret)
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(
            f"secret is {len(secret)} bytes; a signing secret must be at least {MIN_SECRET_SIZE} "
            "bytes: use e.g. secrets.token_bytes(32), and keep it outside the store"
        )
    return secret


class Signer:
    """The signing key of one signed store: computes the MAC of a message.

    `keyed` is the BLAKE2b-256 state keyed with the store's key, before any
    data: a MAC is ``keyed.copy()``, updated with the message, then digested,
    which saves keying BLAKE2b again for every record (a third of the cost
    of a small record's MAC).
    """

    __slots__ = ("keyed",)

    def __init__(self, secret: bytes, salt: bytes) -> None:
        # HMAC-SHA256 takes a secret of any length (BLAKE2b keys stop at 64
        # bytes), and the salt makes every store's key its own.
        key = hmac.digest(secret, _DERIVE + salt, "sha256")
        self.keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)

    def mac(self, *parts: bytes | memoryview) -> bytes:
        """The MAC of the concatenation of `parts`."""
        state = self.keyed.copy()
        for part in parts:
            state.update(part)
        return state.digest()


def signed_settings(secret: bytes) -> dict[str, Any]:
    """The metadata entries of a new store signed with `secret` (a fresh random salt)."""
    salt = os.urandom(_SALT_SIZE)
    check = Signer(secret, salt).mac(_CHECK)
    return {
        "value_format": SIGNED_VALUE_FORMAT,
        "signature": {"algorithm": ALGORITHM, "salt": salt.hex(), "check": check.hex()},
    }


def store_signer(path: str, settings: dict[str, Any], secret: bytes | None) -> Signer | None:
    """The signer of the store at `path` whose metadata is `settings`, opened with `secret`.

    None for an unsigned store opened without a secret. Raises `SignatureError`
    when the secret is missing, wrong, or given for an unsigned store.
    """
    signature = settings.get("signature")
    if signature is None:
        if secret is None:
            return None
        raise SignatureError(
            f"{path!r} is not a signed store, so secret= cannot be used with it (its values carry "
            "no signatures); open it without secret=, or copy its contents into a new store "
            "created with secret= (docs/security.md says how)"
        )
    if secret is None:
        raise SignatureError(
            f"{path!r} is a signed store: its values can be checked, and new ones signed, only with "
            "its secret; open it with secret="
        )
    try:
        algorithm = signature["algorithm"]
        salt = bytes.fromhex(signature["salt"])
        check = bytes.fromhex(signature["check"])
    except (TypeError, KeyError, ValueError):
        raise CorruptError(
            f"the signature settings in the metadata of {path!r} are damaged; restore it from a backup"
        ) from None
    if algorithm != ALGORITHM:
        raise UnsupportedFormatError(
            f"{path!r} is signed with {algorithm!r}, which this objstore does not know; upgrade objstore"
        )
    signer = Signer(secret, salt)
    if not hmac.compare_digest(signer.mac(_CHECK), check):
        raise SignatureError(
            f"wrong secret for {path!r}: it is not the secret the store was created with; "
            "open it with that one (nothing was read or changed)"
        )
    return signer
