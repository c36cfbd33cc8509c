"""Keys: how a ``str`` key becomes the bytes it is stored under, and back.

This module owns every key rule: a key is a non-empty ``str`` that is valid
Unicode, stored as its UTF-8 (so keys sort in code point order); a key whose
UTF-8 is longer than the storage's `MAX_KEY_SIZE` is stored under its long
form (its first 494 bytes, the marker 0xfe, never in UTF-8, and a hash of the
whole key), its record keeping the whole key (docs/format.md). It also turns
range bounds into a range of stored keys, and stored keys read back into keys.

`stored_key` is the one function that applies the rules to a key; single
operations, bulk writes and the read hot path all call it. Writes let its
errors through; lookups take its `ValueError` to mean "absent" (a key that
cannot be stored is in no store).

It must never see a value (records are opaque here, read only through
`_records`' `is_intact` and `record_key`) nor use the storage beyond a
``get`` it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b

from ._errors import CorruptError
from ._records import is_intact, record_key
from ._storage import MAX_KEY_SIZE

__all__ = [
    "KEY_ENCODING",
    "LongKey",
    "bounds",
    "check_slot",
    "is_utf8",
    "key_of",
    "long_positions",
    "own_record",
    "stored_key",
    "stored_keys",
    "undecodable_key",
]

KEY_ENCODING = "utf-8"
_DIGEST_SIZE = 16
_LONG_PREFIX = MAX_KEY_SIZE - 1 - _DIGEST_SIZE  # 494: a stored long key is MAX_KEY_SIZE bytes
_MARKER = 0xFE  # below the 0xff of prefix bounds
_MARKER_BYTE = bytes((_MARKER,))


class LongKey(bytes):
    """The stored form of a key longer than `MAX_KEY_SIZE` bytes; `whole` is the key's UTF-8.

    A distinct type, so that a caller tells a long key from a short one with
    one type check, and finds the whole key to compare with a record's.
    """

    whole: bytes


def _digest(encoded: bytes) -> bytes:
    """The hash of a whole long key, part of its stored form."""
    return blake2b(encoded, digest_size=_DIGEST_SIZE).digest()


def _long_form(encoded: bytes) -> LongKey:
    """The stored form of the key whose UTF-8 is `encoded`, longer than MAX_KEY_SIZE bytes."""
    stored = LongKey(encoded[:_LONG_PREFIX] + _MARKER_BYTE + _digest(encoded))
    stored.whole = encoded
    return stored


def _is_long_form(raw: bytes) -> bool:
    """Whether the stored key `raw` stands for a long key (whose record holds the whole key)."""
    return len(raw) == MAX_KEY_SIZE and raw[_LONG_PREFIX] == _MARKER


def stored_key(key: object) -> bytes:
    """Return the bytes `key` is stored under (a `LongKey` for a long key).

    `TypeError` if `key` is not a ``str``; `ValueError`, saying why, if it
    cannot be a key (empty, not valid Unicode).
    """
    if type(key) is str:  # the common case, without a second frame (the hot paths)
        try:
            encoded = key.encode()  # an exact str: its encode is str.encode
        except UnicodeEncodeError:
            encoded = b""
        if 0 < len(encoded) <= MAX_KEY_SIZE:
            return encoded
    if not isinstance(key, str):
        raise TypeError(f"objstore keys must be str, not {type(key).__name__}")
    try:
        # str.encode, never the key's own encode(): a str subclass must not choose its bytes.
        encoded = str.encode(key)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"key {key!r} cannot be encoded as UTF-8 ({exc.reason}); objstore keys must be valid text"
        ) from None
    if not encoded:
        raise ValueError("the empty string cannot be a key: objstore keys are at least one character")
    return encoded if len(encoded) <= MAX_KEY_SIZE else _long_form(encoded)


def stored_keys(keys: list[str]) -> list[bytes]:
    """`stored_key` of every key (a bulk write); raises for the first key that cannot be one."""
    # The common case at C speed: every key a str that encodes, none empty, none long.
    # Anything else (or an error on the way) takes the rules key by key.
    try:
        encoded = list(map(str.encode, keys))
    except (TypeError, UnicodeEncodeError):
        return list(map(stored_key, keys))
    if encoded and 0 < min(map(len, encoded)) and max(map(len, encoded)) <= MAX_KEY_SIZE:
        return encoded
    return list(map(stored_key, keys))


def long_positions(stored: list[bytes]) -> list[int]:
    """The positions of the long keys in a list made by `stored_keys`."""
    if not stored or max(map(len, stored)) < MAX_KEY_SIZE:
        return []
    return [i for i, raw in enumerate(stored) if type(raw) is LongKey]


def own_record(record: bytes | None, stored: LongKey) -> bytes | None:
    """`record`, found under the long key `stored`, if it is that key's.

    An intact record holding another key (their hashes collide) is not this
    key's: None. A damaged record is returned, for decoding to report it.
    """
    if record is None or record_key(record) == stored.whole or not is_intact(record):
        return record
    return None


def check_slot(get: Callable[[bytes], bytes | None], stored: LongKey, key: str) -> None:
    """Refuse to store the long `key` under `stored` if another key's intact record is there."""
    existing = get(stored)
    if existing is not None and is_intact(existing) and record_key(existing) != stored.whole:
        raise ValueError(
            f"cannot store key {key[:60]!r}... ({len(stored.whole)} bytes): its hash collides with "
            "that of another long key in the store; nothing was stored. Change the key (e.g. add a "
            "suffix)"
        )


def is_utf8(raw: bytes) -> bool:
    """Whether the stored key `raw` is a key's own UTF-8 (not a long form, not damage)."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def undecodable_key(raw: bytes) -> str:
    """How an entry whose key cannot be read is named: its stored bytes, with lone surrogates.

    No real key contains a lone surrogate, so the name cannot be mistaken for
    one (and a lookup of it answers "absent").
    """
    return raw.decode("utf-8", "surrogateescape")


def key_of(raw: bytes, record: bytes | None, get: Callable[[bytes], bytes | None], path: str) -> str | None:
    """The key stored as `raw`, which is not UTF-8: a long key, or damage (`CorruptError`).

    `record` is its record, or None to read it with `get`: then a key deleted
    since `raw` was read gives None. `path` names the store in errors.
    """
    if not _is_long_form(raw):
        raise CorruptError(
            f"the key stored as {raw!r} is damaged (it is not valid UTF-8); the other keys are "
            f"unaffected: `python -m objstore check {path}` lists every damaged "
            "entry. Restore the store from a backup, or copy the other keys to a new store",
            undecodable_key(raw),
        )
    if record is None:
        record = get(raw)
        if record is None:
            return None
    encoded = record_key(record)
    if encoded is not None and _long_form(encoded) == raw:
        try:
            return encoded.decode()
        except UnicodeDecodeError:
            pass
    raise CorruptError(
        f"the record of the long key stored as {raw!r} is damaged, and with it the key; the other "
        f"keys are unaffected: `python -m objstore check {path}` lists every damaged "
        "entry. Restore the store from a backup, or copy the other keys to a new store",
        undecodable_key(raw),
    )


def _bound(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str or None, not {type(value).__name__}")
    # surrogatepass keeps code point order for bounds that are not valid text.
    return str.encode(value, "utf-8", "surrogatepass")


def bounds(
    prefix: str | None, start: str | None, stop: str | None
) -> tuple[bytes | None, bytes | None, Callable[[str], bool] | None]:
    """The stored-key range [lo, hi) of keys that start with `prefix` and lie in [`start`, `stop`).

    The range is exact for bounds of at most _LONG_PREFIX bytes of UTF-8.
    Longer bounds cut into the first bytes of long keys, which is all their
    stored forms keep of them: the range is then widened to every key sharing
    the bound's first _LONG_PREFIX bytes, and the third item is the test the
    keys found must pass (else None).
    """
    lo = _bound(start, "start")
    hi = _bound(stop, "stop")
    p = _bound(prefix, "prefix")
    exact = True
    if lo is not None and len(lo) > _LONG_PREFIX:
        lo, exact = lo[:_LONG_PREFIX], False
    if hi is not None and len(hi) > _LONG_PREFIX:
        hi, exact = hi[:_LONG_PREFIX] + b"\xff", False
    if p:
        if len(p) > _LONG_PREFIX:
            p, exact = p[:_LONG_PREFIX], False
        # No UTF-8 byte is 0xff, nor is the long key marker 0xfe: exactly the
        # stored keys starting with p lie in [p, p + b"\xff").
        lo = p if lo is None else max(lo, p)
        end = p + b"\xff"
        hi = end if hi is None else min(hi, end)
    if exact:
        return lo, hi, None

    def within(key: str) -> bool:
        return (
            (prefix is None or key.startswith(prefix))
            and (start is None or key >= start)
            and (stop is None or key < stop)
        )

    return lo, hi, within
