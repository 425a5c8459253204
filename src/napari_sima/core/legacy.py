"""Read legacy SIMA dataset folders (pickles) safely and read-only.

SIMA stored its ``.sima`` folders as Python pickles.  Unpickling runs whatever the
file names, so this module never uses :func:`pickle.load` with the default class
lookup: :class:`RestrictedUnpickler` resolves only an allow-list of globals (those
that SIMA's files legitimately contain) and maps them onto small data-only stand-ins
of ours.  Anything else is refused with :class:`UnsafePickleError` *before* it can
run.  Resources are bounded too: the opcode stream is checked before unpickling
(persistent ids, extension codes, memo bombs, length prefixes beyond the data), the
object graph after it (cycles, nesting deeper than :data:`MAX_PICKLE_DEPTH`,
"billion laughs" of shared containers), and only regular files are read.  Every
failure is a :class:`ValueError` naming the file (tested with a corpus of hostile
pickles, ``tests/core/test_hostile_pickles.py``).

Two layouts are understood:

* version 0 (``dataset.pkl`` with an ``'iterables'`` key, plus ``displacements.pkl``),
  as in SIMA's own ``example.sima``;
* version 1.x (``dataset.pkl`` + ``sequences.pkl``), written by SIMA 1.0 to 1.3.

The result is an :class:`~napari_sima.core.dataset.ImagingDataset` bound read-only
to the old folder; ``ds.save('new.sima')`` writes our JSON format elsewhere.  ROI
sets and signals (``rois.pkl``, ``signals_*.pkl``) are not converted here, but
:func:`read_legacy_pickle` gives their restricted contents to whoever does.

Examples
--------
>>> from napari_sima.core.legacy import load_legacy_dataset
>>> ds = load_legacy_dataset('example.sima')  # doctest: +SKIP
>>> ds.read_only, ds.frame_shape  # doctest: +SKIP
(True, (1, 125, 247, 2))
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import ImagingDataset
from .errors import FileFormatError, ResourceLimitError
from .sequence import Sequence, check_frame_size

__all__ = [
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_DEPTH",
    "LegacyClass",
    "LegacyLilMatrix",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_legacy_dataset",
    "read_legacy_pickle",
]

#: Largest legacy pickle that is read (bytes); bigger files are refused.
MAX_PICKLE_BYTES = 256 * 1024 * 1024

#: Deepest nesting of sequence descriptions accepted in ``sequences.pkl``.
_MAX_NESTING = 64

#: Largest array a pickle may pre-allocate through ``_reconstruct`` (bytes).
#: NumPy itself always writes shape ``(0,)`` there and fills the array via its state.
_MAX_RECONSTRUCT_BYTES = 1 << 16

#: Largest ``range`` of frames / planes / channels accepted in a stored mask.
_MAX_MASK_ITEMS = 10_000_000

#: Deepest nesting of containers accepted in a legacy pickle.
MAX_PICKLE_DEPTH = 200

#: A pickle may reuse shared containers (through its memo), but visiting every
#: container as often as it is referenced must stay within this many steps, plus
#: :data:`_SHARING_FACTOR` times the number of distinct objects (no "billion laughs").
_MAX_EXPANDED = 1_000_000
_SHARING_FACTOR = 16


def _brief(value: Any) -> str:
    """Return a short repr for messages, bounded in time and length for any value."""
    try:
        return _BRIEF.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        return f"<{type(value).__name__} object>"


def _make_brief() -> Any:
    import reprlib

    r = reprlib.Repr()
    r.maxlevel = 2
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = 4
    r.maxdeque = 4
    r.maxstring = r.maxother = 60
    r.maxlong = 40
    return r


_BRIEF = _make_brief()


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
class UnsafePickleError(FileFormatError):
    """A legacy pickle asks for something outside the allow-list; nothing was run.

    Parameters
    ----------
    message : str
        Human-readable explanation (names the file).
    path : str, optional
        The refused file.
    module, name : str, optional
        The global the pickle asked for, when the refusal is about one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        module: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.module = module
        self.name = name


class _Refused(Exception):
    """Raised by our stand-ins while unpickling; turned into UnsafePickleError."""


# ---------------------------------------------------------------------------------------
# Data-only stand-ins for the allowed globals
# ---------------------------------------------------------------------------------------
class _FrozenMeta(type):
    """Metaclass forbidding attribute changes on our stand-in classes.

    A pickle can apply ``BUILD`` to any object on its stack, including a class it
    obtained from :meth:`RestrictedUnpickler.find_class`; this keeps it from
    replacing methods of our classes.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _Refused(f"a pickle may not change the class {cls.__name__} (attribute {name!r})")

    def __delattr__(cls, name: str) -> None:
        raise _Refused(f"a pickle may not change the class {cls.__name__} (attribute {name!r})")


class _Frozen(metaclass=_FrozenMeta):
    """Base of immutable stand-in objects (no ``__dict__``, no state changes)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Refused(f"a pickle may not change {self!r} (attribute {name!r})")

    def __delattr__(self, name: str) -> None:
        raise _Refused(f"a pickle may not change {self!r} (attribute {name!r})")

    def __setstate__(self, state: Any = None) -> None:
        raise _Refused(f"a pickle may not set the state of {_brief(self)}")

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} objects are not picklable")


class LegacyClass(_Frozen):
    """Marker standing for a SIMA class named in a legacy pickle (never instantiated).

    SIMA stored ``'__class__': <class>`` in its sequence descriptions; the loader
    only needs the name.

    Parameters
    ----------
    module : str
        Module of the class, e.g. ``'sima.sequence'``.
    name : str
        Class name, e.g. ``'_Sequence_HDF5'``.
    """

    __slots__ = ("module", "name")
    module: str
    name: str

    def __init__(self, module: str, name: str) -> None:
        object.__setattr__(self, "module", str(module))
        object.__setattr__(self, "name", str(name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(f"the SIMA class {self.module}.{self.name} cannot be instantiated")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LegacyClass):
            return NotImplemented
        return (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((LegacyClass, self.module, self.name))

    def __repr__(self) -> str:
        return f"LegacyClass({self.module!r}, {self.name!r})"


class _SafeFunction(_Frozen):
    """An immutable callable wrapper (our replacement for an allowed function)."""

    __slots__ = ("_func", "_label")
    _func: Callable[..., Any]
    _label: str

    def __init__(self, func: Callable[..., Any], label: str) -> None:
        object.__setattr__(self, "_func", func)
        object.__setattr__(self, "_label", label)

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)

    def __repr__(self) -> str:
        return f"<restricted {self._label}>"


class LegacyLilMatrix(_Frozen):
    """Data-only stand-in for a pickled ``scipy.sparse.lil_matrix``.

    The pickled ``__dict__`` (``rows``, ``data``, ``dtype``, ``_shape`` or ``shape``,
    ...) is kept as :attr:`state`; :meth:`tocsr` and :meth:`toarray` validate it and
    build real arrays.
    """

    __slots__ = ("_state",)
    _state: dict[str, Any] | None

    def __new__(cls, *args: Any, **kwargs: Any) -> LegacyLilMatrix:
        if args or kwargs:
            raise _Refused("a pickled lil_matrix is rebuilt from its state only")
        obj = object.__new__(cls)
        object.__setattr__(obj, "_state", None)
        return obj

    def __setstate__(self, state: Any = None) -> None:
        if not isinstance(self, LegacyLilMatrix):  # BUILD applied to the class itself
            raise _Refused("a pickle may not change the lil_matrix class")
        if self._state is not None:
            raise _Refused("a pickle may not set the state of a lil_matrix twice")
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]  # (dict, None) = (__dict__, slot state)
        if not isinstance(state, dict):
            raise _Refused(f"a pickled lil_matrix has state of type {type(state).__name__}")
        object.__setattr__(self, "_state", dict(state))

    def __repr__(self) -> str:
        try:
            return f"<LegacyLilMatrix shape={self.shape}>"
        except ValueError:
            return "<LegacyLilMatrix (invalid)>"

    @property
    def state(self) -> dict[str, Any]:
        """A copy of the pickled attribute dict."""
        return dict(self._state or {})

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(rows, columns)`` shape."""
        st = self._state or {}
        shape = st.get("_shape", st.get("shape"))
        try:
            r, c = (int(v) for v in shape)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"a legacy lil_matrix has an invalid shape {_brief(shape)}") from None
        if r < 0 or c < 0:
            raise ValueError(f"a legacy lil_matrix has an invalid shape {(r, c)}")
        return r, c

    @property
    def dtype(self) -> np.dtype:
        """The matrix dtype (``bool`` for drawn ROIs, ``float64`` for segmentations)."""
        dt = (self._state or {}).get("dtype", np.float64)
        try:
            return np.dtype(dt)
        except TypeError:
            raise ValueError(f"a legacy lil_matrix has an invalid dtype {_brief(dt)}") from None

    def _triplets(self) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        st = self._state or {}
        nrows, ncols = self.shape
        rows, data = st.get("rows"), st.get("data")
        if rows is None or data is None or len(rows) != nrows or len(data) != nrows:
            raise ValueError(
                f"a legacy lil_matrix of shape {(nrows, ncols)} lacks consistent 'rows' and "
                f"'data' lists"
            )
        ri: list[int] = []
        ci: list[int] = []
        vals: list[Any] = []
        for r in range(nrows):
            cols, vs = list(rows[r]), list(data[r])
            if len(cols) != len(vs):
                raise ValueError(f"row {r} of a legacy lil_matrix has {len(cols)} columns "
                                 f"but {len(vs)} values")
            for col in cols:
                col = int(col)
                if not 0 <= col < ncols:
                    raise ValueError(f"row {r} of a legacy lil_matrix names column {col}, "
                                     f"outside 0..{ncols - 1}")
                ci.append(col)
            ri.extend([r] * len(cols))
            vals.extend(vs)
        return np.asarray(ri, dtype=np.int64), np.asarray(ci, dtype=np.int64), vals

    def tocsr(self) -> Any:
        """Return the matrix as a ``scipy.sparse.csr_matrix``."""
        from scipy import sparse

        r, c, vals = self._triplets()
        return sparse.csr_matrix(
            (np.asarray(vals, dtype=self.dtype), (r, c)), shape=self.shape, dtype=self.dtype
        )

    def toarray(self) -> np.ndarray:
        """Return the matrix as a dense array."""
        out = np.zeros(self.shape, dtype=self.dtype)
        r, c, vals = self._triplets()
        out[r, c] = np.asarray(vals, dtype=self.dtype)
        return out


class _FutureBytes(bytes, metaclass=_FrozenMeta):
    """Stand-in for ``future.types.newbytes`` (Py2 ``bytes`` of the ``future`` package)."""

    def __new__(cls, value: Any = b"", *args: Any) -> bytes:  # type: ignore[misc]
        if args:
            raise _Refused("newbytes takes one value")
        if isinstance(value, str):
            return value.encode("latin-1")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise _Refused(f"newbytes from a {type(value).__name__} is not allowed")


class _EmptyList(list, metaclass=_FrozenMeta):
    """Stand-in for ``list`` / ``future.types.newlist``: always starts empty.

    ``list(iterable)`` would let a pickle expand e.g. ``range(10**12)``; the pickle
    opcodes that fill a list (``APPENDS``) only add items that are in the file.
    """

    def __new__(cls, *args: Any) -> list:  # type: ignore[misc]
        if args:
            raise _Refused("list(...) with arguments is not allowed in a legacy pickle")
        return []


class _EmptyDict(dict, metaclass=_FrozenMeta):
    """Stand-in for ``dict`` / ``future.types.newdict``: always starts empty."""

    def __new__(cls, *args: Any) -> dict:  # type: ignore[misc]
        if args:
            raise _Refused("dict(...) with arguments is not allowed in a legacy pickle")
        return {}


class _Str(str, metaclass=_FrozenMeta):
    """Stand-in for ``str`` / ``unicode`` / ``future.types.newstr``: text in, text out.

    Unlike ``str(obj)``, it never formats an arbitrary (possibly enormous) object.
    """

    def __new__(cls, value: Any = "", *args: Any) -> str:  # type: ignore[misc]
        if args:
            raise _Refused("str(...) with more than one argument is not allowed")
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("latin-1")
        raise _Refused(f"str() of a {type(value).__name__} is not allowed in a legacy pickle")


def _collection(kind: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        # only from items already in the file: never expand a range or other iterator
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset)):
            return kind(args[0])
        raise _Refused(f"{kind.__name__}(...) is only allowed from a list of items")

    return make


_NDARRAY = LegacyClass("numpy", "ndarray")

#: dtype kinds a legacy pickle may use (no structured, datetime or subarray dtypes)
_DTYPE_KINDS = set("biufcOSUV")
#: largest item size accepted for flexible dtypes (bytes)
_MAX_ITEMSIZE = 1 << 20


# -- numpy helpers ----------------------------------------------------------------------
# NumPy's own ``ndarray.__setstate__`` / ``dtype.__setstate__`` trust their input (an
# object array whose list is shorter than its shape crashes the interpreter), so a
# pickle never reaches them: ``_reconstruct`` and ``dtype`` return pending stand-ins
# whose ``__setstate__`` validates the state, and ``_finalize`` swaps the stand-ins for
# real arrays and dtypes once unpickling is done.
def _plain_dtype(value: Any) -> np.dtype:
    """Return a validated simple dtype (from a typecode, a dtype or a pending dtype)."""
    if isinstance(value, _PendingDtype):
        return value.resolve()
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str) and len(value) <= 32:
        try:
            dt = np.dtype(value)
        except TypeError as err:
            raise pickle.UnpicklingError(f"invalid dtype {value!r}: {err}") from None
    elif isinstance(value, np.dtype):
        dt = value
    else:
        raise _Refused(f"not a dtype: {_brief(value)}")
    if dt.kind not in _DTYPE_KINDS or dt.names is not None or dt.subdtype is not None:
        raise _Refused(f"the dtype {dt} is not allowed in a legacy pickle")
    if dt.itemsize > _MAX_ITEMSIZE:
        raise _Refused(f"the dtype {dt} is too large")
    return dt


class _PendingDtype(_Frozen):
    """A dtype being unpickled: ``numpy.dtype(typecode)`` plus its validated state."""

    __slots__ = ("_dtype", "_done")
    _dtype: np.dtype
    _done: bool

    def __init__(self, dtype: np.dtype) -> None:
        object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, "_done", False)

    def __setstate__(self, state: Any = None) -> None:
        if not isinstance(self, _PendingDtype) or self._done:
            raise _Refused("a pickle may not change a dtype twice")
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise pickle.UnpicklingError(f"unsupported dtype state {_brief(state)}")
        _, byteorder, subarray, names, fields, elsize = state[:6]
        if subarray is not None or names is not None or fields is not None:
            raise _Refused("structured or sub-array dtypes are not allowed in a legacy pickle")
        if byteorder not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"invalid dtype byte order {_brief(byteorder)}")
        dt = self._dtype
        if dt.kind in "SUV":
            if not isinstance(elsize, int) or not 0 <= elsize <= _MAX_ITEMSIZE:
                raise _Refused(f"invalid item size {_brief(elsize)} for a {dt.kind} dtype")
            if dt.kind == "U":
                if elsize % 4:
                    raise pickle.UnpicklingError(f"invalid unicode item size {elsize}")
                dt = np.dtype(f"U{elsize // 4}")
            else:
                dt = np.dtype(f"{dt.kind}{elsize}")
        if byteorder in "<>" and dt.kind not in "bOSV":
            dt = dt.newbyteorder(byteorder)
        object.__setattr__(self, "_dtype", dt)
        object.__setattr__(self, "_done", True)

    def resolve(self) -> np.dtype:
        """Return the real dtype."""
        return self._dtype

    def __repr__(self) -> str:
        return f"<pending dtype {self._dtype}>"


class _PendingArray(_Frozen):
    """An ndarray being unpickled: checked shape, dtype and data, then a real array."""

    __slots__ = ("_array",)
    _array: np.ndarray

    def __init__(self, array: np.ndarray) -> None:
        object.__setattr__(self, "_array", array)

    def __setstate__(self, state: Any = None) -> None:
        if not isinstance(self, _PendingArray):
            raise _Refused("a pickle may not change the ndarray class")
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, rawdata)
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError(f"unsupported ndarray state {_brief(state)}")
        shape, dtype, fortran, raw = state
        dims = _check_shape(shape)
        dt = _plain_dtype(dtype)
        size = int(np.prod(dims, dtype=object))
        order = "F" if fortran else "C"
        if dt.hasobject:
            if not isinstance(raw, list) or len(raw) != size:
                raise pickle.UnpicklingError(
                    f"an object array of shape {tuple(dims)} needs a list of {size} items"
                )
            flat = np.empty(size, dtype=object)
            for i, item in enumerate(raw):
                flat[i] = item
            arr = flat.reshape(dims, order=order)
        else:
            if isinstance(raw, str):
                raw = raw.encode("latin-1")  # Python 2 str read as latin-1
            if not isinstance(raw, (bytes, bytearray)):
                raise pickle.UnpicklingError(f"ndarray data of type {type(raw).__name__}")
            if len(raw) != size * dt.itemsize:
                raise pickle.UnpicklingError(
                    f"ndarray data of {len(raw)} bytes for shape {tuple(dims)} and dtype {dt}"
                )
            arr = np.frombuffer(bytes(raw), dtype=dt).reshape(dims, order=order).copy(order="K")
        object.__setattr__(self, "_array", arr)

    def resolve(self) -> np.ndarray:
        """Return the real array."""
        return self._array

    def __repr__(self) -> str:
        return f"<pending ndarray {self._array.shape}>"


def _check_shape(shape: Any) -> list[int]:
    if not isinstance(shape, (tuple, list)) or len(shape) > 32:
        raise _Refused(f"invalid array shape {_brief(shape)}")
    dims = []
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
            raise _Refused(f"invalid array shape {_brief(shape)}")
        dims.append(int(s))
    return dims


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _PendingArray:
    if subtype is not _NDARRAY:
        raise _Refused(f"numpy _reconstruct of {_brief(subtype)} (only numpy.ndarray is allowed)")
    dims = _check_shape(shape)
    dt = _plain_dtype(dtype)
    if int(np.prod(dims, dtype=object)) * dt.itemsize > _MAX_RECONSTRUCT_BYTES:
        raise _Refused(f"numpy _reconstruct of a {tuple(dims)} array (too large)")
    return _PendingArray(np.zeros(dims, dtype=dt))


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> _PendingDtype:
    return _PendingDtype(_plain_dtype(obj))


def _scalar(dtype: Any, obj: Any = None) -> Any:
    dt = _plain_dtype(dtype)
    if dt.hasobject:
        return obj
    if isinstance(obj, str):
        obj = obj.encode("latin-1")
    if not isinstance(obj, bytes) or len(obj) != dt.itemsize:
        raise _Refused(f"numpy scalar of dtype {dt} from {_brief(obj)}")
    return np.frombuffer(obj, dtype=dt)[0].copy()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    if isinstance(buf, pickle.PickleBuffer):
        buf = bytes(buf.raw())
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused(f"numpy _frombuffer of a {type(buf).__name__}")
    dt = _plain_dtype(dtype)
    if dt.hasobject:
        raise _Refused("numpy _frombuffer of an object array")
    if order not in ("C", "F"):
        raise _Refused(f"numpy _frombuffer with order {_brief(order)}")
    dims = _check_shape(shape)
    if len(buf) != int(np.prod(dims, dtype=object)) * dt.itemsize:
        raise pickle.UnpicklingError(f"array data of {len(buf)} bytes for shape {tuple(dims)}")
    return np.frombuffer(bytes(buf), dtype=dt).reshape(dims, order=order).copy(order="K")


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _children(obj: Any) -> list[Any] | None:
    """Return the objects a container holds, or None for a leaf."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, slice):
        return [obj.start, obj.stop, obj.step]
    if isinstance(obj, _PendingArray):
        arr = obj.resolve()
        return list(arr.ravel(order="K")) if arr.dtype.hasobject else None
    if isinstance(obj, LegacyLilMatrix):
        return [obj._state] if obj._state is not None else None
    return None


def _check_graph(root: Any, source: str) -> None:
    """Refuse cyclic, too deeply nested and "billion laughs" object graphs.

    Iterative (no recursion), linear in the number of distinct containers: each
    container's expanded size (what a traversal that does not remember shared objects
    would visit) is computed once from its children's.
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    edges = 0
    stack: list[tuple[Any, int, list[Any] | None]] = [(root, 0, None)]
    while stack:
        node, depth, kids = stack.pop()
        key = id(node)
        if kids is not None:  # all children done: post-order visit
            on_path.discard(key)
            total = 1 + sum(expanded.get(id(k), 1) for k in kids)
            expanded[key] = total
            if total > _MAX_EXPANDED + _SHARING_FACTOR * edges:
                raise _Refused(
                    f"it refers to the same containers over and over (a 'billion laughs' "
                    f"structure expanding to more than {_MAX_EXPANDED + _SHARING_FACTOR * edges}"
                    f" items from {edges} stored references)"
                )
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise _Refused("its data refers to itself (a cycle), which SIMA's files never do")
        children = _children(node)
        if children is None:
            continue
        if depth >= MAX_PICKLE_DEPTH:
            raise _Refused(f"its data is nested more than {MAX_PICKLE_DEPTH} levels deep")
        on_path.add(key)
        edges += len(children)
        stack.append((node, depth, children))
        stack.extend((k, depth + 1, None) for k in children if id(k) not in expanded)


def _finalize(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Replace pending arrays and dtypes by real ones, throughout the unpickled data."""
    if memo is None:
        memo = {}
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _PendingDtype):
        memo[key] = out = obj.resolve()
        return out
    if isinstance(obj, _PendingArray):
        arr = obj.resolve()
        memo[key] = arr
        if arr.dtype.hasobject:
            for index in np.ndindex(arr.shape):
                arr[index] = _finalize(arr[index], memo)
        return arr
    if isinstance(obj, list):
        memo[key] = obj
        for i, item in enumerate(obj):
            obj[i] = _finalize(item, memo)
        return obj
    if isinstance(obj, dict):
        memo[key] = obj
        items = [(_finalize(k, memo), _finalize(v, memo)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
        return obj
    if isinstance(obj, set):
        memo[key] = obj
        items = [_finalize(v, memo) for v in obj]
        obj.clear()
        obj.update(items)
        return obj
    if isinstance(obj, (tuple, frozenset, slice)):
        memo[key] = obj  # a cycle through an immutable container keeps the original
        if isinstance(obj, slice):
            out: Any = slice(*(_finalize(v, memo) for v in (obj.start, obj.stop, obj.step)))
        else:
            out = type(obj)(_finalize(v, memo) for v in obj)
        memo[key] = out
        return out
    if isinstance(obj, LegacyLilMatrix):
        memo[key] = obj
        if obj._state is not None:
            object.__setattr__(obj, "_state", _finalize(obj._state, memo))
        return obj
    return obj


# -- builtins / copyreg helpers ---------------------------------------------------------
def _encode(obj: Any, encoding: Any = "latin1") -> bytes:
    # Python 3 writes bytes at protocols 0-2 as _codecs.encode(text, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused("_codecs.encode is only allowed for latin-1 text")
    return obj.encode("latin-1")


def _bytes(*args: Any) -> bytes:
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    raise _Refused("bytes(...) is only allowed without arguments or from bytes")


_STUB_CLASSES: tuple[type, ...] = (LegacyLilMatrix,)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # copy_reg._reconstructor(cls, base, state) as written by protocols 0 and 1
    if cls in _STUB_CLASSES and base is object and state is None:
        return cls.__new__(cls)
    if cls is _Str and base is _Str:
        if isinstance(state, str):
            return state
        if isinstance(state, bytes):
            return state.decode("latin-1")
    if cls is int and base is int and isinstance(state, int):
        return int(state)
    if cls is _EmptyList and base is _EmptyList and isinstance(state, list):
        return list(state)
    if cls is _EmptyDict and base is _EmptyDict and isinstance(state, dict):
        return dict(state)
    raise _Refused(
        f"copy_reg._reconstructor({_brief(cls)}, {_brief(base)}, ...) is not allowed"
    )


# ---------------------------------------------------------------------------------------
# The allow-list (behaviour spec, section 2.7)
# ---------------------------------------------------------------------------------------
_SIMA_SEQUENCE_CLASSES = (
    "_Sequence_HDF5",
    "_Sequence_TIFF_Interleaved",
    "_Sequence_TIFFs",
    "_Sequence_ndarray",
    "_Sequence_memmap",
    "_Sequence_constant",
    "_Joined_Sequence",
    "_MotionCorrectedSequence",
    "_IndexedSequence",
    "_MaskedSequence",
    "_AddWrapperSequence",
    "_SubtractWrapperSequence",
    "_MultiplyWrapperSequence",
    "_DivideWrapperSequence",
    "_FloorDivideWrapperSequence",
    "_TrueDivideWrapperSequence",
)


def _build_allow_list() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    for name in _SIMA_SEQUENCE_CLASSES:
        table["sima.sequence", name] = LegacyClass("sima.sequence", name)
    for name in ("MultiPageTIFF", "HDF5"):
        table["sima.iterables", name] = LegacyClass("sima.iterables", name)
    reconstruct = _SafeFunction(_reconstruct, "numpy _reconstruct")
    scalar = _SafeFunction(_scalar, "numpy scalar")
    frombuffer = _SafeFunction(_frombuffer, "numpy _frombuffer")
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[mod, "_reconstruct"] = reconstruct
        table[mod, "scalar"] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[mod, "_frombuffer"] = frombuffer  # NumPy arrays at pickle protocol 5
    table["numpy", "ndarray"] = _NDARRAY
    table["numpy", "dtype"] = _SafeFunction(_dtype, "numpy dtype")
    for mod in ("scipy.sparse.lil", "scipy.sparse._lil"):
        table[mod, "lil_matrix"] = LegacyLilMatrix
    recon = _SafeFunction(_reconstructor, "copy_reg _reconstructor")
    table["copy_reg", "_reconstructor"] = recon
    table["copyreg", "_reconstructor"] = recon
    table["_codecs", "encode"] = _SafeFunction(_encode, "_codecs encode")
    for mod in ("__builtin__", "builtins"):
        table[mod, "object"] = object
        table[mod, "set"] = _SafeFunction(_collection(set), "set")
        table[mod, "frozenset"] = _SafeFunction(_collection(frozenset), "frozenset")
        table[mod, "slice"] = slice
        table[mod, "range"] = range
        table[mod, "str"] = _Str
        table[mod, "int"] = int
        table[mod, "list"] = _EmptyList
        table[mod, "dict"] = _EmptyDict
        table[mod, "bytes"] = _SafeFunction(_bytes, "bytes")
    table["__builtin__", "xrange"] = range
    table["__builtin__", "unicode"] = _Str
    table["__builtin__", "long"] = int
    # Py2 pickles written with the `future` package (``from builtins import str``)
    future = {
        "newstr": _Str,
        "newbytes": _FutureBytes,
        "newint": int,
        "newlist": _EmptyList,
        "newdict": _EmptyDict,
        "newobject": object,
        "newrange": range,
    }
    for name, target in future.items():
        table[f"future.types.{name}", name] = target
        table["future.types", name] = target
    return table


_ALLOWED: dict[tuple[str, str], Any] = _build_allow_list()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals legacy SIMA files contain.

    SIMA's classes become :class:`LegacyClass` markers, ``lil_matrix`` becomes
    :class:`LegacyLilMatrix`, NumPy arrays, dtypes and scalars are rebuilt through
    checked wrappers, and a few built-in types (``set``, ``frozenset``, ``slice``,
    ``range``, ...) are allowed.  Any other global raises :class:`UnsafePickleError`
    at the moment the pickle names it, so nothing it refers to is ever called.

    Before unpickling, :meth:`load` checks the opcode stream (no persistent ids or
    extension codes, no memo bombs, no global outside the allow-list, no length
    prefix beyond the data); after it, the object graph (no cycles, no nesting
    deeper than :data:`MAX_PICKLE_DEPTH`, no "billion laughs" of shared containers).
    Every failure is a :class:`ValueError` (:class:`UnsafePickleError` for refusals).

    Parameters
    ----------
    file : binary file
        The pickle stream (read at once, at most ``max_bytes``).
    source : str
        Name of the file, used in error messages.
    encoding : str
        How Python 2 ``str`` objects are decoded (``'latin1'`` keeps NumPy's byte
        buffers intact).
    prescan : bool
        Check the opcode stream before unpickling (default).  Without it the
        allow-list alone still refuses every global (used to test each layer).
    max_bytes : int, optional
        Largest stream accepted (default :data:`MAX_PICKLE_BYTES`).
    """

    def __init__(
        self,
        file: Any,
        *,
        source: str = "<pickle>",
        encoding: str = "latin1",
        prescan: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        limit = MAX_PICKLE_BYTES if max_bytes is None else int(max_bytes)
        data = file.read(limit + 1)
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"RestrictedUnpickler reads a binary file, got {type(data).__name__}")
        self._data = data
        self._limit = limit
        self._prescan = bool(prescan)
        super().__init__(io.BytesIO(data), encoding=encoding, errors="strict")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return our stand-in for ``module.name``, or refuse it.

        Raises
        ------
        UnsafePickleError
            If ``module.name`` is not on the allow-list.
        """
        try:
            return _ALLOWED[module, name]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"refusing to load {self.source!r}: it asks for {_clip(f'{module}.{name}')} "
                f"(module {_clip(repr(module))}, class/function {_clip(repr(name))}), which is "
                f"not on the allow-list of legacy SIMA pickles; nothing from the file was "
                f"executed",
                path=self.source,
                module=str(module),
                name=str(name),
            ) from None

    def load(self) -> Any:
        """Unpickle the stream and return plain data (real arrays and dtypes).

        Raises
        ------
        UnsafePickleError
            If the pickle names a global outside the allow-list or misuses an
            allowed one.
        """
        source = self.source
        if len(self._data) > self._limit:
            raise ResourceLimitError(
                f"{source!r} is larger than the {self._limit} bytes allowed for a legacy SIMA "
                f"pickle; refusing to read it"
            )
        if not self._data:
            raise FileFormatError(f"{source!r} is empty (0 bytes), not a pickle")
        if self._prescan:
            _prescan(self._data, source)
        try:
            obj = super().load()
            _check_graph(obj, source)
            return _finalize(obj)
        except UnsafePickleError:
            raise
        except _Refused as err:
            raise UnsafePickleError(
                f"refusing to load {source!r}: {err}; nothing from the file was executed",
                path=source,
            ) from None
        except (Exception, RecursionError, MemoryError) as err:  # noqa: BLE001 - not a pickle
            raise FileFormatError(
                f"{source!r} is not a readable legacy SIMA pickle: {type(err).__name__}: "
                f"{_clip(str(err))}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (SIMA never wrote them)."""
        raise UnsafePickleError(
            f"refusing to load {self.source!r}: it uses a persistent id ({_brief(pid)}), "
            f"which legacy SIMA pickles never contain; nothing from the file was executed",
            path=self.source,
        )


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_REFUSED_OPS = {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"}


def _prescan(data: bytes, source: str) -> None:
    """Check the opcode stream before unpickling (memo bombs, odd opcodes, globals)."""
    count = 0
    try:
        for op, arg, _pos in pickletools.genops(data):
            count += 1
            if op.name in _MEMO_OPS and int(arg) > count:
                raise UnsafePickleError(
                    f"refusing to load {source!r}: it stores an object under memo index "
                    f"{arg}, far beyond anything a real pickle uses (a memory bomb)",
                    path=source,
                )
            if op.name in _REFUSED_OPS:
                what = "a persistent id" if "PERSID" in op.name else "an extension code"
                raise UnsafePickleError(
                    f"refusing to load {source!r}: it uses {what} (pickle opcode {op.name}), "
                    f"which legacy SIMA pickles never contain; nothing from the file was "
                    f"executed",
                    path=source,
                )
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, name = arg.partition(" ")
                if (module, name) not in _ALLOWED:
                    RestrictedUnpickler(io.BytesIO(b""), source=source).find_class(module, name)
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or garbage data
        raise FileFormatError(f"{source!r} is not a readable pickle: {_clip(str(err))}") from None


def read_legacy_pickle(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
    """Load one legacy SIMA pickle through the restricted unpickler.

    Parameters
    ----------
    path : path-like
        The pickle file (``dataset.pkl``, ``sequences.pkl``, ``rois.pkl``, ...).
    max_bytes : int, optional
        Refuse larger files (default :data:`MAX_PICKLE_BYTES`, 256 MB).

    Returns
    -------
    object
        The unpickled data: dicts, lists, strings, numbers, NumPy arrays, sets,
        slices, ranges, :class:`LegacyClass` markers and :class:`LegacyLilMatrix`
        stand-ins.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UnsafePickleError
        If the pickle names a global outside the allow-list (nothing is executed).
    ValueError
        If the file is too large (:class:`~napari_sima.core.errors.ResourceLimitError`),
        not a regular file, truncated, deeper than :data:`MAX_PICKLE_DEPTH`, cyclic, or
        otherwise not a readable pickle.
    """
    source = os.path.abspath(os.fspath(path))
    limit = MAX_PICKLE_BYTES if max_bytes is None else int(max_bytes)
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such legacy pickle: {source!r}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{source!r} is a folder, expected a pickle file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise FileFormatError(f"{source!r} is not a regular file (a device, FIFO or socket); "
                              f"expected a pickle file")
    if info.st_size > limit:
        raise ResourceLimitError(
            f"{source!r} is {info.st_size} bytes, more than the {limit} bytes allowed for a "
            f"legacy SIMA pickle; refusing to read it"
        )
    with open(source, "rb") as fh:
        return RestrictedUnpickler(fh, source=source, max_bytes=limit).load()


# ---------------------------------------------------------------------------------------
# Helpers for the dataset loader
# ---------------------------------------------------------------------------------------
def _text(value: Any, what: str, source: str) -> str:
    """Return ``value`` as text (Python 2 byte strings are decoded as latin-1)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    if isinstance(value, str):
        return str(value)
    raise ValueError(f"{source!r}: {what} should be text, got {type(value).__name__}")


def _opt_text(value: Any, what: str, source: str) -> str | None:
    return None if value is None else _text(value, what, source)


def _int(value: Any, what: str, source: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{source!r}: {what} should be an integer, got {_brief(value)}")


def _opt_int(value: Any, what: str, source: str) -> int | None:
    return None if value is None else _int(value, what, source)


def _resolve_path(entry: dict[str, Any], folder: Path, what: str, source: str) -> str:
    """Find a movie: ``folder/_relpath`` (also with ``\\`` as ``/``), then ``_abspath``.

    A relative ``_abspath`` (as in SIMA's own example) is taken relative to the
    dataset folder, never to the current directory.
    """
    candidates: list[str] = []

    def add(p: str) -> None:
        p = os.path.normpath(p if os.path.isabs(p) else os.path.join(folder, p))
        if p not in candidates:
            candidates.append(p)

    rel = entry.get("_relpath")
    if rel is not None:
        rel = _text(rel, "_relpath", source)
        add(rel)
        add(rel.replace("\\", "/"))
    for key in ("_abspath", "path"):
        value = entry.get(key)
        if value is not None:
            add(_text(value, key, source))
    if not candidates:
        raise ValueError(f"{source!r}: a {what} has no stored path (_relpath/_abspath)")
    for cand in candidates:
        if os.path.isfile(cand):  # regular files only: never a device, FIFO or folder
            return cand
    odd = [c for c in candidates if os.path.exists(c)]
    raise FileNotFoundError(
        f"the {what} of the legacy dataset {str(folder)!r} was not found; looked for it at: "
        + ", ".join(repr(c) for c in candidates)
        + (f" ({', '.join(repr(c) for c in odd)} exists but is not a regular file)"
           if odd else "")
        + ". Put the file back at one of these places (e.g. keep the dataset folder and "
        "its movies together)."
    )


def _resolve_plain_path(value: Any, folder: Path, what: str, source: str) -> str:
    """Resolve a path stored as is (``_Sequence_TIFFs``): absolute, else in the folder.

    A relative path is taken relative to the dataset folder, never to the current
    directory, so that what a dataset reads does not depend on where it is opened from.
    """
    p = _text(value, what, source)
    cand = p if os.path.isabs(p) else os.path.normpath(os.path.join(folder, p))
    if os.path.isfile(cand):  # regular files only: never a device, FIFO or folder
        return cand
    odd = " (it exists but is not a regular file)" if os.path.exists(cand) else ""
    raise FileNotFoundError(
        f"the {what} {p!r} of the legacy dataset {str(folder)!r} was not found; looked for "
        f"it at {cand!r}{odd}"
    )


def _class_of(entry: Any, source: str, module: str) -> str:
    if not isinstance(entry, dict):
        raise ValueError(f"{source!r}: expected a dict describing a sequence, got "
                         f"{type(entry).__name__}")
    cls = entry.get("__class__")
    if not isinstance(cls, LegacyClass) or cls.module != module:
        raise ValueError(f"{source!r}: a stored entry has no {module} '__class__' "
                         f"(got {_brief(cls)})")
    return cls.name


def _slice_index(value: Any, source: str) -> slice | int:
    if isinstance(value, slice):
        parts = [
            None if v is None else _int(v, "a slice bound", source)
            for v in (value.start, value.stop, value.step)
        ]
        return slice(*parts)
    return _int(value, "an index", source)


def _range_length(r: range) -> int:
    """``len(r)`` without the OverflowError of ranges longer than ``sys.maxsize``."""
    if (r.step > 0 and r.start >= r.stop) or (r.step < 0 and r.start <= r.stop):
        return 0
    return (abs(r.stop - r.start) + abs(r.step) - 1) // abs(r.step)


def _mask_part(value: Any, source: str) -> Any:
    """Convert one element of a stored ``(frames, ..., channels)`` mask tuple."""
    if value is None or isinstance(value, np.ndarray):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, range) and _range_length(value) > _MAX_MASK_ITEMS:
        raise ValueError(f"{source!r}: a stored mask selects {_range_length(value)} items "
                         f"(more than {_MAX_MASK_ITEMS})")
    if isinstance(value, (list, tuple, range, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if items and all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            return np.asarray(items, dtype=bool)  # a nested-list boolean mask
        return [_int(v, "a mask index", source) for v in items]
    raise ValueError(f"{source!r}: unsupported element {_brief(value)} in a stored mask")


_UNSUPPORTED_V1 = {
    "_Sequence_memmap": "memory-mapped raw files",
    "_Sequence_constant": "constant sequences",
    "_AddWrapperSequence": "sequence arithmetic",
    "_SubtractWrapperSequence": "sequence arithmetic",
    "_MultiplyWrapperSequence": "sequence arithmetic",
    "_DivideWrapperSequence": "sequence arithmetic",
    "_FloorDivideWrapperSequence": "sequence arithmetic",
    "_TrueDivideWrapperSequence": "sequence arithmetic",
}


def _rebuild_v1(entry: Any, folder: Path, source: str, depth: int = 0) -> Sequence:
    """Rebuild one ``sequences.pkl`` entry as one of our sequences."""
    if depth > _MAX_NESTING:
        raise ValueError(f"{source!r}: sequences nested more than {_MAX_NESTING} levels deep")
    name = _class_of(entry, source, "sima.sequence")

    def sub(key: str) -> Sequence:
        if key not in entry:
            raise ValueError(f"{source!r}: a sima.sequence.{name} lacks its {key!r}")
        return _rebuild_v1(entry[key], folder, source, depth + 1)

    if name in _UNSUPPORTED_V1:
        raise ValueError(
            f"{source!r}: sequences of class sima.sequence.{name} ({_UNSUPPORTED_V1[name]}) "
            f"are not supported by napari-sima's legacy loader"
        )
    if name == "_Sequence_HDF5":
        path = _resolve_path(entry, folder, "HDF5 movie", source)
        return Sequence.create(
            "HDF5",
            path,
            _text(entry.get("dim_order"), "dim_order", source),
            group=_opt_text(entry.get("group"), "group", source),
            key=_opt_text(entry.get("key"), "key", source),
        )
    if name == "_Sequence_TIFF_Interleaved":
        path = _resolve_path(entry, folder, "TIFF movie", source)
        return Sequence.create(
            "TIFF",
            path,
            num_planes=_int(entry.get("num_planes", 1), "num_planes", source),
            num_channels=_int(entry.get("num_channels", 1), "num_channels", source),
            len_=_opt_int(entry.get("len_"), "len_", source),
        )
    if name == "_Sequence_TIFFs":
        paths = np.asarray(entry.get("paths"), dtype=object)
        if paths.ndim != 3 or paths.size == 0:
            raise ValueError(
                f"{source!r}: the paths of a sima.sequence._Sequence_TIFFs must form a "
                f"non-empty (frames, planes, channels) array, got shape {paths.shape}"
            )
        frames, planes, channels = paths.shape
        grid = [
            [
                [
                    _resolve_plain_path(paths[t, p, c], folder, "TIFF file", source)
                    for t in range(frames)
                ]
                for c in range(channels)
            ]
            for p in range(planes)
        ]
        return Sequence.create("TIFFs", grid)
    if name == "_Sequence_ndarray":
        array = entry.get("array")
        if array is not None:
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{source!r}: a stored array sequence holds a "
                                 f"{type(array).__name__}")
            return Sequence.create("ndarray", array)
        path = _resolve_path(entry, folder, "array file (.npy)", source)
        return Sequence.create("ndarray", path=path)
    if name == "_Joined_Sequence":
        parts = entry.get("sequences")
        if not isinstance(parts, (list, tuple)) or not parts:
            raise ValueError(f"{source!r}: a sima.sequence._Joined_Sequence has no sequences")
        return Sequence.join(*[_rebuild_v1(p, folder, source, depth + 1) for p in parts])
    if name == "_MotionCorrectedSequence":
        base = sub("base")
        disp = entry.get("displacements")
        if not isinstance(disp, np.ndarray) or disp.dtype.kind not in "iu":
            raise ValueError(f"{source!r}: a motion-corrected sequence lacks integer "
                             f"displacements (got {type(disp).__name__})")
        extent = entry.get("extent")
        if extent is not None:
            extent = tuple(_int(e, "extent", source) for e in extent)
        return base.apply_displacements(disp, extent)
    if name == "_IndexedSequence":
        base = sub("base")
        indices = entry.get("indices")
        if not isinstance(indices, (tuple, list)):
            indices = (indices,)
        return base[tuple(_slice_index(i, source) for i in indices)]
    if name == "_MaskedSequence":
        base = sub("base")
        outers = entry.get("outers")
        if not isinstance(outers, (list, tuple)):
            raise ValueError(f"{source!r}: a masked sequence has no list of masks")
        masks = []
        for m in outers:
            if not isinstance(m, (tuple, list)):
                raise ValueError(f"{source!r}: a stored mask is a {type(m).__name__}, "
                                 f"expected a tuple")
            masks.append(tuple(_mask_part(v, source) for v in m))
        return base.mask(masks)
    raise ValueError(f"{source!r}: unknown sequence class sima.sequence.{name}")


def _channel_names(meta: dict[str, Any], source: str) -> list[str] | None:
    names = meta.get("channel_names")
    if names is None:
        return None
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{source!r}: channel_names should be a list, got {_brief(names)}")
    out = []
    for n in names:
        if isinstance(n, (bytes, bytearray, str)):
            out.append(_text(n, "a channel name", source))
        elif isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            out.append(str(int(n)))
        else:
            raise ValueError(f"{source!r}: a channel name should be text, got {_brief(n)}")
    return out


def _clip_slices(clip: Any, source: str) -> tuple[slice, slice] | None:
    """Convert a version-0 ``clip`` (per-axis ``(start, stop)``, 0 = None) to slices."""
    if clip is None:
        return None
    try:
        pairs = [tuple(p) for p in clip]
    except TypeError:
        raise ValueError(f"{source!r}: invalid clip {_brief(clip)}") from None
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{source!r}: clip should be ((row0, row1), (col0, col1)), got "
                         f"{_brief(clip)}")
    out = []
    for p in pairs:
        start, stop = (_int(v, "a clip bound", source) if v is not None else 0 for v in p)
        out.append(slice(start or None, stop or None))
    return out[0], out[1]


def _v0_channel(entry: Any, folder: Path, source: str) -> Sequence:
    name = _class_of(entry, source, "sima.iterables")
    if name == "MultiPageTIFF":
        path = _resolve_path(entry, folder, "TIFF movie", source)
        seq = Sequence.create("TIFF", path)
        if seq.shape[1] != 1 or seq.shape[4] != 1:
            raise ValueError(
                f"{path!r} reads as {seq.shape[1]} planes x {seq.shape[4]} channels, but a "
                f"version-0 SIMA channel is a single-plane, single-channel movie"
            )
    elif name == "HDF5":
        path = _resolve_path(entry, folder, "HDF5 movie", source)
        dim_order = _text(entry.get("dim_order"), "dim_order", source)
        seq = Sequence.create(
            "HDF5",
            path,
            dim_order,
            group=_opt_text(entry.get("group"), "group", source),
            key=_opt_text(entry.get("key"), "key", source),
        )
        channel = _opt_int(entry.get("channel"), "channel", source)
        if channel is not None and "c" in dim_order:
            seq = seq[:, :, :, :, channel]
    else:  # pragma: no cover - the allow-list only has these two
        raise ValueError(f"{source!r}: unsupported version-0 channel class {name}")
    clip = _clip_slices(entry.get("clip"), source)
    if clip is not None:
        seq = seq[:, :, clip[0], clip[1]]
    return seq


def _load_v0(folder: Path, meta: dict[str, Any], source: str) -> list[Sequence]:
    iterables = meta["iterables"]
    if not isinstance(iterables, (list, tuple)) or not iterables:
        raise ValueError(f"{source!r}: 'iterables' should be a non-empty list of sequences")
    sequences = []
    for k, channels in enumerate(iterables):
        if not isinstance(channels, (list, tuple)) or not channels:
            raise ValueError(f"{source!r}: sequence {k} should be a non-empty list of channels")
        parts = [_v0_channel(c, folder, source) for c in channels]
        sequences.append(parts[0] if len(parts) == 1 else Sequence.join(*parts))

    disp_file = folder / "displacements.pkl"
    if disp_file.exists():
        dsource = str(disp_file)
        displacements = read_legacy_pickle(disp_file)
        if isinstance(displacements, np.ndarray) and displacements.dtype != object:
            displacements = [displacements]
        if not isinstance(displacements, (list, tuple, np.ndarray)):
            raise ValueError(f"{dsource!r} should hold a list of displacement arrays")
        displacements = [np.asarray(d) for d in displacements]
        for k, d in enumerate(displacements):
            if d.dtype.kind not in "iu":
                raise ValueError(f"{dsource!r}: displacement array {k} is not integer "
                                 f"(dtype {d.dtype})")
        if len(displacements) != len(sequences):
            extra = (
                f"sequences {len(displacements)}..{len(sequences) - 1} have no displacements "
                f"and are dropped"
                if len(displacements) < len(sequences)
                else f"the last {len(displacements) - len(sequences)} arrays are ignored"
            )
            warnings.warn(
                f"{dsource!r} holds {len(displacements)} displacement array(s) for "
                f"{len(sequences)} sequence(s) of the legacy dataset {str(folder)!r}; "
                f"{extra} (as SIMA did)",
                UserWarning,
                stacklevel=3,
            )
        pairs = list(zip(sequences, displacements))
        if not pairs:
            raise ValueError(f"{dsource!r} holds no displacements; no sequence is left")
        reshaped = []
        for k, (seq, d) in enumerate(pairs):
            t, z, y = seq.shape[:3]
            if d.size != t * z * y * 2:
                raise ValueError(
                    f"{dsource!r}: displacement array {k} has {d.size} values, but sequence "
                    f"{k} of shape {seq.shape} needs {t * z * y * 2} (frames x planes x rows x 2)"
                )
            reshaped.append(d.reshape(t, z, y, 2))
        max_dy = max(int(d[..., 0].max()) for d in reshaped)
        max_dx = max(int(d[..., 1].max()) for d in reshaped)
        corrected = []
        for seq, d in zip(sequences, reshaped):
            z, y, x = seq.shape[1:4]
            corrected.append(seq.apply_displacements(d, (z, y + max_dy, x + max_dx)))
        sequences = corrected

    trim = meta.get("_lazy__trim_coords")
    if trim is None:
        if meta.get("trim_criterion") is not None:
            raise ValueError(
                f"{source!r} has a trim_criterion but no trim coordinates (_lazy__trim_coords)"
            )
    else:
        try:
            (r0, c0), (r1, c1) = ((_int(a, "a trim coordinate", source),
                                   _int(b, "a trim coordinate", source)) for a, b in trim)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{source!r}: invalid trim coordinates {_brief(trim)} ({err})"
            ) from None
        sequences = [s[:, :, r0:r1, c0:c1] for s in sequences]
    return sequences


def load_legacy_dataset(folder: str | os.PathLike) -> ImagingDataset:
    """Open a legacy SIMA dataset folder (pickles), read-only.

    Parameters
    ----------
    folder : path-like
        The ``.sima`` folder holding ``dataset.pkl`` (and ``sequences.pkl`` for
        version 1.x, or ``displacements.pkl`` for version 0).

    Returns
    -------
    ImagingDataset
        Bound to ``folder`` and read-only; save it elsewhere with
        ``ds.save('new.sima')`` to convert it to the current format.

    Raises
    ------
    UnsafePickleError
        If a pickle names anything outside the allow-list (nothing is executed).
    FileNotFoundError
        If a pickle or a movie cannot be found (the message names every place tried).
    ValueError
        For pre-1.0 development datasets, unsupported sequence classes, and broken or
        inconsistent files.
    """
    folder = Path(os.path.abspath(os.fspath(folder)))
    if not folder.is_dir():
        raise FileNotFoundError(f"no legacy SIMA dataset folder at {str(folder)!r}")
    dataset_file = folder / "dataset.pkl"
    source = str(dataset_file)
    meta = read_legacy_pickle(dataset_file)
    if not isinstance(meta, dict):
        raise ValueError(f"{source!r} should hold a dict, got {type(meta).__name__}")
    if "sequences" in meta:
        raise ValueError(
            f"Old 1.0.0-dev dataset: {source!r} comes from a development version of SIMA "
            f"before 1.0, which napari-sima cannot read"
        )
    names = _channel_names(meta, source)
    if "iterables" in meta:
        try:
            sequences = _load_v0(folder, meta, source)
        except (TypeError, IndexError, KeyError, AttributeError, OverflowError) as err:
            raise FileFormatError(
                f"cannot rebuild the sequences of {source!r}: {type(err).__name__}: "
                f"{_clip(str(err))}"
            ) from None
    else:
        seq_file = folder / "sequences.pkl"
        if not seq_file.exists():
            raise FileNotFoundError(
                f"the legacy dataset {str(folder)!r} has dataset.pkl but no sequences.pkl"
            )
        seq_source = str(seq_file)
        stored = read_legacy_pickle(seq_file)
        if not isinstance(stored, (list, tuple)) or not stored:
            raise ValueError(f"{seq_source!r} should hold a non-empty list of sequences")
        sequences = []
        for k, entry in enumerate(stored):
            try:
                sequences.append(_rebuild_v1(entry, folder, seq_source))
            except (FileNotFoundError, FileFormatError):
                raise
            except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
                    OSError) as err:
                raise FileFormatError(
                    f"cannot rebuild sequence {k} of {seq_source!r}: {_clip(str(err), 400)}"
                ) from err
        frame_shape = meta.get("frame_shape")
        if frame_shape is not None:
            try:
                expected = tuple(int(v) for v in frame_shape)
            except (TypeError, ValueError, OverflowError):
                expected = None
            found = {s.frame_shape for s in sequences}
            if expected is not None and found != {expected}:
                raise ValueError(
                    f"the movies of the legacy dataset {str(folder)!r} no longer match its "
                    f"stored frame shape {expected}: found {sorted(found)}"
                )
    for k, seq in enumerate(sequences):
        check_frame_size(seq, f"sequence {k} of the legacy dataset {str(folder)!r}")
    try:
        ds = ImagingDataset(list(sequences), None, channel_names=names)
    except (ValueError, TypeError) as err:
        raise FileFormatError(f"cannot open the legacy dataset {str(folder)!r}: {err}") from err
    ds._savedir = folder
    ds._read_only = True
    return ds
