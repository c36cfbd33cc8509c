"""The exception tree: every class is an `objstore.Error` and the builtin its docstring names.

Also checks that the tree is complete (no public exception is left out of the
table below) and that every error survives pickling with its attributes, so it
can cross a process boundary (multiprocessing, concurrent.futures).
"""

from __future__ import annotations

import errno
import pickle

import pytest

import objstore

# Each public exception, its parent inside objstore, and the builtins it must
# also be, as drawn in the docstring of objstore/_errors.py.
TREE: dict[type[BaseException], tuple[type[BaseException], tuple[type[BaseException], ...]]] = {
    objstore.Error: (Exception, ()),
    objstore.ClosedError: (objstore.Error, (ValueError,)),
    objstore.TransactionError: (objstore.Error, (RuntimeError,)),
    objstore.ConflictError: (objstore.TransactionError, (RuntimeError,)),
    objstore.ForbiddenGlobalError: (objstore.Error, (pickle.UnpicklingError,)),
    objstore.StoreError: (objstore.Error, (OSError,)),
    objstore.StoreNotFoundError: (objstore.StoreError, (OSError, FileNotFoundError)),
    objstore.NotAStoreError: (objstore.StoreError, (OSError,)),
    objstore.UnsupportedFormatError: (objstore.StoreError, (OSError,)),
    objstore.CorruptError: (objstore.StoreError, (OSError,)),
    objstore.SignatureError: (objstore.StoreError, (OSError,)),
    objstore.ReadOnlyError: (objstore.StoreError, (OSError,)),
    objstore.LockTimeoutError: (objstore.StoreError, (OSError, TimeoutError)),
}


def public_exceptions() -> set[type[BaseException]]:
    """Every exception class objstore exports."""
    found = set()
    for name in objstore.__all__:
        obj = getattr(objstore, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            found.add(obj)
    return found


def sample(cls: type[BaseException]) -> BaseException:
    """An instance of `cls` made the way objstore makes them."""
    if cls is objstore.CorruptError:
        return objstore.CorruptError("the value of key 'k' is damaged", "k")
    if cls is objstore.SignatureError:
        return objstore.SignatureError("the signature of the value of key 'k' does not match", "k")
    if cls is objstore.LockTimeoutError:
        return objstore.LockTimeoutError("timed out", "store/objstore.lock", (12, 34))
    if cls is objstore.StoreNotFoundError:
        return objstore.StoreNotFoundError(errno.ENOENT, "no objstore store here", "store")
    return cls("something went wrong; here is what to do")


class TestTree:
    def test_table_covers_every_public_exception(self) -> None:
        assert public_exceptions() == set(TREE)

    @pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
    def test_is_an_objstore_error(self, cls: type[BaseException]) -> None:
        assert issubclass(cls, objstore.Error)
        assert isinstance(sample(cls), objstore.Error)

    @pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
    def test_parent(self, cls: type[BaseException]) -> None:
        parent, _ = TREE[cls]
        assert issubclass(cls, parent)

    @pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
    def test_is_the_builtin_it_resembles(self, cls: type[BaseException]) -> None:
        _, builtins = TREE[cls]
        for builtin in builtins:
            assert issubclass(cls, builtin), f"{cls.__name__} is not a {builtin.__name__}"
            with pytest.raises(builtin):
                raise sample(cls)

    def test_errors_that_are_not_store_errors_are_not_os_errors(self) -> None:
        # `except OSError` written for shelve must not swallow a misuse of a closed shelf.
        assert not issubclass(objstore.ClosedError, OSError)
        assert not issubclass(objstore.TransactionError, OSError)

    def test_error_is_not_a_builtin_subclass(self) -> None:
        assert objstore.Error.__bases__ == (Exception,)

    @pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
    def test_documented(self, cls: type[BaseException]) -> None:
        assert cls.__doc__ and cls.__doc__.strip()
        assert cls.__module__.startswith("objstore")


class TestPickling:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    @pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
    def test_round_trip(self, cls: type[BaseException], protocol: int) -> None:
        original = sample(cls)
        copy = pickle.loads(pickle.dumps(original, protocol))
        assert type(copy) is cls
        assert str(copy) == str(original)
        assert copy.args == original.args

    def test_corrupt_error_keeps_its_key(self) -> None:
        copy = pickle.loads(pickle.dumps(objstore.CorruptError("damaged", "the key")))
        assert copy.key == "the key"
        assert str(copy) == "damaged"

    def test_corrupt_error_without_key(self) -> None:
        error = objstore.CorruptError("the data file is truncated")
        assert error.key is None
        assert pickle.loads(pickle.dumps(error)).key is None

    def test_lock_timeout_error_keeps_lock_file_and_holders(self) -> None:
        copy = pickle.loads(
            pickle.dumps(objstore.LockTimeoutError("timed out", "other/objstore.lock", (7, 8)))
        )
        assert copy.lock_file == "other/objstore.lock"
        assert copy.holders == (7, 8)
        assert str(copy) == "timed out"

    def test_store_not_found_error_keeps_errno_and_filename(self) -> None:
        copy = pickle.loads(pickle.dumps(sample(objstore.StoreNotFoundError)))
        assert isinstance(copy, FileNotFoundError)
        assert copy.errno == errno.ENOENT
        assert copy.strerror == "no objstore store here"
        assert copy.filename == "store"
