"""References between keys: `Ref`, and the pickling that stores one as its key's name.

A `Ref` names a key of a store. A value that holds one is pickled with a
persistent id in its place, ``("objstore.ref", key)``: the name, never a copy
of the target, so storing and loading a graph of references never recurses
(a -> b -> a is two names). Loading gives back a `Ref` bound to the mapping
that read the value (shelf, snapshot or transaction); calling it reads the
key through that mapping then, like ``weakref.ref``.

Detecting a reference costs nothing for values without one: the codec pickles
every value with the stock, hook-free pickler first, and ``Ref.__reduce_ex__``
raises `RefFound` (a ``pickle.PicklingError``) there. Only then does the codec
pickle the value again with `dump_with_refs`, whose pickler (a subclass of the
shelf's, made once per class) has a ``persistent_id``; and only records marked
as holding references are loaded by `load_with_refs`, whose unpickler has a
``persistent_load``. Both compose with the ``persistent_id``/``persistent_load``
of the user's own pickler and unpickler classes, which see every other id.

This module owns `Ref`, the persistent id of a reference and the pickler and
unpickler that write and read it. It must never know the record format (the
codec marks the records, `_serialize` and `_records` own that) nor any mapping class: a
`Ref` reads its key with ``mapping[key]``, whatever the mapping is.
"""

from __future__ import annotations

import io
import pickle
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import ClosedError

__all__ = ["REF_ID", "Ref", "RefFound", "dump_with_refs", "load_with_refs", "resolver"]

REF_ID = "objstore.ref"  # the first item of a reference's persistent id; other ids never start so
_Resolver = Callable[[], Mapping[str, Any] | None]  # a weak reference to the mapping that reads refs
# The reference-aware subclass of each pickler and unpickler class, made once
# (two threads may both make one: harmless).
_picklers: dict[type[pickle.Pickler], type[pickle.Pickler]] = {}
_unpicklers: dict[type[pickle.Unpickler], type[pickle.Unpickler]] = {}


class RefFound(pickle.PicklingError):
    """Raised when a `Ref` is pickled without objstore's reference-aware pickler.

    Inside a shelf the codec catches it and pickles the value again with
    references; anywhere else (``pickle.dumps``, ``objstore.dumps``, sending a
    value to another process) it is the ``PicklingError`` the user sees.
    Its one argument is the key; the message is made only when shown, since
    inside a shelf it is raised for every write of a value holding references.
    """

    def __str__(self) -> str:
        return (
            f"the reference to key {self.args[0]!r} (an objstore.Ref) cannot be pickled on its own: "
            "it is stored as its key's name, only inside a value stored in an objstore shelf; "
            "pickle ref.key to send the name elsewhere"
        )


class Ref:
    """A reference to a key of the store: stored as the key's name, read when called.

    Made by ``ref(key)`` of a `Shelf`, `Snapshot` or `Transaction`, or loaded
    from a stored value that holds one. ``ref()`` returns the key's current
    value, read through the mapping that made or loaded the reference (a
    snapshot's view, a transaction's uncommitted writes); a key that is absent
    raises `KeyError` naming it; once that mapping is closed, `ClosedError`.
    ``ref.key`` is the key. References compare and hash by their key only.

    Put into a value stored in any store, a reference is the key's name and
    nothing else: it resolves against whichever store the value is read from.
    It cannot be pickled outside a store (``pickle.PicklingError``): pickle
    ``ref.key`` to send the name elsewhere.
    """

    __slots__ = ("__weakref__", "_key", "_mapping")

    def __init__(self, key: str, mapping: _Resolver) -> None:
        self._key = key
        self._mapping = mapping

    @property
    def key(self) -> str:
        """The key this reference names."""
        return self._key

    def __call__(self) -> Any:
        """The current value of the key; `KeyError` if it is absent."""
        mapping = self._mapping()
        if mapping is None:
            raise ClosedError(
                f"the reference to {self._key!r} cannot be read: the shelf, snapshot or transaction "
                f"that made or loaded it is gone; make a new one with db.ref({self._key!r})"
            )
        return mapping[self._key]

    def __eq__(self, other: object) -> bool:
        if type(other) is not Ref:
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash((REF_ID, self._key))

    def __repr__(self) -> str:
        return f"<objstore.Ref {self._key!r}>"

    # A reference is immutable and names a key: copies are the reference itself (as for weakref.ref).
    def __copy__(self) -> Ref:
        return self

    def __deepcopy__(self, memo: object) -> Ref:
        return self

    def __reduce_ex__(self, protocol: object) -> Any:
        raise RefFound(self._key)


def _own_hook(cls: type, name: str) -> Callable[..., Any] | None:
    """The method `name` that `cls` or a Python base of it defines; None if only pickle's C class has it.

    Called directly rather than through ``super()``: on Python 3.11/3.12 a
    subclass of the C pickler calling ``super().persistent_id`` recurses.
    """
    for klass in cls.__mro__:
        if klass.__module__ in ("_pickle", "builtins"):
            return None
        hook = vars(klass).get(name)
        if hook is not None:
            return hook  # type: ignore[no-any-return]
    return None


def _ref_pickler(base: type[pickle.Pickler]) -> type[pickle.Pickler]:
    """`base` with a ``persistent_id`` that writes a `Ref` as its id and collects its key."""
    made = _picklers.get(base)
    if made is not None:
        return made
    own = _own_hook(base, "persistent_id")

    def persistent_id(self: Any, obj: Any) -> Any:
        if type(obj) is Ref:
            self.referenced[obj._key] = None
            return (REF_ID, obj._key)
        return None if own is None else own(self, obj)

    made = _picklers[base] = type(f"Ref{base.__name__}", (base,), {"persistent_id": persistent_id})
    return made


def _ref_unpickler(base: type[pickle.Unpickler]) -> type[pickle.Unpickler]:
    """`base` with a ``persistent_load`` that loads a reference's id as a `Ref` bound to ``self.mapping``."""
    made = _unpicklers.get(base)
    if made is not None:
        return made
    own = _own_hook(base, "persistent_load")

    def persistent_load(self: Any, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 2 and pid[0] == REF_ID and type(pid[1]) is str:
            # One Ref per key in a value, as pickle's memo would give one object.
            ref = self.loaded.get(pid[1])
            if ref is None:
                ref = self.loaded[pid[1]] = Ref(pid[1], self.mapping)
            return ref
        if own is not None:
            return own(self, pid)
        raise pickle.UnpicklingError(
            f"unsupported persistent id {pid!r}: the unpickler has no persistent_load for it"
        )

    made = _unpicklers[base] = type(f"Ref{base.__name__}", (base,), {"persistent_load": persistent_load})
    return made


def dump_with_refs(pickler: type[pickle.Pickler], value: Any, protocol: int) -> tuple[bytes, list[str]]:
    """The pickle of `value` by (a subclass of) `pickler`, each `Ref` in it as its id; and the keys named."""
    if protocol < 1:
        # Protocol 0 writes a persistent id as one line of ASCII: not a tuple, nor every key.
        raise pickle.PicklingError(
            "a value holding an objstore.Ref needs pickle protocol 1 or higher; "
            f"this shelf writes protocol {protocol}: open it with a higher protocol"
        )
    buffer = io.BytesIO()
    writer: Any = _ref_pickler(pickler)(buffer, protocol)
    writer.referenced = {}
    writer.dump(value)
    return buffer.getvalue(), list(writer.referenced)


def load_with_refs(unpickler: type[pickle.Unpickler], data: bytes, mapping: _Resolver) -> Any:
    """The value pickled at the start of `data`, loaded by (a subclass of) `unpickler`.

    Its references are bound to `mapping`, what they read through.
    """
    reader: Any = _ref_unpickler(unpickler)(io.BytesIO(data))
    reader.mapping = mapping
    reader.loaded = {}
    return reader.load()


def resolver(mapping: Mapping[str, Any]) -> _Resolver:
    """What a `Ref` reads through: a weak reference to `mapping`, so refs never keep a store open."""
    return weakref.ref(mapping)
