"""Lazy 5-D imaging sequences ``(t, z, y, x, c)``.

A :class:`Sequence` is a re-iterable, lazily read movie.  Every kind (TIFF, TIFFs,
HDF5, in-memory array) reads *blocks of frames* on demand through one private method,
``_read(times, region)``; iteration, slicing, projections, exports and the napari
view are all built on it, so no code path ever loads a whole movie unless asked to
(``numpy.asarray(seq)``).

Examples
--------
>>> import numpy as np
>>> from napari_sima.core import Sequence
>>> seq = Sequence.create('ndarray', np.ones((10, 3, 16, 16, 2)))
>>> seq.shape
(10, 3, 16, 16, 2)
>>> seq[2:5, 0].shape            # integers never drop an axis
(3, 1, 16, 16, 2)
>>> Sequence.join(seq, seq).shape[4]
4
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import _indexing as ix
from ._dimorder import check_dim_order, read_mapped, shape_5d
from ._indexing import Region, TimeIndex
from .errors import brief as _brief

if TYPE_CHECKING:
    from .lazy import LazyChannelArray

#: Registry of sequence kinds by the name stored in dataset files.
_KINDS: dict[str, type[Sequence]] = {}

#: Frames read per block when streaming a sequence (see :meth:`Sequence.iter_blocks`).
DEFAULT_BLOCK_FRAMES = 64


def _register(cls: type[Sequence]) -> type[Sequence]:
    _KINDS[cls.kind] = cls
    return cls


class Sequence:
    """A lazily read imaging sequence with axes ``(t, z, y, x, c)``.

    Do not instantiate directly: use :meth:`Sequence.create`, :meth:`Sequence.join`,
    slicing, :meth:`mask` or :meth:`apply_displacements`.

    Notes
    -----
    * ``len(seq)`` is the number of frames and ``seq.shape`` the 5-D shape.
    * Iterating yields ``(z, y, x, c)`` ``float64`` frames, as SIMA did; for fast
      streaming use :meth:`iter_blocks`, which yields blocks of frames in the stored
      dtype.
    * ``seq[t, z, y, x, c]`` returns a lazy view; integer indices keep their axis
      (length 1), so a view is always 5-D.
    * ``numpy.asarray(seq)`` loads everything (float64 like SIMA unless a dtype is
      given).
    """

    kind: ClassVar[str] = ""

    # -- to be provided by every kind -------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The ``(t, z, y, x, c)`` shape."""
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the stored data (frames read by :meth:`iter_blocks`)."""
        raise NotImplementedError

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        """Read frames ``times`` restricted to ``region`` as ``(n, z, y, x, c)``."""
        raise NotImplementedError

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Return a JSON-compatible description from which :meth:`from_dict` rebuilds it.

        Parameters
        ----------
        savedir : path-like, optional
            Dataset folder; file paths are also stored relative to it so that a folder
            moved together with its movies still loads.
        """
        raise NotImplementedError

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        raise NotImplementedError

    def close(self) -> None:
        """Release open file handles (they are reopened on the next read)."""

    @property
    def files(self) -> list[str]:
        """Absolute paths of the files this sequence reads."""
        return []

    # -- generic behaviour ------------------------------------------------------------
    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """The ``(z, y, x, c)`` shape of one frame."""
        return self.shape[1:]  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Size of the whole sequence in its stored dtype, in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: shape={self.shape}, dtype={self.dtype}>"

    def _full_region(self) -> Region:
        return ix.full_region(self.frame_shape)

    def read(
        self, times: TimeIndex | int | slice | None = None, dtype: Any = None
    ) -> np.ndarray:
        """Read frames into memory.

        Parameters
        ----------
        times : int, slice, range or integer array, optional
            Frames to read (default all).
        dtype : dtype, optional
            Output dtype (default: the stored dtype).

        Returns
        -------
        numpy.ndarray
            ``(n, z, y, x, c)`` array.
        """
        if times is None:
            t: TimeIndex = range(len(self))
        elif isinstance(times, (range, np.ndarray)) and not (
            isinstance(times, np.ndarray) and times.dtype == bool
        ):
            t = times if isinstance(times, range) else ix.normalize_time_index(times, len(self))
        else:
            t = ix.normalize_time_index(times, len(self))
        data = self._read(t, self._full_region())
        return data if dtype is None else data.astype(dtype, copy=False)

    def iter_blocks(
        self, block_frames: int = DEFAULT_BLOCK_FRAMES, dtype: Any = None
    ) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of frames, each ``(n, z, y, x, c)``.

        Parameters
        ----------
        block_frames : int
            Frames per block (the last block may be shorter).
        dtype : dtype, optional
            Convert each block to this dtype (default: the stored dtype).

        Yields
        ------
        numpy.ndarray
            The next block of frames.
        """
        if block_frames < 1:
            raise ValueError(f"block_frames must be at least 1, got {block_frames}")
        region = self._full_region()
        n = len(self)
        for start in range(0, n, block_frames):
            block = self._read(range(start, min(n, start + block_frames)), region)
            yield block if dtype is None else block.astype(dtype, copy=False)

    def _get_frame(self, t: int) -> np.ndarray:
        """Return frame ``t`` as a ``(z, y, x, c)`` float64 array."""
        t = ix.normalize_axis_index(t, len(self), "t").start
        return self._read(range(t, t + 1), self._full_region())[0].astype(float)

    def frame(self, t: int) -> np.ndarray:
        """Return frame ``t`` as a ``(z, y, x, c)`` float64 array."""
        return self._get_frame(t)

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.iter_blocks():
            for frame in block:
                yield frame.astype(float)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self._read(range(len(self)), self._full_region())
        return data.astype(float if dtype is None else dtype, copy=False)

    def __getitem__(self, indices: Any) -> Sequence:
        return _IndexedSequence(self, indices)

    # -- constructors -------------------------------------------------------------------
    @staticmethod
    def create(fmt: str, *args: Any, **kwargs: Any) -> Sequence:
        """Create a sequence from files or an array.

        Parameters
        ----------
        fmt : {'TIFF', 'TIFFs', 'HDF5', 'ndarray'}
            The format of the data:

            * ``'TIFF'``: ``create('TIFF', path, num_planes=1, num_channels=1)``, one
              multi-page TIFF.  ImageJ hyperstacks, OME-TIFF and ScanImage files take
              their axis order from the file's metadata; plain multi-page files are
              interleaved channel fastest, then plane, then time (as SIMA).
            * ``'TIFFs'``: ``create('TIFFs', paths)`` with ``paths[plane][channel]``
              either one multi-page TIFF (pages are frames) or a glob pattern / list
              of files (sorted; file ``k`` is frame ``k``).
            * ``'HDF5'``: ``create('HDF5', path, dim_order, group=None, key=None)``;
              ``dim_order`` such as ``'tzyxc'`` or ``'yxt'``; missing axes get length 1.
              With ``dim_order=None`` the dataset's dimension labels are used.
            * ``'ndarray'``: ``create('ndarray', array, dim_order='tzyxc')`` or
              ``create('ndarray', path='movie.npy')``.
        *args, **kwargs
            Passed to the chosen kind.

        Returns
        -------
        Sequence

        Raises
        ------
        ValueError
            For an unknown format or bad parameters.
        OSError
            For a missing or unreadable file.
        """
        from . import _hdf5, _tiff  # noqa: F401  (register the file kinds)

        key = str(fmt).lower() if isinstance(fmt, str) else fmt
        table = {
            "tiff": "TIFF",
            "tif": "TIFF",
            "tiffs": "TIFFs",
            "hdf5": "HDF5",
            "h5": "HDF5",
            "ndarray": "ndarray",
        }
        if key not in table:
            raise ValueError(
                f"Unrecognized sequence format {fmt!r}; expected one of "
                f"'TIFF', 'TIFFs', 'HDF5', 'ndarray'"
            )
        seq = _KINDS[table[key]](*args, **kwargs)
        if table[key] != "ndarray":  # a file's claims, checked before any frame is read
            source = args[0] if args else kwargs.get("path", kwargs.get("paths", fmt))
            check_frame_size(seq, f"the {table[key]} movie {str(source)!r}")
        return seq

    @staticmethod
    def join(*sequences: Sequence) -> Sequence:
        """Join sequences of equal ``(t, z, y, x)`` shape along the channel axis.

        Parameters
        ----------
        *sequences : Sequence
            Sequences whose channels are concatenated, in argument order.

        Returns
        -------
        Sequence
        """
        return _JoinedSequence(list(sequences))

    @classmethod
    def from_dict(cls, data: dict[str, Any], savedir: str | os.PathLike | None = None) -> Sequence:
        """Rebuild a sequence from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            The description (as stored in ``dataset.json``).
        savedir : path-like, optional
            Dataset folder that relative paths refer to.

        Returns
        -------
        Sequence

        Raises
        ------
        ValueError
            If the description names an unknown kind or lacks a field.
        FileNotFoundError
            If a movie file cannot be found at its relative or absolute path.
        """
        from . import _hdf5, _tiff  # noqa: F401  (register the file kinds)
        from .errors import FileFormatError

        if not isinstance(data, dict) or "kind" not in data:
            raise FileFormatError(
                f"a stored sequence must be a mapping with a 'kind', got {_brief(data)}"
            )
        kind = data["kind"]
        if not isinstance(kind, str) or kind not in _KINDS:
            raise FileFormatError(
                f"unknown sequence kind {_brief(kind)} in a stored dataset; known kinds: "
                f"{sorted(_KINDS)}"
            )
        sd = Path(savedir) if savedir is not None else None
        try:
            seq = _KINDS[kind]._from_dict(data, sd)
        except KeyError as err:
            raise FileFormatError(
                f"stored sequence of kind {kind!r} lacks the field {_brief(err.args[0])}"
            ) from None
        except RecursionError:
            raise FileFormatError(
                f"stored sequence of kind {kind!r} is nested too deeply"
            ) from None
        except (TypeError, IndexError, AttributeError, OverflowError) as err:
            # a field of the wrong type or size (the file is not what we wrote)
            raise FileFormatError(
                f"stored sequence of kind {kind!r} is broken: {type(err).__name__}: "
                f"{str(err)[:300]}"
            ) from None
        check_frame_size(seq, f"the stored sequence of kind {kind!r}")
        return seq

    # -- derived sequences --------------------------------------------------------------
    def mask(self, masks: list[tuple]) -> Sequence:
        """Return a view in which masked values are NaN.

        Parameters
        ----------
        masks : list of tuple
            Each element is ``(frames, zyx_mask, channels)`` or
            ``(frames, planes, yx_mask, channels)``.  ``frames``, ``planes`` and
            ``channels`` are ``None`` (all), an integer or a list of integers; masks
            are boolean arrays of shape ``(z, y, x)`` or ``(y, x)``, or ``None``
            (everything).

        Returns
        -------
        Sequence
        """
        return _MaskedSequence(self, masks)

    def apply_displacements(
        self, displacements: Any, frame_shape: tuple[int, int, int] | None = None
    ) -> Sequence:
        """Return a motion-corrected view that places frames at integer offsets.

        Parameters
        ----------
        displacements : array-like
            Non-negative integer offsets: ``(T, Z, Y, 2)`` (dy, dx per row),
            ``(T, Z, Y, 3)``, ``(T, Z, 2|3)`` (per plane) or ``(T, 3)`` (per volume).
        frame_shape : tuple of 3 ints, optional
            Output ``(z, y, x)``; default grows rows and columns by the largest
            displacement.

        Returns
        -------
        Sequence
        """
        return _MotionCorrectedSequence(self, displacements, frame_shape)

    def export(
        self,
        filenames: Any,
        fmt: str = "TIFF16",
        fill_gaps: bool = False,
        channel_names: list[str] | None = None,
        compression: str | None = None,
        scale_values: bool = False,
        interlace: bool = False,
    ) -> None:
        """Write the sequence to TIFF or HDF5 files.

        See :func:`napari_sima.core.export.export_sequence` for the parameters.
        """
        from .export import export_sequence

        export_sequence(
            self,
            filenames,
            fmt=fmt,
            fill_gaps=fill_gaps,
            channel_names=channel_names,
            compression=compression,
            scale_values=scale_values,
            interlace=interlace,
        )

    def lazy_channel(self, channel: int) -> LazyChannelArray:
        """Return a lazy ``(t, z, y, x)`` array-like of one channel (for napari).

        Parameters
        ----------
        channel : int
            Channel index.

        Returns
        -------
        LazyChannelArray
            Reads only the frames it is indexed with.
        """
        from .lazy import LazyChannelArray

        return LazyChannelArray(self, channel)


# ---------------------------------------------------------------------------------------
# Path helpers shared by the file-backed kinds
# ---------------------------------------------------------------------------------------
def path_to_dict(path: str | os.PathLike, savedir: str | os.PathLike | None) -> dict[str, str]:
    """Describe a file path as stored in a dataset (absolute and relative to ``savedir``)."""
    abspath = os.path.abspath(os.fspath(path))
    out = {"abspath": abspath}
    if savedir is not None:
        try:
            out["relpath"] = Path(os.path.relpath(abspath, os.path.abspath(savedir))).as_posix()
        except ValueError:  # different drives on Windows
            pass
    return out


def check_movie_file(path: str, kind: str) -> None:
    """Raise a clear error unless ``path`` is a non-empty regular file.

    Devices (``/dev/zero``), FIFOs and sockets are refused: reading them would block
    or never end.  Symbolic links are followed (to a regular file they are fine).

    Parameters
    ----------
    path : str
        The file.
    kind : str
        What the file should be (``'TIFF'``, ``'HDF5'``), for the messages.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ValueError
    """
    from .errors import FileFormatError

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {kind} file: {path!r}") from None
    except ValueError as err:  # e.g. an embedded NUL character
        raise FileFormatError(f"invalid {kind} file name {path!r}: {err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{path!r} is a folder, expected a {kind} file")
    if not stat.S_ISREG(info.st_mode):
        raise FileFormatError(
            f"{path!r} is not a regular file (a device, FIFO or socket), expected a {kind} file"
        )
    if info.st_size == 0:
        raise FileFormatError(f"{path!r} is empty (0 bytes), not a {kind} file")


#: Largest frame (``planes x rows x columns x channels`` values) a stored dataset may
#: describe; reading one frame of it as float64 would need 8 GB.
MAX_FRAME_ELEMENTS = 2**30


def check_frame_size(seq: Sequence, source: str) -> None:
    """Refuse a sequence whose frames are absurdly large (before any frame is read).

    Raises
    ------
    napari_sima.core.errors.ResourceLimitError
        If one frame has more than :data:`MAX_FRAME_ELEMENTS` values.
    """
    from .errors import ResourceLimitError

    n = 1
    for v in seq.frame_shape:
        n *= int(v)
    if n > MAX_FRAME_ELEMENTS:
        raise ResourceLimitError(
            f"{source}: frames of shape {tuple(seq.frame_shape)} (z, y, x, c) hold {n} values, "
            f"more than the {MAX_FRAME_ELEMENTS} allowed; refusing to open it"
        )


def resolve_stored_path(data: dict[str, Any], savedir: Path | None, what: str = "movie") -> str:
    """Find a stored file: first relative to the dataset folder, then at its absolute path.

    Only paths are read from ``data``: the file found is opened for reading by the
    caller (after :func:`check_movie_file`), never written.  A candidate that exists
    but is not a regular file (a device such as ``/dev/zero``, a FIFO, a folder) is
    refused rather than opened.

    Raises
    ------
    FileNotFoundError
        Naming every place that was tried.
    ValueError
        If a stored path is not text, or names something that is not a regular file.
    """
    from .errors import FileFormatError

    for key in ("relpath", "abspath", "path"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or "\0" in value):
            raise FileFormatError(
                f"the stored {key!r} of a {what} should be a file path, got {_brief(value)}"
            )
    candidates: list[str] = []
    if savedir is not None and data.get("relpath"):
        rel = str(data["relpath"]).replace("\\", "/")
        candidates.append(os.path.normpath(os.path.join(savedir, rel)))
    if data.get("abspath"):
        candidates.append(str(data["abspath"]))
    if data.get("path"):
        candidates.append(str(data["path"]))
    for cand in candidates:
        if os.path.exists(cand):
            if os.path.isdir(cand):
                raise IsADirectoryError(f"the {what} {cand!r} is a folder, expected a file")
            if not os.path.isfile(cand):
                raise FileFormatError(
                    f"the {what} {cand!r} is not a regular file (a device, FIFO or socket); "
                    f"refusing to read it"
                )
            return cand
    where = f" of the dataset {savedir}" if savedir is not None else ""
    raise FileNotFoundError(
        f"the {what}{where} was not found; looked for it at: "
        + ", ".join(repr(c) for c in candidates)
        + ". Move the file back, or keep the dataset folder and its movies together."
    )


# ---------------------------------------------------------------------------------------
# In-memory arrays
# ---------------------------------------------------------------------------------------
@_register
class _NdarraySequence(Sequence):
    """A sequence backed by a NumPy array (or a ``.npy`` file, memory-mapped)."""

    kind = "ndarray"

    def __init__(
        self,
        array: Any = None,
        dim_order: str | None = None,
        *,
        path: str | os.PathLike | None = None,
    ) -> None:
        if (array is None) == (path is None):
            raise ValueError("give exactly one of 'array' or 'path' for an 'ndarray' sequence")
        self._path: str | None = None
        if path is not None:
            self._path = os.path.abspath(os.fspath(path))
            if not os.path.exists(self._path):
                raise FileNotFoundError(f"no such .npy file: {self._path!r}")
            try:
                array = np.load(self._path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{self._path!r} is not a readable .npy array: {err}") from None
        arr = np.asarray(array) if not isinstance(array, np.ndarray) else array
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"an 'ndarray' sequence needs numeric data, got dtype {arr.dtype}"
            )
        source = f"the array of shape {arr.shape}" if self._path is None else repr(self._path)
        if dim_order is None:
            if arr.ndim != 5:
                raise ValueError(
                    f"{source} has {arr.ndim} dimensions; an 'ndarray' sequence needs a 5-D "
                    f"(t, z, y, x, c) array, or a dim_order such as 'tyx'"
                )
            dim_order = "tzyxc"
        self._dim_order = check_dim_order(dim_order, arr.ndim, source)
        self._array = arr
        self._shape = shape_5d(arr.shape, self._dim_order)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def array(self) -> np.ndarray:
        """The wrapped array in its stored axis order."""
        return self._array

    @property
    def files(self) -> list[str]:
        return [self._path] if self._path else []

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        arr = self._array

        def getter(sel: tuple) -> np.ndarray:
            return np.array(arr[sel])

        return read_mapped(getter, self._dim_order, times, region)

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        if self._path is None:
            if savedir is None:
                raise ValueError(
                    "an in-memory array sequence can only be described inside a dataset "
                    "folder (give savedir) so that the array is written next to it"
                )
            from .storage import atomic_save_npy

            import uuid

            target = os.path.join(os.fspath(savedir), f"seq_{uuid.uuid4().hex}.npy")
            atomic_save_npy(target, np.asarray(self._array))
            self._path = os.path.abspath(target)
        return {"kind": self.kind, "dim_order": self._dim_order, **path_to_dict(self._path, savedir)}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        path = resolve_stored_path(data, savedir, "array file")
        return cls(path=path, dim_order=data.get("dim_order"))


# ---------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------
class _DerivedSequence(Sequence):
    """A sequence computed from one base sequence (files and handles are the base's)."""

    _base: Sequence

    @property
    def base(self) -> Sequence:
        """The sequence this one reads from."""
        return self._base

    @property
    def files(self) -> list[str]:
        return self._base.files

    def close(self) -> None:
        self._base.close()


@_register
class _IndexedSequence(_DerivedSequence):
    """A lazy view selecting frames and a sub-region of another sequence."""

    kind = "indexed"

    def __init__(self, base: Sequence, indices: Any) -> None:
        if not isinstance(indices, tuple):
            indices = (indices,)
        if len(indices) > 5:
            raise IndexError(f"a sequence has 5 axes (t, z, y, x, c); got {len(indices)} indices")
        if any(i is Ellipsis for i in indices):
            raise IndexError("Ellipsis is not supported when slicing a sequence")
        indices = indices + (slice(None),) * (5 - len(indices))
        shape = base.shape
        times = ix.normalize_time_index(indices[0], shape[0])
        region = tuple(
            ix.normalize_axis_index(i, n, a) for i, n, a in zip(indices[1:], shape[1:], "zyxc")
        )
        # collapse views of views so reads go straight to the stored data
        if isinstance(base, _IndexedSequence):
            times = ix.compose_time(base._times, times)
            region = ix.compose_region(base._region, region)
            base = base._base
        self._base = base
        self._times: TimeIndex = times
        self._region: Region = region  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (len(self._times),) + ix.region_shape(self._region)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        return self._base._read(
            ix.compose_time(self._times, times), ix.compose_region(self._region, region)
        )

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base": self._base.to_dict(savedir),
            "times": ix.time_to_json(self._times),
            "region": ix.region_to_json(self._region),
        }

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        base = Sequence.from_dict(data["base"], savedir)
        view = cls.__new__(cls)
        view._base = base
        view._times = ix.time_from_json(data["times"])
        view._region = ix.region_from_json(data["region"])
        n = len(base)

        def within(r: range | np.ndarray, size: int) -> bool:
            if isinstance(r, range):  # never materialise a range read from a file
                return not r or (min(r[0], r[-1]) >= 0 and max(r[0], r[-1]) < size)
            return r.ndim == 1 and (not r.size or (r.min() >= 0 and r.max() < size))

        if not within(view._times, n):
            raise ValueError(f"stored view selects frames outside its base of {n} frames")
        for r, size, axis in zip(view._region, base.frame_shape, "zyxc"):
            if not within(r, size):
                raise ValueError(f"stored view selects {axis} outside its base of size {size}")
        return view


@_register
class _JoinedSequence(Sequence):
    """Sequences of equal ``(t, z, y, x)`` shape joined along the channel axis."""

    kind = "joined"

    def __init__(self, sequences: list[Sequence]) -> None:
        if not sequences:
            raise ValueError("Sequence.join needs at least one sequence")
        for s in sequences:
            if not isinstance(s, Sequence):
                raise TypeError(f"Sequence.join takes Sequence objects, got {type(s).__name__}")
        ref = sequences[0].shape[:4]
        for s in sequences[1:]:
            if s.shape[:4] != ref:
                raise ValueError(
                    f"sequences to join must share their (t, z, y, x) shape; got {ref} and "
                    f"{s.shape[:4]}"
                )
        self._sequences = list(sequences)
        self._offsets = np.cumsum([0] + [s.shape[4] for s in sequences])

    @property
    def sequences(self) -> list[Sequence]:
        """The joined sequences."""
        return list(self._sequences)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._sequences[0].shape[:4] + (int(self._offsets[-1]),)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.result_type(*[s.dtype for s in self._sequences])

    @property
    def files(self) -> list[str]:
        return [f for s in self._sequences for f in s.files]

    def close(self) -> None:
        for s in self._sequences:
            s.close()

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        zr, yr, xr, cr = region
        n = len(times)
        out = np.empty((n, len(zr), len(yr), len(xr), len(cr)), dtype=self.dtype)
        channels = np.asarray(cr, dtype=np.int64)
        owner = np.searchsorted(self._offsets, channels, side="right") - 1
        # read each contributing sequence once, with the channels it owns
        for k, seq in enumerate(self._sequences):
            pos = np.flatnonzero(owner == k)
            if pos.size == 0:
                continue
            local = channels[pos] - self._offsets[k]
            lo, hi = int(local.min()), int(local.max())
            block = seq._read(times, (zr, yr, xr, range(lo, hi + 1)))
            out[..., pos] = block[..., local - lo]
        return out

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        return {"kind": self.kind, "sequences": [s.to_dict(savedir) for s in self._sequences]}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        return cls([Sequence.from_dict(d, savedir) for d in data["sequences"]])


def _as_index_list(value: Any, size: int, what: str) -> np.ndarray:
    """Return a boolean selector of length ``size`` from None / int / iterable of ints."""
    sel = np.zeros(size, dtype=bool)
    if value is None:
        sel[:] = True
        return sel
    if isinstance(value, (int, np.integer)):
        value = [value]
    idx = np.asarray(list(value), dtype=np.int64)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise ValueError(f"mask {what} {idx.tolist()} out of range for {size} {what}")
    sel[idx] = True
    return sel


@_register
class _MaskedSequence(_DerivedSequence):
    """A view in which selected values are NaN (``Sequence.mask``)."""

    kind = "masked"

    def __init__(self, base: Sequence, masks: list[tuple]) -> None:
        self._base = base
        self._raw_masks = list(masks)
        T, Z, Y, X, C = base.shape
        self._masks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for m in self._raw_masks:
            m = tuple(m)
            if len(m) == 3:
                frames, zyx, channels = m
                if zyx is None:
                    vol = np.ones((Z, Y, X), dtype=bool)
                else:
                    vol = np.asarray(zyx, dtype=bool)
                    if vol.shape != (Z, Y, X):
                        raise ValueError(
                            f"a 3-D mask must have shape {(Z, Y, X)} (z, y, x), got {vol.shape}"
                        )
            elif len(m) == 4:
                frames, planes, yx, channels = m
                plane_sel = _as_index_list(planes, Z, "planes")
                plane = np.ones((Y, X), bool) if yx is None else np.asarray(yx, dtype=bool)
                if plane.shape != (Y, X):
                    raise ValueError(f"a 2-D mask must have shape {(Y, X)} (y, x), got {plane.shape}")
                vol = plane_sel[:, None, None] & plane[None]
            else:
                raise ValueError(
                    "each mask is (frames, zyx_mask, channels) or (frames, planes, yx_mask, "
                    f"channels); got a tuple of length {len(m)}"
                )
            self._masks.append(
                (_as_index_list(frames, T, "frames"), vol, _as_index_list(channels, C, "channels"))
            )

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._base.shape

    @property
    def dtype(self) -> np.dtype:
        return np.result_type(self._base.dtype, np.float32)

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        data = self._base._read(times, region).astype(self.dtype, copy=False)
        if not data.flags.writeable:
            data = data.copy()
        t = ix.as_time_array(times)
        zs, ys, xs, cs = (ix.range_to_slice(r) for r in region)
        for frames, vol, channels in self._masks:
            rows = np.flatnonzero(frames[t])
            if rows.size == 0:
                continue
            v = vol[zs, ys, xs]
            cidx = np.flatnonzero(channels[cs])
            if cidx.size == 0 or not v.any():
                continue
            for r in rows:
                for c in cidx:
                    data[r, ..., c][v] = np.nan
        return data

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        masks = []
        for frames, vol, channels in self._masks:
            masks.append(
                {
                    "frames": np.flatnonzero(frames).tolist(),
                    "channels": np.flatnonzero(channels).tolist(),
                    "shape": list(vol.shape),
                    "zyx_true": np.flatnonzero(vol.ravel()).tolist(),
                }
            )
        return {"kind": self.kind, "base": self._base.to_dict(savedir), "masks": masks}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        base = Sequence.from_dict(data["base"], savedir)
        masks = []
        zyx = tuple(base.shape[1:4])
        for m in data["masks"]:
            shape = m["shape"]
            if not isinstance(shape, list) or [type(v) for v in shape] != [int] * 3 or (
                tuple(shape) != zyx
            ):
                # checked before allocating: the mask must cover the base's (z, y, x)
                raise ValueError(f"a stored mask of shape {_brief(shape)} does not fit a "
                                 f"sequence of (z, y, x) shape {zyx}")
            true = np.asarray(m["zyx_true"], dtype=np.int64)
            size = zyx[0] * zyx[1] * zyx[2]
            if true.ndim != 1 or (true.size and (true.min() < 0 or true.max() >= size)):
                raise ValueError(f"a stored mask names pixels outside its {zyx} volume")
            vol = np.zeros(size, dtype=bool)
            vol[true] = True
            masks.append((m["frames"], vol.reshape(zyx), m["channels"]))
        return cls(base, masks)


@_register
class _MotionCorrectedSequence(_DerivedSequence):
    """Frames placed at non-negative integer offsets (``Sequence.apply_displacements``).

    Pixels written several times are averaged; pixels never written are NaN.
    """

    kind = "motion_corrected"

    def __init__(
        self,
        base: Sequence,
        displacements: Any,
        extent: tuple[int, int, int] | None = None,
    ) -> None:
        disp = np.asarray(displacements)
        if disp.size and np.any(disp < 0):
            raise ValueError("All displacements must be non-negative")
        disp = disp.astype(np.int64)
        T, Z, Y, X, C = base.shape
        if disp.ndim == 4 and disp.shape[:3] == (T, Z, Y) and disp.shape[3] in (2, 3):
            self._mode = "rows"
        elif disp.ndim == 3 and disp.shape[:2] == (T, Z) and disp.shape[2] in (2, 3):
            self._mode = "planes"
        elif disp.ndim == 2 and disp.shape == (T, 3):
            self._mode = "volume"
        else:
            raise ValueError(
                f"displacements of shape {disp.shape} do not fit a sequence of shape "
                f"{base.shape}; expected (T, Z, Y, 2|3), (T, Z, 2|3) or (T, 3) with T={T}, "
                f"Z={Z}, Y={Y}"
            )
        if extent is None:
            dy = int(disp[..., -2].max()) if disp.size else 0
            dx = int(disp[..., -1].max()) if disp.size else 0
            dz = int(disp[..., 0].max()) if (disp.size and disp.shape[-1] == 3) else 0
            extent = (Z + dz, Y + dy, X + dx)
        self._extent = tuple(int(e) for e in extent)
        if len(self._extent) != 3:
            raise ValueError(f"frame_shape/extent must be (z, y, x), got {extent}")
        self._base = base
        self._disp = disp

    @property
    def displacements(self) -> np.ndarray:
        """The integer displacements."""
        return self._disp

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (len(self._base),) + self._extent + (self._base.shape[4],)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def _place(self, frame: np.ndarray, disp: np.ndarray) -> np.ndarray:
        Zo, Yo, Xo = self._extent
        Z, Y, X, C = frame.shape
        total = np.zeros((Zo, Yo, Xo, C))
        count = np.zeros((Zo, Yo, Xo, 1))
        if self._mode == "rows":
            has_z = disp.shape[-1] == 3
            for p in range(Z):
                d = disp[p]
                for i in range(Y):
                    dz = int(d[i, 0]) if has_z else 0
                    dy, dx = int(d[i, -2]), int(d[i, -1])
                    zo, yo = p + dz, i + dy
                    if zo >= Zo or yo >= Yo:
                        continue
                    w = min(X, Xo - dx)
                    if w <= 0:
                        continue
                    total[zo, yo, dx : dx + w] += frame[p, i, :w]
                    count[zo, yo, dx : dx + w] += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                return total / count
        out = np.full((Zo, Yo, Xo, C), np.nan)
        if self._mode == "planes":
            has_z = disp.shape[-1] == 3
            for p in range(Z):
                dz = int(disp[p, 0]) if has_z else 0
                dy, dx = int(disp[p, -2]), int(disp[p, -1])
                zo = p + dz
                if zo >= Zo:
                    continue
                h, w = min(Y, Yo - dy), min(X, Xo - dx)
                if h > 0 and w > 0:
                    out[zo, dy : dy + h, dx : dx + w] = frame[p, :h, :w]
            return out
        dz, dy, dx = (int(v) for v in disp)
        d, h, w = min(Z, Zo - dz), min(Y, Yo - dy), min(X, Xo - dx)
        if d > 0 and h > 0 and w > 0:
            out[dz : dz + d, dy : dy + h, dx : dx + w] = frame[:d, :h, :w]
        return out

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        zr, yr, xr, cr = region
        frames = self._base._read(times, (*ix.full_region(self._base.frame_shape)[:3], cr))
        t = ix.as_time_array(times)
        zs, ys, xs = (ix.range_to_slice(r) for r in (zr, yr, xr))
        out = np.empty((len(t), len(zr), len(yr), len(xr), len(cr)))
        for k in range(len(t)):
            out[k] = self._place(frames[k].astype(np.float64), self._disp[t[k]])[zs, ys, xs]
        return out

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        if savedir is None:
            raise ValueError("a motion-corrected sequence can only be stored in a dataset folder")
        import hashlib

        from .storage import atomic_save_npy

        # named by content (hashed once: the displacements never change), so saving the
        # dataset again reuses the file
        name = getattr(self, "_disp_file", None)
        if name is None:
            digest = hashlib.sha256(repr(self._disp.shape).encode())
            digest.update(memoryview(np.ascontiguousarray(self._disp, dtype=np.int32)).cast("B"))
            name = self._disp_file = f"displacements_{digest.hexdigest()[:32]}.npy"
        path = os.path.join(os.fspath(savedir), name)
        if not os.path.isfile(path):
            atomic_save_npy(path, self._disp.astype(np.int32))
        return {
            "kind": self.kind,
            "base": self._base.to_dict(savedir),
            "displacements_file": name,
            "extent": list(self._extent),
        }

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        base = Sequence.from_dict(data["base"], savedir)
        if savedir is None:
            raise ValueError("stored displacements need the dataset folder")
        stored = data["displacements_file"]
        if not isinstance(stored, str):
            raise ValueError(f"the stored displacements file should be a name, got "
                             f"{_brief(stored)}")
        # only a file inside the dataset folder, and only a regular one
        path = os.path.join(savedir, os.path.basename(stored))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"the displacements file {path!r} of the dataset {str(savedir)!r} is missing "
                f"(or not a regular file)"
            )
        try:  # memory-mapped: a header claiming more data than the file holds is refused
            disp = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path!r} is not a readable .npy array: {err}") from None
        if disp.dtype.kind not in "iu" or not 1 <= disp.ndim <= 4:
            raise ValueError(f"{path!r} should hold integer displacements, got dtype "
                             f"{disp.dtype} and shape {disp.shape}")
        extent = data["extent"]
        if not isinstance(extent, list) or [type(v) for v in extent] != [int] * 3 or min(
            extent
        ) < 1:
            raise ValueError(f"the stored extent {_brief(extent)} should be 3 positive "
                             f"integers (z, y, x)")
        return cls(base, np.array(disp), tuple(extent))
