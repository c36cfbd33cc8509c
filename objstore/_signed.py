"""SignedCodec: the codec of a signed store, whose records carry a MAC.

It owns the signed records: how a record is signed (`_signed`), how a MAC is
checked before anything of a record is read (`_signed_decoder`, the fast path,
and `SignedCodec._decode_checked`), and the errors a refused record raises.
The layout is described in `_records`; the key and the MAC function come from
`_sign`. It must never load a record whose MAC does not match, nor hand out a
view of a record's buffers unchecked (a signed store's values are never
zero-copy views).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import SignatureError
from ._records import (
    _KNOWN_SECTIONS,
    _SECTION_END,
    CRC_RESIDUE,
    KIND_SECTIONS,
    SECTION_KEY,
    SECTION_MAC,
    TRAILER_SIZE,
    Record,
    _body,
    _section_end,
    _sections,
    bad_record,
    crc32,
)
from ._refs import resolver
from ._serialize import LARGE, Codec, Pickler, add_key_note
from ._sign import MAC_SIZE, Signer

__all__ = ["SignedCodec"]

_MAC_END = _section_end(MAC_SIZE, SECTION_MAC)  # the MAC section's length and tag
_MAC_TAIL = _SECTION_END + 1 + TRAILER_SIZE  # from the end of the MAC to the end of the record
_MAC_START = _MAC_TAIL + MAC_SIZE  # from the start of the MAC to the end of the record
_SIGNED_TAIL = _MAC_END + bytes((1, KIND_SECTIONS))  # after the MAC of a record with no other section
_SIGNED_ONLY = frozenset({SECTION_KEY, SECTION_MAC})  # the sections a signed record loads in place with
_KEY_MARK = b"\xff"  # between a MAC message's record bytes and its key: UTF-8 never holds it
_SIGNED_HEAD = _SIGNED_TAIL + _KEY_MARK


class SignedCodec(Codec):
    """The codec of a signed store: its records carry a MAC, and only records whose MAC matches load.

    Chosen when the shelf is opened, so unsigned stores keep `Codec`'s paths
    untouched. Every write path goes through `encode` or `encode_many`, which
    sign; `decode` checks the MAC of every record before loading it (see
    "Signed records" in the module docstring).
    """

    __slots__ = ("_signed_load", "signer")

    def __init__(self, signer: Signer, protocol: int | None = None, *args: Any, **options: Any) -> None:
        super().__init__(protocol, *args, **options)
        self.signer = signer
        # In band only: a signature covers the whole record, buffers included, which a
        # view handed out unchecked (zero-copy) would skip.
        self._spot = None
        # What the fast path loads a record with: in place, or (a serializer's bytes) its body.
        self._signed_load = self._fast_load if self._serializer is None else self._load_signed_body
        self.decode = self.decoder(None)

    def decoder(self, mapping: Any) -> Callable[[bytes, str], Any]:
        """`decode` for the reads of `mapping`, as `Codec.decoder`, with every MAC checked."""
        bound = None if mapping is None else resolver(mapping)
        return _signed_decoder(
            self._signed_load, self.signer, self._decode_checked, self._unpicklers, self._stock, bound
        )

    def take(self, record: Any) -> Any:
        """`record` copied whole: a signed record is loaded only after its MAC is checked."""
        return bytes(record)

    def view_decoder(self, mapping: Any) -> Callable[[Any, str], Any]:
        """`decoder(mapping)`: a signed store's values are never views, as every byte is checked."""
        return self.decoder(mapping)

    def _load_signed_body(self, record: bytes) -> Any:
        return self._load_body(bytes(_body(record)[0]))

    def batch_loader(self, records: Sequence[bytes]) -> Callable[[bytes], Any] | None:
        """None: every record of a signed store goes through `decode`, which checks its MAC."""
        return None

    def encode(self, value: Any, key: str, keep_key: bool = False, large: bool = False) -> Record:
        """Return the signed record for `value` under `key` (holding the whole key if `keep_key`)."""
        return _signed(super().encode(value, key, large=large), key, keep_key, self.signer)

    def encode_many(
        self, values: Sequence[Any], keys: Sequence[str], keep_keys: Sequence[int] = ()
    ) -> list[Record]:
        """Return the signed records of `values` under `keys`, as `Codec.encode_many`."""
        keep, signer = frozenset(keep_keys), self.signer
        if self._picklers.Pickler is not Pickler:  # Codec._encode_many would call this class's encode
            return [self.encode(v, k, i in keep) for i, (v, k) in enumerate(zip(values, keys, strict=True))]
        records = self._encode_many(values, keys)
        return [_signed(r, k, i in keep, signer) for i, (r, k) in enumerate(zip(records, keys, strict=True))]

    def intact(self, record: bytes, key: str) -> bool:
        """Whether the MAC of `record` matches `key` and its bytes, and its sections are all known.

        As in `decode`, the CRC is not consulted: a matching MAC proves every
        byte it covers intact, and only the CRC is outside it.
        """
        if not self._mac_matches(record, key):
            return False
        sections = _sections(record)
        return sections is not None and sections.keys() <= _KNOWN_SECTIONS

    def _mac_matches(self, record: bytes, key: str) -> bool:
        if len(record) < _MAC_START or record[-_MAC_TAIL : -_MAC_TAIL + _SECTION_END] != _MAC_END:
            return False
        try:
            whole = str.encode(key)
        except UnicodeEncodeError:  # a key read from damaged bytes: no record can be signed for it
            return False
        tail = bytes(record[-_MAC_TAIL : -TRAILER_SIZE + 1])  # bytes: the record may be a view
        mac = _record_mac(self.signer, whole, tail, record[:-_MAC_START])
        return hmac.compare_digest(mac, record[-_MAC_START:-_MAC_TAIL])

    def _decode_checked(self, record: bytes, key: str, mapping: Any = None) -> Any:
        """`decode` for records off its fast path: long keys, other sections, and refusals (raised)."""
        if self._mac_matches(record, key):
            sections = _sections(record)
            if sections is None or not sections.keys() <= _SIGNED_ONLY or self._serializer is not None:
                # Other features' sections, or a serializer's bytes to slice out: the plain
                # path reads them (or says it cannot).
                return super()._decode_checked(record, key, mapping)
            try:
                return self.load(record)
            except Exception as exc:
                add_key_note(exc, key)
                raise
        if len(record) <= TRAILER_SIZE or crc32(record) != CRC_RESIDUE:
            raise bad_record(record, key)  # damaged
        if (
            len(record) < _MAC_START
            or record[-TRAILER_SIZE] != KIND_SECTIONS
            or record[-_MAC_TAIL + _SECTION_END - 1] != SECTION_MAC
        ):
            raise SignatureError(
                f"the value of key {key!r} holds no signature, so it was not written with this "
                "store's secret (but by objstore without secret=, an older objstore, or another "
                "program); it was not loaded: delete it, or overwrite it through a shelf opened "
                "with the secret",
                key,
            )
        raise SignatureError(
            f"the signature of the value of key {key!r} does not match: the record was written "
            "with another secret, moved here from another key or store, or altered; it was not "
            "loaded: delete it, or overwrite it through a shelf opened with the secret",
            key,
        )


def _record_mac(signer: Signer, key: bytes, tail: bytes, *before: Record) -> bytes:
    """The MAC of a record: `before` are its bytes before the MAC, `tail` those after it but the CRC.

    The message is `before`, `tail`, ``0xff`` and the key's UTF-8 `key` (see
    the module docstring); `_signed_decoder` writes this out for speed.
    """
    return signer.mac(*before, tail + _KEY_MARK + key)


def _signed(record: Record, key: str, keep_key: bool, signer: Signer) -> Record:
    """`record` made a signed record: kind 2, its sections, a key section if `keep_key`, then its MAC.

    The MAC is always the last section: other features' sections, already in
    `record` (of kind 2), stay before it, and are read once it matched.
    """
    whole = str.encode(key)
    count = 1 + keep_key
    if record[-TRAILER_SIZE] == KIND_SECTIONS:
        count += record[-TRAILER_SIZE - 1]
        body = record[: -TRAILER_SIZE - 1]
    else:
        body = record[:-TRAILER_SIZE]
    sections = whole + _section_end(len(whole), SECTION_KEY) if keep_key else b""
    tail = _MAC_END + bytes((count, KIND_SECTIONS))
    parts = (body, sections, _record_mac(signer, whole, tail, body, sections), tail)
    if len(body) < LARGE:
        signed = b"".join(parts)
        crc: int = crc32(signed)  # typed here: without isal installed, mypy sees crc32 as Any
        return signed + crc.to_bytes(4, "little")
    # A large value is copied once, into a buffer LMDB is handed a view of (as in encode).
    buffer = bytearray().join(parts)
    buffer += crc32(buffer).to_bytes(4, "little")
    return memoryview(buffer)


def _signed_decoder(
    load: Callable[[bytes], Any],
    signer: Signer,
    checked: Callable[[bytes, str, Any], Any],
    unpicklers: Any,
    stock: Any,
    mapping: Any,
) -> Callable[[bytes, str], Any]:
    """The `SignedCodec.decode` of a codec that loads with `load`: one call per read.

    A record of a short key with a MAC only (nearly every record) is loaded
    in place once its MAC matches; no CRC is computed, as a matching MAC
    proves the bytes it covers intact. Any other record goes to `checked`,
    which loads a long key's record or raises the error that says what is
    wrong. Everything is bound as a default, so it reads only local variables.
    `load` is used while ``unpicklers.Unpickler is stock``, as in `_decoder`.
    `mapping` is passed on to `checked`: what the references of a record bind to.
    """

    def decode(
        record: bytes,
        key: str,
        keyed: Any = signer.keyed,
        tail: bytes = _SIGNED_TAIL,
        head: bytes = _SIGNED_HEAD,
        encode: Callable[[str], bytes] = str.encode,
        equal: Callable[[bytes, bytes], bool] = hmac.compare_digest,
        load: Callable[[bytes], Any] = load,
        checked: Callable[[bytes, str, Any], Any] = checked,
        unpicklers: Any = unpicklers,
        stock: Any = stock,
        mapping: Any = mapping,
        mac_end: int = -_MAC_TAIL,
        crc_at: int = 1 - TRAILER_SIZE,
        mac_at: int = -_MAC_START,
    ) -> Any:
        if record[mac_end:crc_at] == tail:  # the MAC's length and tag, the section count, the kind
            try:
                whole = encode(key)
            except UnicodeEncodeError:  # a key read from damaged bytes: checked names them
                return checked(record, key, mapping)
            state = keyed.copy()  # _record_mac, written out
            state.update(record[:mac_at])
            state.update(head + whole)
            if equal(state.digest(), record[mac_at:mac_end]) and unpicklers.Unpickler is stock:
                try:
                    return load(record)
                except Exception as exc:
                    add_key_note(exc, key)
                    raise
        return checked(record, key, mapping)

    return decode
