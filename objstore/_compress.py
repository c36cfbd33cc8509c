"""Compression of value records: the codecs, their ids, and the choice of one.

A shelf opened with ``compression="zlib"`` or ``"zstd"`` compresses the body
of each record (the pickle stream, or a custom serializer's bytes) longer than
``compress_above`` bytes, when that makes the record smaller. Which codec
compressed a record is written in the record itself (a section of tag 3
holding one codec id byte, see `_records`), so a store may mix settings and
reads whatever the current ones are.

This module owns the codec names, their ids, the validation of the
``compression``/``compress_above`` options and the error for a codec that is
not installed. It knows nothing of the record layout (``_serialize`` frames
the bytes made here) and never imports a codec it is not asked for: zstd is
optional (``pip install 'objstore[zstd]'``, or the standard library's
``compression.zstd`` on Python 3.14+).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

from ._errors import CorruptError, UnsupportedFormatError

__all__ = [
    "CODEC_IDS",
    "DEFAULT_COMPRESS_ABOVE",
    "ZSTD_MISSING",
    "compressor",
    "decompress",
]

# Values whose pickle is at most this long are never compressed. Above about
# 2 KiB a record no longer shares LMDB's 4 KiB pages: it takes pages of its
# own, and compressing it (a pickle of structured data, typically to a quarter
# or less) saves whole pages, for tens of microseconds (docs/api.md#compression).
DEFAULT_COMPRESS_ABOVE = 2048

ZLIB = 1
ZSTD = 2
CODEC_IDS = {"zlib": ZLIB, "zstd": ZSTD}
_NAMES = {codec_id: name for name, codec_id in CODEC_IDS.items()}

# zlib's fastest level: a few percent less compression than its default (6)
# for a third of the time. zstd's default level (3) is already fast.
_ZLIB_LEVEL = 1
_ZSTD_LEVEL = 3

ZSTD_MISSING = "zstd compression needs the zstandard package (or Python 3.14+): pip install 'objstore[zstd]'"

Compress = Callable[[Any], bytes]  # bytes-like in, compressed bytes out


def _zstd() -> tuple[Compress, Compress]:
    """zstd's (compress, decompress) functions; ImportError if neither backend is installed."""
    try:  # Python 3.14+
        from compression import zstd  # type: ignore[import-not-found, unused-ignore]

        level = _ZSTD_LEVEL
        return (lambda data: zstd.compress(data, level)), zstd.decompress
    except ImportError:
        pass
    import zstandard  # type: ignore[import-not-found, unused-ignore]

    # One context per thread: zstandard's are not safe to share between threads,
    # and making one per call costs more than small values take to compress.
    local = threading.local()

    def compress(data: Any) -> bytes:
        try:
            context = local.compressor
        except AttributeError:
            context = local.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        result: bytes = context.compress(data)
        return result

    def decompress(data: Any) -> bytes:
        try:
            context = local.decompressor
        except AttributeError:
            context = local.decompressor = zstandard.ZstdDecompressor()
        try:
            result: bytes = context.decompress(data)
        except zstandard.ZstdError:
            # A frame without its content size (both backends write it; other zstd
            # writers may not) is read as a stream; damaged bytes fail again here.
            result = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return result

    # Both backends write standard zstd frames with the content size in the
    # header: records written by one read with the other.
    return compress, decompress


_ZSTD: tuple[Compress, Compress] | None = None


def _zstd_functions() -> tuple[Compress, Compress]:
    global _ZSTD
    if _ZSTD is None:
        _ZSTD = _zstd()
    return _ZSTD


def compressor(compression: str | None, compress_above: int) -> tuple[int, Compress] | None:
    """The (codec id, compress function) for the `compression` option; None for no compression.

    Checks both options: raises `ValueError` for an unknown name or a negative
    threshold, `TypeError` for the wrong types, and `ImportError` (saying what
    to install) for zstd when it is not installed.
    """
    if not isinstance(compress_above, int) or isinstance(compress_above, bool):
        raise TypeError(f"compress_above must be an int, not {type(compress_above).__name__}")
    if compress_above < 0:
        raise ValueError(f"compress_above must be >= 0 bytes, not {compress_above}")
    if compression is None:
        return None
    if compression == "zlib":
        level = _ZLIB_LEVEL
        return ZLIB, lambda data: zlib.compress(data, level)
    if compression == "zstd":
        try:
            return ZSTD, _zstd_functions()[0]
        except ImportError:
            raise ImportError(ZSTD_MISSING) from None
    raise ValueError(f"compression must be None, 'zlib' or 'zstd', not {compression!r}")


def decompress(codec: bytes, data: Any, key: str) -> bytes:
    """The bytes `data` (a record's compressed body) stood for, compressed by the codec `codec` names.

    `codec` is the payload of the record's compression section. Raises
    `UnsupportedFormatError` for a codec this objstore does not know or does
    not have installed, `CorruptError` if `data` does not decompress.
    """
    codec_id = codec[0] if len(codec) == 1 else None
    if codec_id == ZLIB:
        decompress_fn: Compress = zlib.decompress
    elif codec_id == ZSTD:
        try:
            decompress_fn = _zstd_functions()[1]
        except ImportError:
            raise UnsupportedFormatError(
                f"the value of key {key!r} is compressed with zstd; {ZSTD_MISSING}"
            ) from None
    else:
        raise UnsupportedFormatError(
            f"the value of key {key!r} is compressed by a codec this objstore does not know "
            f"(id {codec.hex()}), written by a newer objstore; upgrade objstore to read it"
        )
    try:
        return decompress_fn(data)
    except Exception as exc:  # zlib.error, zstd's errors: the bytes passed the CRC but are not valid
        raise CorruptError(
            f"the value of key {key!r} does not decompress ({_NAMES[codec_id]}: {exc}); "
            "other keys are unaffected: delete or overwrite this key, or restore it from a backup",
            key,
        ) from exc
