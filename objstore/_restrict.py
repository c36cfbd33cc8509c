"""Restricted loading: which globals a pickle may import, aliases for moved ones, and a scan of them.

Unpickling runs code named by the data: each class or function a pickle
names (a *global*, ``module.qualname``) is imported and may be called with
arguments taken from the data, so ``os.system`` or ``builtins.eval`` in a
record runs in the reader. Everything a pickle can do beyond building lists,
dicts, strings and numbers goes through a global, and every global goes
through ``find_class``: refusing a global there, before it is imported,
stops the value before any of it runs.

This module owns:

- `Allowlist`: the globals a restricted load may import, the safe set
  (`Allowlist.SAFE`, names only, so NumPy is imported only by a record that
  names it) plus what the user adds;
- the resolution of a name a pickle gives: Python 2 names mapped as pickle
  maps them, then the user's aliases (`resolve`);
- `RestrictedUnpickler`, whose ``find_class`` applies both, and `restricted`,
  which makes the unpickler class of a shelf opened with ``allow=`` or
  ``aliases=`` (over the user's own ``unpickler=`` class, whose ``find_class``
  still runs after ours);
- `record_globals`: the globals a record would import, read from its pickle
  opcodes without loading it;
- `Unreadable`: what an iteration with ``errors="keep"`` yields for a value it
  could not load.

It must never import a module a pickle names before the allowlist allowed it,
nor know keys on disk or the storage; it reads records only through
`_records.pickle_of`.
"""

from __future__ import annotations

import importlib
import pickle
import pickletools
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Iterable, Mapping
from copyreg import _inverted_registry  # type: ignore[attr-defined]
from types import ModuleType
from typing import Any, ClassVar, cast

from ._errors import ForbiddenGlobalError
from ._records import pickle_of
from ._serialize import Unpickler, _add_note

__all__ = ["Allowlist", "RestrictedUnpickler", "Unreadable", "record_globals", "resolve", "restricted"]

# The safe set: data types whose reconstruction runs no code named by the data.
# Each is called (or, for copyreg._reconstructor, instantiates a class) only
# with arguments that are themselves data or other allowed globals. Nothing
# here can call, import, look up attributes or evaluate: no builtins.eval,
# exec, getattr, __import__, type; no os, subprocess, functools.partial,
# operator.attrgetter/methodcaller, pickle internals.
_SAFE = frozenset(
    {
        *(
            f"builtins.{name}"
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "range",
                "set",
                "slice",
                "str",
                "tuple",
            )
        ),  # fmt: skip
        # Protocols 0-2 pickle bytes as _codecs.encode(str, "latin1"); it only
        # converts a str with a codec of the standard library.
        "_codecs.encode",
        # Protocols 0-1 rebuild plain objects with it: base.__new__(cls) and
        # base.__init__, where cls and base are globals checked on their own.
        "copyreg._reconstructor",
        *(f"datetime.{name}" for name in ("date", "datetime", "time", "timedelta", "timezone")),
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        *(f"collections.{name}" for name in ("ChainMap", "Counter", "OrderedDict", "defaultdict", "deque")),
        # NumPy arrays, dtypes and scalars, pickled by NumPy 1 (numpy.core) and 2 (numpy._core).
        "numpy.ndarray",
        "numpy.dtype",
        *(
            f"{package}.{name}"
            for package in ("numpy.core", "numpy._core")
            for name in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")
        ),
    }
)

AllowEntry = Any
"""An entry of ``allow=``: a class or function, a module, or a dotted name (checked by `Allowlist`)."""


class Allowlist:
    """The globals a restricted load may import: the safe set `SAFE` plus the entries given.

    Each entry is a class or function (that global), a module object (every
    global defined in that module), or a ``str``: ``"pkg.mod.Name"`` allows
    that global, and ``"pkg.mod"`` every global defined in module
    ``pkg.mod`` (a dotted name is taken both ways). A single entry may be
    given without a list. ``Allowlist()`` is the safe set alone.

    A global allowed only through its module must be defined there (its
    ``__module__`` is that module) and no part of its name may be a dunder:
    so allowing ``"mymod"`` does not allow ``mymod.os.system``, nor
    ``mymod.Thing.__init__.__globals__``, nor a function that ``mymod``
    imported from another module.
    """

    SAFE: ClassVar[frozenset[str]] = _SAFE
    """The safe set, as ``"module.qualname"`` names (see docs/security.md)."""

    def __init__(self, allow: Iterable[AllowEntry] | AllowEntry = ()) -> None:
        names: set[str] = set(_SAFE)
        modules: set[str] = set()
        entries: Iterable[Any]
        if isinstance(allow, Allowlist):
            names |= allow.names
            modules |= allow.modules
            entries = ()
        elif isinstance(allow, str | type | ModuleType):
            entries = (allow,)  # one entry given without a list
        elif isinstance(allow, Iterable):
            entries = allow
        else:
            raise TypeError(
                "allow= takes a list of classes, functions, modules and dotted names, "
                f"or one of them, not {type(allow).__name__}"
            )
        for entry in entries:
            if isinstance(entry, ModuleType):
                modules.add(entry.__name__)
            elif isinstance(entry, str):
                if not entry or entry.startswith(".") or entry.endswith(".") or ".." in entry:
                    raise ValueError(f"allow= takes dotted names such as 'pkg.mod.Name', not {entry!r}")
                names.add(entry)
                modules.add(entry)
            elif isinstance(getattr(entry, "__qualname__", None), str) and callable(entry):
                names.add(f"{entry.__module__}.{entry.__qualname__}")
            else:
                raise TypeError(
                    "allow= takes classes, functions, modules and dotted names ('pkg.mod.Name'), "
                    f"not {type(entry).__name__}"
                )
        self.names: frozenset[str] = frozenset(names)
        self.modules: frozenset[str] = frozenset(modules)

    @classmethod
    def of(cls, allow: Allowlist | Iterable[AllowEntry] | AllowEntry) -> Allowlist:
        """`allow` itself if it is an `Allowlist`, else ``Allowlist(allow)``."""
        return allow if isinstance(allow, Allowlist) else cls(allow)

    def allows(self, module: str, name: str) -> bool:
        """Whether the global `name` of `module` may be imported (by name: see `by_module`)."""
        return f"{module}.{name}" in self.names or self.by_module(module, name)

    def by_module(self, module: str, name: str) -> bool:
        """Whether the global is allowed only as part of a whole module (so must be defined in it)."""
        return (
            f"{module}.{name}" not in self.names
            and module in self.modules
            and not any(part.startswith("__") for part in name.split("."))
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowlist):
            return NotImplemented
        return (self.names, self.modules) == (other.names, other.modules)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        added = sorted(self.names - _SAFE) + sorted(f"{m} (module)" for m in self.modules)
        return f"<objstore.Allowlist safe set + {added}>"


def _python2(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global named by a protocol 0-2 pickle, as pickle maps it (fix_imports)."""
    mapped = NAME_MAPPING.get((module, name))
    if mapped is not None:
        return mapped
    return IMPORT_MAPPING.get(module, module), name


def resolve(module: str, name: str, aliases: Mapping[str, str]) -> tuple[str, str]:
    """The global `module`.`name` of a pickle stands for: Python 2 names mapped, then `aliases`.

    An alias maps a whole name (``"old.mod.Name"``) or a module (``"old.mod"``,
    which also covers its submodules ``old.mod.sub``); a target may be written
    ``"new.mod:Outer.Inner"`` to say where the module name ends, otherwise it
    ends at the last dot.
    """
    module, name = _python2(module, name)
    if not aliases:
        return module, name
    target = aliases.get(f"{module}.{name}")
    if target is not None:
        if ":" in target:
            new_module, _, new_name = target.partition(":")
        else:
            new_module, _, new_name = target.rpartition(".")
        return new_module, new_name
    prefix = module
    while prefix:
        moved = aliases.get(prefix)
        if moved is not None:
            return moved + module[len(prefix) :], name
        prefix = prefix.rpartition(".")[0]
    return module, name


class RestrictedUnpickler(Unpickler):
    """An `Unpickler` whose ``find_class`` imports only the globals its allowlist allows.

    ``RestrictedUnpickler(file, *, allow=None, aliases=None, **kwargs)``:
    `kwargs` are those of ``pickle.Unpickler``. `allow` (entries as for
    `Allowlist`, or an `Allowlist`) and `aliases` (old name to new name)
    default to the class attributes `allowlist` (the safe set) and `aliases`
    (none). A global not allowed raises `ForbiddenGlobalError` before it is
    imported; a global that cannot be found says which one, and how to map it
    with ``aliases=``. Subclass it and call ``super().find_class`` to refuse
    more; ``allowlist = None`` on a subclass applies aliases only.
    """

    allowlist: ClassVar[Allowlist | None] = Allowlist()
    aliases: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        file: Any,
        *,
        allow: Allowlist | Iterable[AllowEntry] | AllowEntry | None = None,
        aliases: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(file, **kwargs)
        if allow is not None:
            self.allowlist = Allowlist.of(allow)  # type: ignore[misc]
        if aliases is not None:
            self.aliases = _checked_aliases(aliases)  # type: ignore[misc]

    def find_class(self, module: str, name: str, /) -> Any:
        """The global `name` of `module` after aliases, if allowed; else `ForbiddenGlobalError`."""
        mapped = _python2(module, name)
        target_module, target_name = resolve(module, name, self.aliases)
        target = f"{target_module}.{target_name}"
        aliased = (target_module, target_name) != mapped
        allowlist = self.allowlist
        if allowlist is not None and (
            not allowlist.allows(target_module, target_name)
            # pickle maps an alias's target again for protocols 0-2: checked must be loaded
            or (aliased and _python2(target_module, target_name) != (target_module, target_name))
        ):
            raise ForbiddenGlobalError(target)
        try:
            # Without an alias, pickle is given the name as written, so that it maps a
            # Python 2 name itself, once, as only it knows the protocol.
            found = super().find_class(*((target_module, target_name) if aliased else (module, name)))
        except (ImportError, AttributeError) as exc:
            moved = "" if target == f"{module}.{name}" else f" (named {module}.{name} in the pickle)"
            _add_note(
                exc,
                f"the global {target}{moved} cannot be found; if it was moved or renamed, "
                f"open the store with aliases={{{f'{module}.{name}'!r}: 'its.new.Name'}}",
            )
            raise
        if allowlist is not None and (
            (
                allowlist.by_module(target_module, target_name)
                and getattr(found, "__module__", None) != target_module
            )
            # a Python 2 name that pickle did not map (protocol 3+, fix_imports=False) is not what was checked
            or (not aliased and mapped != (module, name) and found is not _lookup(*mapped))
        ):
            raise ForbiddenGlobalError(target)
        return found


def _checked_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """A copy of `aliases`, refused (`TypeError`) unless it maps names (str) to names."""
    if not isinstance(aliases, Mapping) or not all(
        isinstance(old, str) and isinstance(new, str) and old and new for old, new in aliases.items()
    ):
        raise TypeError("aliases= maps old dotted names to new ones, e.g. {'old.mod.Name': 'new.mod.Name'}")
    return dict(aliases)


def _lookup(module: str, name: str) -> Any:
    """The global `name` of `module` (imported: it passed the allowlist), as pickle finds it."""
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def restricted(
    unpickler: type[pickle.Unpickler] | None,
    allow: Allowlist | Iterable[AllowEntry] | AllowEntry | None,
    aliases: Mapping[str, str] | None,
) -> type[pickle.Unpickler] | None:
    """The unpickler class of a shelf opened with `allow`/`aliases`: `unpickler` itself if neither is given.

    Otherwise a subclass of `RestrictedUnpickler` and of `unpickler`, whose
    ``find_class`` still runs (after the allowlist's check) and may refuse more.
    """
    if allow is None and not aliases:
        return unpickler
    if unpickler is None:  # a restricted shelf keeps its class: swapping objstore.Unpickler can't lift it
        unpickler = Unpickler
    if not (isinstance(unpickler, type) and issubclass(unpickler, pickle.Unpickler)):
        return unpickler  # the codec says what is wrong with it
    attributes: dict[str, Any] = {"aliases": _checked_aliases(aliases or {}), "__module__": __name__}
    if allow is not None:
        attributes["allowlist"] = Allowlist.of(allow)
    elif not issubclass(unpickler, RestrictedUnpickler):
        attributes["allowlist"] = None  # aliases only
    bases = (unpickler,) if issubclass(unpickler, RestrictedUnpickler) else (RestrictedUnpickler, unpickler)
    return type(f"Restricted{unpickler.__name__}", bases, attributes)


class Unreadable:
    """Stands in for a value that could not be loaded, in an iteration with ``errors="keep"``.

    `key` is its key, `error` the exception loading it raised, `record` the
    raw record (bytes) as stored.
    """

    __slots__ = ("error", "key", "record")

    def __init__(self, key: str, error: Exception, record: bytes) -> None:
        self.key = key
        self.error = error
        self.record = record

    def __repr__(self) -> str:
        return f"<objstore.Unreadable key={self.key!r}: {type(self.error).__name__}: {self.error}>"


# ------------------------------------------------------------ the scan

_STRINGS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})
_UNKNOWN = object()  # a stack item the scan does not follow
_MARK = object()
UNKNOWN_GLOBAL = ("?", "?")
"""What the scan reports for a STACK_GLOBAL whose names it cannot follow: never allowed."""


def record_globals(record: bytes) -> list[tuple[str, str]]:
    """The globals (module, qualname) the intact `record` would import, in order, without loading it.

    Reads the pickle's opcodes: GLOBAL and INST carry their names;
    STACK_GLOBAL takes two strings from the stack, which the scan follows
    through the memo (MEMOIZE, PUT, GET). Names are mapped as a protocol 0-2
    load maps them; a name the scan cannot follow is reported as ``("?", "?")``.
    The scan stops where the pickle is malformed, as a load would.
    """
    found: list[tuple[str, str]] = []
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _ in pickletools.genops(pickle_of(record)):
            op = opcode.name
            if op in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.append(_python2(module, name))
            elif op == "STACK_GLOBAL":
                name_item, module_item = (
                    (stack.pop() if stack else _UNKNOWN),
                    (stack.pop() if stack else _UNKNOWN),
                )
                if isinstance(module_item, str) and isinstance(name_item, str):
                    found.append(_python2(module_item, name_item))
                else:
                    found.append(UNKNOWN_GLOBAL)
                stack.append(_UNKNOWN)
                continue
            elif op in _EXTENSIONS:
                found.append(_inverted_registry.get(arg, UNKNOWN_GLOBAL))
            if op in _STRINGS:
                stack.append(arg)
            elif op in _GETS:
                stack.append(memo.get(cast(int, arg), _UNKNOWN))
            elif op in _PUTS or op == "MEMOIZE":
                memo[cast(int, arg) if op in _PUTS else len(memo)] = stack[-1] if stack else _UNKNOWN
            elif op == "DUP":
                stack.append(stack[-1] if stack else _UNKNOWN)
            else:
                _apply(opcode, stack)
    except ValueError:  # malformed: a load stops here too
        pass
    return list(dict.fromkeys(found))


def _apply(opcode: pickletools.OpcodeInfo, stack: list[object]) -> None:
    """Follow `opcode`'s effect on the stack as its declared stack effect says, with unknown results."""
    before = opcode.stack_before
    if pickletools.stackslice in before:  # everything down to the mark, then the items below it
        while stack and stack.pop() is not _MARK:
            pass
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    del stack[len(stack) - min(below, len(stack)) :]
    stack.extend(_MARK if item is pickletools.markobject else _UNKNOWN for item in opcode.stack_after)
