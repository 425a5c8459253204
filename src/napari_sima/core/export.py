"""Export of frames and time projections to TIFF and HDF5 files (SIMA compatible).

Everything here streams: a movie is read a block of frames at a time (a few frames,
bounded in bytes), so exporting never loads a whole sequence into memory.  Every
output file is first written under a temporary name in its final folder and renamed
into place only when the whole export succeeded, so a failed or interrupted export
never leaves a half-written file under the requested name (an existing file of that
name is left untouched).

Conventions follow SIMA 1.3.2 (see ``docs/sima-behaviour.md`` sections 1.8, 1.9 and
3.7):

* TIFF pixel values are converted with a plain NumPy cast (``astype('uint16')`` or
  ``astype('uint8')``): fractions are truncated and values outside ``[0, 2**bits)``
  wrap around (on x86-64; e.g. ``300.0`` becomes ``44`` as ``uint8``) exactly as in
  SIMA.  A warning says how many values were out of range; use
  ``scale_values=True`` to stretch each channel to the full range instead.
* Unobserved pixels (NaN) are written as 0 in TIFF files (the result of casting NaN
  to an integer is platform dependent, so NaN is replaced by 0 before the cast).
  HDF5 exports are ``float32`` and keep NaN.

Examples
--------
>>> import numpy as np, tempfile, os, tifffile
>>> from napari_sima.core import Sequence
>>> seq = Sequence.create('ndarray', np.arange(24.0).reshape(3, 1, 2, 4, 1))
>>> folder = tempfile.mkdtemp()
>>> seq.export([[os.path.join(folder, 'movie.tif')]], fmt='TIFF16')
>>> tifffile.imread(os.path.join(folder, 'movie.tif')).shape
(3, 2, 4)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import warnings
from collections.abc import Iterable, Iterator
from itertools import tee
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import ImagingDataset
    from .sequence import Sequence

__all__ = ["export_averages", "export_frames", "export_sequence", "fill_gaps"]

#: Output formats accepted by the frame and projection exports.
FORMATS = ("TIFF8", "TIFF16", "HDF5")
#: HDF5 compression filters accepted by :func:`export_sequence`.
COMPRESSIONS = ("gzip", "lzf", "szip")
#: Projection names accepted by :func:`export_averages` and the dataset attribute used.
PROJECTIONS = {"average": "time_averages", "std": "time_std", "kurtosis": "time_kurtosis"}

#: Upper bound, in bytes of float64 data, of the block of frames processed at once.
BLOCK_BYTES = 32 * 2**20
#: Never read more frames than this at once, however small they are.
MAX_BLOCK_FRAMES = 64

_TIFF_BITS = {"TIFF8": 8, "TIFF16": 16}
_HDF5_BITS = 32  # SIMA scales HDF5 (float32) exports to 2**32 - 1
_BIGTIFF_LIMIT = 2**32 - 2**25  # leave room for the page directories


# ---------------------------------------------------------------------------------------
# Gap filling
# ---------------------------------------------------------------------------------------
def _warn(message: str) -> None:
    """Warn, attributing the warning to the first caller outside this package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    level, frame = 2, sys._getframe(1)  # level 2 is our caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _is_sequence(obj: Any) -> bool:
    return callable(getattr(obj, "iter_blocks", None)) and hasattr(obj, "shape")


def _block_frames(frame_shape: tuple[int, ...]) -> int:
    """Frames per block so that a float64 block stays under :data:`BLOCK_BYTES`."""
    frame_bytes = max(1, int(np.prod(frame_shape, dtype=np.int64)) * 8)
    return int(max(1, min(MAX_BLOCK_FRAMES, BLOCK_BYTES // frame_bytes)))


def _first_observations(frames: Iterable[np.ndarray]) -> np.ndarray | None:
    """Pass 1 of gap filling: each pixel's earliest finite value (NaN if never seen).

    Stops reading as soon as every pixel has been observed.
    """
    first: np.ndarray | None = None
    missing: np.ndarray | None = None
    for frame in frames:
        frame = np.asarray(frame, dtype=float)
        if first is None:
            first = np.array(frame, dtype=float, copy=True)
            missing = np.isnan(first)
        else:
            first[missing] = frame[missing]
            missing = np.isnan(first)
        if not missing.any():
            break
    return first


def _first_observations_seq(seq: Sequence, block_frames: int) -> np.ndarray | None:
    first: np.ndarray | None = None
    missing: np.ndarray | None = None
    for block in seq.iter_blocks(block_frames, dtype=float):
        for frame in block:
            if first is None:
                first = np.array(frame, dtype=float, copy=True)
                missing = np.isnan(first)
            else:
                first[missing] = frame[missing]
                missing = np.isnan(first)
            if not missing.any():
                return first
    return first


class _GapFiller:
    """Pass 2 of gap filling: forward fill, falling back to the first observation."""

    def __init__(self, first: np.ndarray) -> None:
        self._first = first
        self._recent = np.full(first.shape, np.nan)

    def frame(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, dtype=float)
        np.copyto(self._recent, frame, where=~np.isnan(frame))
        return np.where(np.isnan(self._recent), self._first, self._recent)

    def block(self, block: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype=float)
        for i, frame in enumerate(block):
            np.copyto(self._recent, frame, where=~np.isnan(frame))
            out[i] = self._recent
        missing = np.isnan(out)
        if missing.any():
            np.copyto(out, np.broadcast_to(self._first, out.shape), where=missing)
        return out


def _filled_blocks(seq: Sequence, block_frames: int) -> Iterator[np.ndarray]:
    """Gap-filled float64 blocks ``(n, z, y, x, c)`` of ``seq`` (two streaming passes)."""
    if np.dtype(seq.dtype).kind in "biu":  # integers cannot hold NaN: nothing to fill
        yield from seq.iter_blocks(block_frames, dtype=float)
        return
    first = _first_observations_seq(seq, block_frames)
    if first is None:  # no frames
        return
    filler = _GapFiller(first)
    for block in seq.iter_blocks(block_frames, dtype=float):
        yield filler.block(block)


def fill_gaps(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield frames in which unobserved (NaN) pixels are filled in.

    Each NaN pixel takes the most recent earlier finite value of that pixel; a pixel
    not observed yet takes its first future observation; a pixel never observed stays
    NaN (SIMA's ``_fill_gaps``, behaviour spec section 1.9).

    Parameters
    ----------
    frames : Sequence or iterable of array_like
        The frames, e.g. a :class:`~napari_sima.core.Sequence` (frames ``(z, y, x, c)``)
        or a list of arrays of equal shape.  The source is read twice: a first pass
        finds every pixel's earliest observation (stopping as soon as all pixels have
        been seen) and a second pass yields the filled frames.  A ``Sequence`` or any
        re-iterable container is streamed, holding only a few frames at a time.  A
        one-shot iterator (e.g. a generator) also works, but the frames read by the
        first pass are buffered until the second pass reaches them.

    Yields
    ------
    numpy.ndarray
        The filled frames, ``float64``, one new array per frame.

    Examples
    --------
    >>> import numpy as np
    >>> frames = [np.array([np.nan, 1.0, np.nan]), np.array([2.0, np.nan, np.nan]),
    ...           np.array([np.nan, 3.0, np.nan])]
    >>> [f.tolist() for f in fill_gaps(frames)]
    [[2.0, 1.0, nan], [2.0, 1.0, nan], [2.0, 3.0, nan]]
    """
    if _is_sequence(frames):
        for block in _filled_blocks(frames, _block_frames(frames.shape[1:])):
            yield from block
        return
    if iter(frames) is frames:  # a one-shot iterator: read it twice through a buffer
        first_pass, second_pass = tee(frames)
    else:
        first_pass, second_pass = frames, frames
    first = _first_observations(first_pass)
    if first is None:
        return
    filler = _GapFiller(first)
    for frame in second_pass:
        yield filler.frame(frame)


# ---------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------
def _check_fmt(fmt: Any) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}; expected one of {', '.join(map(repr, FORMATS))}"
        )
    return fmt


def _check_compression(compression: Any) -> str | None:
    if compression is None:
        return None
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise ValueError(
            f"unknown HDF5 compression {compression!r}; expected None or one of "
            f"{', '.join(map(repr, COMPRESSIONS))}"
        )
    import h5py

    codes = {
        "gzip": h5py.h5z.FILTER_DEFLATE,
        "lzf": h5py.h5z.FILTER_LZF,
        "szip": h5py.h5z.FILTER_SZIP,
    }
    if not h5py.h5z.filter_avail(codes[compression]):
        raise ValueError(
            f"HDF5 compression {compression!r} is not available in this HDF5 library; "
            "use 'gzip' or 'lzf'"
        )
    return compression


def _as_path(value: Any, where: str) -> str:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return os.path.abspath(path)
    raise TypeError(f"{where} must be a file name (str or path), got {value!r}")


def _check_leaves(value: Any, where: str = "filenames") -> None:
    """Every leaf of a nested list of file names must be a str or a path."""
    if isinstance(value, (str, os.PathLike)):
        return
    if isinstance(value, (list, tuple, np.ndarray)):
        for i, item in enumerate(value):
            _check_leaves(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} must be a file name (str or path), got {value!r:.200}")


def _filename_array(filenames: Any, expected: str) -> np.ndarray:
    """``np.array(filenames)`` with a clear error for ragged nesting."""
    if isinstance(filenames, (str, os.PathLike)):
        return np.array(os.fspath(filenames))
    _check_leaves(filenames)
    try:
        return np.array(filenames)
    except ValueError:
        raise TypeError(
            f"filenames must be {expected}; got a ragged nesting (lists of unequal "
            f"length): {filenames!r:.300}"
        ) from None


def _describe(arr: np.ndarray) -> str:
    if arr.ndim == 0:
        return "a single name (nesting depth 0)"
    return f"nesting depth {arr.ndim} (shape {arr.shape})"


def _nested_filenames(filenames: Any, ndim: int, expected: str) -> np.ndarray:
    """Validate the nesting depth of ``filenames``; return an object array of abs paths."""
    arr = _filename_array(filenames, expected)
    if arr.ndim != ndim:
        raise TypeError(
            f"filenames must be {expected} (nesting depth {ndim}); got {_describe(arr)}: "
            f"{filenames!r:.300}"
        )
    out = np.empty(arr.shape, dtype=object)
    for index in np.ndindex(arr.shape):
        where = "filenames" + "".join(f"[{i}]" for i in index)
        out[index] = _as_path(arr[index], where)
    return out


def _check_targets(paths: list[str], sources: list[str]) -> None:
    """Refuse duplicate targets, folders and overwriting the files being read."""
    seen: set[str] = set()
    for p in paths:
        key = os.path.normcase(os.path.realpath(p))
        if key in seen:
            raise ValueError(f"the output file {p!r} is named more than once")
        seen.add(key)
        if os.path.isdir(p):
            raise IsADirectoryError(f"the output file {p!r} is an existing folder")
    source_keys = {os.path.normcase(os.path.realpath(s)) for s in sources}
    for p in paths:
        if os.path.normcase(os.path.realpath(p)) in source_keys:
            raise ValueError(
                f"the output file {p!r} is one of the files the data are read from; "
                "choose another name"
            )


def _seq_files(seq: Any) -> list[str]:
    try:
        return list(seq.files)
    except Exception:  # noqa: BLE001 - a duck-typed source may not know its files
        return []


def _check_channel_names(channel_names: Any, num_channels: int) -> list[str]:
    if channel_names is None:
        return [str(i) for i in range(num_channels)]
    if isinstance(channel_names, (str, bytes)):
        raise TypeError(f"channel_names must be a list of names, got {channel_names!r}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in channel_names]
    if len(names) != num_channels:
        raise ValueError(
            f"got {len(names)} channel names {names!r} for {num_channels} channel(s)"
        )
    return names


# ---------------------------------------------------------------------------------------
# Atomic output files
# ---------------------------------------------------------------------------------------
def _fsync_path(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp(path: str) -> str:
    """Create an empty temporary file next to ``path`` (normal permissions)."""
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - astronomically unlikely
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def _atomic_outputs(paths: list[str]) -> Iterator[list[str]]:
    """Yield temporary paths; on success fsync them and rename them over ``paths``.

    On an exception every temporary file is removed and no final file is touched.
    Parent folders are created.
    """
    for p in paths:
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    temps: list[str] = []
    committed: set[str] = set()
    try:
        for p in paths:
            temps.append(_new_temp(p))
        yield list(temps)
        for tmp in temps:
            _fsync_path(tmp)
        for tmp, p in zip(temps, paths, strict=True):
            os.replace(tmp, p)
            committed.add(tmp)
        for folder in {os.path.dirname(p) or "." for p in paths}:
            _fsync_path(folder)
    except BaseException:
        for tmp in temps:
            if tmp not in committed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------
# Value conversion
# ---------------------------------------------------------------------------------------
def _channel_maxima(seq: Sequence, block_frames: int) -> np.ndarray:
    """Per-channel maximum over all frames, NaN ignored (a streaming pass)."""
    num_channels = seq.shape[4]
    result = np.full(num_channels, np.nan)
    for block in seq.iter_blocks(block_frames):
        flat = np.asarray(block).reshape(-1, num_channels)
        if flat.shape[0]:
            result = np.fmax(result, np.fmax.reduce(flat, axis=0).astype(float))
    return result


def _scalable(maximum: float, what: str) -> bool:
    """Whether values can be scaled by ``maximum``; warn when they cannot."""
    if not np.isfinite(maximum) or maximum <= 0:
        _warn(
            f"{what}: the maximum value is {maximum!r}, so the values cannot be scaled to "
            f"the output range; they are written unscaled"
        )
        return False
    return True


def _scale_factor(maximum: float, full_scale: float, what: str) -> float:
    """``full_scale / maximum``, or 1 (with a warning) when it cannot be formed."""
    return float(full_scale / maximum) if _scalable(maximum, what) else 1.0


class _Caster:
    """Plain NumPy cast to an unsigned type, counting the values that wrap."""

    def __init__(self, bits: int) -> None:
        self.dtype = np.dtype(f"uint{bits}")
        self.limit = float(2**bits)
        self.out_of_range = 0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.array(values, dtype=float, copy=True)
        values[np.isnan(values)] = 0.0
        self.out_of_range += int(
            np.count_nonzero((values <= -1.0) | (values >= self.limit) | np.isinf(values))
        )
        with np.errstate(invalid="ignore", over="ignore"):
            return values.astype(self.dtype)

    def warn(self, where: str) -> None:
        if self.out_of_range:
            _warn(
                f"{self.out_of_range} value(s) written to {where} were outside the range of "
                f"{self.dtype} [0, {int(self.limit) - 1}] and wrapped around as in SIMA's "
                "plain cast; pass scale_values=True to rescale instead"
            )


# ---------------------------------------------------------------------------------------
# Sequence export
# ---------------------------------------------------------------------------------------
def export_sequence(
    seq: Sequence,
    filenames: Any,
    fmt: str = "TIFF16",
    fill_gaps: bool = False,
    channel_names: list[str] | None = None,
    compression: str | None = None,
    scale_values: bool = False,
    interlace: bool = False,
) -> None:
    """Write a sequence's frames to TIFF or HDF5 files (``Sequence.export``).

    Parameters
    ----------
    seq : Sequence
        The movie, ``(t, z, y, x, c)``.
    filenames : str or nested list of str
        * ``'TIFF8'``/``'TIFF16'``: ``filenames[plane][channel]``, one multi-page TIFF
          per plane and channel with one page per frame; with ``interlace=True``
          ``filenames[channel]``, one file per channel whose pages are ordered frame
          by frame, planes within a frame.
        * ``'HDF5'``: one file name.
    fmt : {'TIFF16', 'TIFF8', 'HDF5'}
        Output format.  TIFF pixels are ``uint16`` or ``uint8``; HDF5 writes a
        ``float32`` dataset ``imaging`` of the sequence's shape, chunked one image
        ``(1, 1, y, x, 1)`` at a time, with dimension labels ``t, z, y, x, c`` and
        an attribute ``channel_names`` (list of byte strings).
    fill_gaps : bool
        Fill unobserved (NaN) pixels as :func:`fill_gaps` does.
    channel_names : list of str, optional
        HDF5 only: names stored in the ``channel_names`` attribute (default
        ``'0', '1', ...``).
    compression : {None, 'gzip', 'lzf', 'szip'}
        HDF5 compression.  TIFF exports are uncompressed (as in SIMA); a compression
        given with a TIFF format is ignored with a warning.
    scale_values : bool
        Multiply every channel by ``(2**bits - 1) / m``, ``m`` being the channel's
        maximum over all frames (NaN ignored) and ``bits`` 8, 16, or 32 for HDF5.
        A channel whose maximum is not positive is written unscaled (with a warning).
    interlace : bool
        TIFF only: one file per channel holding every plane (see ``filenames``).

    Raises
    ------
    ValueError
        For an unknown ``fmt`` or ``compression``, a number of file names that does
        not match the planes/channels, duplicate file names, an output file that is
        one of the sequence's own files, or channel names of the wrong length.
    TypeError
        For ``filenames`` nested differently than ``fmt``/``interlace`` require.
    OSError
        When reading the movie or writing a file fails; no file is then left under
        any of the requested names.

    Notes
    -----
    TIFF values are converted with a plain NumPy cast as SIMA does: fractions are
    truncated and out-of-range values wrap around (a warning reports how many); NaN
    is written as 0.  Files larger than 4 GiB are written as BigTIFF.
    """
    fmt = _check_fmt(fmt)
    T, Z, Y, X, C = (int(n) for n in seq.shape)
    if fmt == "HDF5":
        compression = _check_compression(compression)
        if not isinstance(filenames, (str, os.PathLike)):
            raise TypeError(
                f"HDF5 export takes a single file name (str or path); got {filenames!r:.300}"
            )
        path = _as_path(filenames, "filenames")
        names = _check_channel_names(channel_names, C)
        _check_targets([path], _seq_files(seq))
        _export_hdf5(seq, path, names, compression, fill_gaps, scale_values)
        return

    if compression is not None:
        _check_compression(compression)
        _warn(
            f"compression={compression!r} applies to HDF5 only; the TIFF files are written "
            "uncompressed"
        )
    if channel_names is not None:
        _check_channel_names(channel_names, C)
    if interlace:
        arr = _nested_filenames(
            filenames, 1, f"a list of one name per channel, filenames[channel] ({C} names)"
        )
        if arr.shape[0] != C:
            raise ValueError(
                f"interlaced TIFF export needs one file name per channel: the sequence has "
                f"{C} channel(s) but {arr.shape[0]} name(s) were given: {arr.tolist()!r}"
            )
        paths = list(arr)
    else:
        arr = _nested_filenames(
            filenames,
            2,
            f"nested lists filenames[plane][channel] ({Z} list(s) of {C} name(s))",
        )
        if arr.shape != (Z, C):
            raise ValueError(
                f"TIFF export needs filenames[plane][channel] for {Z} plane(s) and {C} "
                f"channel(s), i.e. {Z} list(s) of {C} name(s); got {arr.shape[0]} list(s) "
                f"of {arr.shape[1]} name(s)"
            )
        paths = [arr[z, c] for z in range(Z) for c in range(C)]
    _check_targets(paths, _seq_files(seq))
    _export_tiff(seq, paths, _TIFF_BITS[fmt], fill_gaps, scale_values, interlace)


def _prepared_blocks(
    seq: Sequence, fill: bool, scale: bool, bits: int
) -> Iterator[np.ndarray]:
    """Float64 blocks, gap-filled and scaled as requested."""
    block_frames = _block_frames(seq.shape[1:])
    factors = None
    if scale:
        maxima = _channel_maxima(seq, block_frames)
        full = float(2**bits - 1)
        factors = np.array(
            [_scale_factor(m, full, f"channel {c}") for c, m in enumerate(maxima)]
        )
    blocks = (
        _filled_blocks(seq, block_frames) if fill else seq.iter_blocks(block_frames, dtype=float)
    )
    for block in blocks:
        if factors is not None:
            block = block * factors
        yield block


def _export_tiff(
    seq: Sequence,
    paths: list[str],
    bits: int,
    fill: bool,
    scale: bool,
    interlace: bool,
) -> None:
    import tifffile

    T, Z, Y, X, C = (int(n) for n in seq.shape)
    caster = _Caster(bits)
    pages_per_file = T * Z if interlace else T
    file_bytes = pages_per_file * Y * X * caster.dtype.itemsize
    bigtiff = file_bytes + pages_per_file * 512 > _BIGTIFF_LIMIT
    with _atomic_outputs(paths) as temps, contextlib.ExitStack() as stack:
        writers = [stack.enter_context(tifffile.TiffWriter(t, bigtiff=bigtiff)) for t in temps]
        for block in _prepared_blocks(seq, fill, scale, bits):
            data = caster(block)  # (n, z, y, x, c)
            for frame in data:
                if interlace:
                    for c in range(C):
                        for z in range(Z):
                            writers[c].write(
                                np.ascontiguousarray(frame[z, :, :, c]),
                                contiguous=True,
                                photometric="minisblack",
                            )
                else:
                    for z in range(Z):
                        for c in range(C):
                            writers[z * C + c].write(
                                np.ascontiguousarray(frame[z, :, :, c]),
                                contiguous=True,
                                photometric="minisblack",
                            )
    caster.warn(paths[0] if len(paths) == 1 else f"{len(paths)} TIFF files")


def _export_hdf5(
    seq: Sequence,
    path: str,
    channel_names: list[str],
    compression: str | None,
    fill: bool,
    scale: bool,
) -> None:
    import h5py

    T, Z, Y, X, C = (int(n) for n in seq.shape)
    with _atomic_outputs([path]) as (tmp,), h5py.File(tmp, "w") as f:
        ds = f.create_dataset(
            "imaging",
            shape=(T, Z, Y, X, C),
            dtype="float32",
            chunks=(1, 1, Y, X, 1),
            compression=compression,
        )
        for i, label in enumerate("tzyxc"):
            ds.dims[i].label = label
        ds.attrs["channel_names"] = [np.bytes_(n) for n in channel_names]
        start = 0
        for block in _prepared_blocks(seq, fill, scale, _HDF5_BITS):
            stop = start + block.shape[0]
            ds[start:stop] = block.astype(np.float32)
            start = stop


# ---------------------------------------------------------------------------------------
# Dataset exports
# ---------------------------------------------------------------------------------------
def export_frames(
    dataset: ImagingDataset,
    filenames: Any,
    fmt: str = "TIFF16",
    fill_gaps: bool = True,
    scale_values: bool = False,
    compression: str | None = None,
    interlace: bool = False,
) -> None:
    """Write the frames of every sequence of a dataset (``ImagingDataset.export_frames``).

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset; its ``channel_names`` go into HDF5 files.
    filenames : nested list of str
        ``[sequence][plane][channel]`` for TIFF formats, ``[sequence][channel]`` for
        interlaced TIFF, ``[sequence]`` for HDF5.
    fmt : {'TIFF16', 'TIFF8', 'HDF5'}
        Output format (see :func:`export_sequence`).
    fill_gaps : bool
        Fill unobserved (NaN) pixels (default True, as SIMA).
    scale_values : bool
        Scale each channel of each sequence to the output range.
    compression : {None, 'gzip', 'lzf', 'szip'}
        HDF5 compression.
    interlace : bool
        TIFF only: one file per channel with the planes interleaved.

    Raises
    ------
    TypeError
        If ``filenames`` is not nested as ``fmt`` and ``interlace`` require.
    ValueError
        For an unknown format or compression, or when the number of sequences,
        planes or channels does not match the file names.

    Notes
    -----
    All names are checked before anything is written.  Each file is written
    atomically; if reading a later sequence fails, the files already completed for
    earlier sequences are kept and none is left for the failing one.
    """
    fmt = _check_fmt(fmt)
    sequences = list(dataset.sequences)
    if fmt == "HDF5":
        arr = _nested_filenames(filenames, 1, "a list of one HDF5 file name per sequence")
    elif interlace:
        arr = _nested_filenames(
            filenames, 2, "nested lists filenames[sequence][channel] (interlaced TIFF)"
        )
    else:
        arr = _nested_filenames(filenames, 3, "nested lists filenames[sequence][plane][channel]")
    if arr.shape[0] != len(sequences):
        raise ValueError(
            f"the dataset has {len(sequences)} sequence(s) but file names were given for "
            f"{arr.shape[0]}"
        )
    # Validate everything before writing anything.
    if fmt == "HDF5":
        _check_compression(compression)
    all_paths = [str(p) for p in arr.ravel()]
    sources = [f for s in sequences for f in _seq_files(s)]
    _check_targets(all_paths, sources)
    names = list(dataset.channel_names)
    for seq, names_for_seq in zip(sequences, arr, strict=True):
        target = names_for_seq if fmt == "HDF5" else names_for_seq.tolist()
        export_sequence(
            seq,
            target,
            fmt=fmt,
            fill_gaps=fill_gaps,
            channel_names=names,
            compression=compression,
            scale_values=scale_values,
            interlace=interlace,
        )


def export_averages(
    dataset: ImagingDataset,
    filenames: Any,
    fmt: str = "TIFF16",
    scale_values: bool = True,
    projection_type: str = "average",
) -> None:
    """Write a time projection of a dataset (``ImagingDataset.export_averages``).

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    filenames : str or list of str
        For TIFF formats one file per channel, each a multi-page TIFF with one page
        per plane; for ``'HDF5'`` one file name.
    fmt : {'TIFF16', 'TIFF8', 'HDF5'}
        Output format; pixels are ``uint16`` (``uint8`` for ``'TIFF8'``).  HDF5 writes
        a dataset ``time_<projection_type>`` (e.g. ``time_average``) holding the whole
        ``(z, y, x, c)`` projection, with dimension labels ``z, y, x, c`` and an
        attribute ``channel_names`` (list of byte strings).
    scale_values : bool
        Stretch values to the output range (default True, as SIMA): TIFF scales each
        channel by its own maximum (``255 * a / max`` or ``65535 * a / max``); HDF5
        scales the whole array by its overall maximum (``65535 * a / max``).  The
        cast truncates.  Without scaling, values are cast as they are (fractions
        truncated, out-of-range values wrap around as in SIMA).
    projection_type : {'average', 'std', 'kurtosis'}
        Which projection: ``time_averages``, ``time_std`` or ``time_kurtosis``.

    Raises
    ------
    ValueError
        For an unknown format or projection, an HDF5 ``filenames`` that is not one
        name, or a number of TIFF names different from the number of channels.

    Notes
    -----
    NaN pixels (never observed) are written as 0.
    """
    fmt = _check_fmt(fmt)
    if not isinstance(projection_type, str) or projection_type not in PROJECTIONS:
        raise ValueError(
            f"unknown projection_type {projection_type!r}; expected one of "
            f"{', '.join(map(repr, PROJECTIONS))}"
        )
    num_channels = int(dataset.frame_shape[3])
    if fmt == "HDF5":
        if not isinstance(filenames, (str, os.PathLike)):
            raise ValueError(
                f"HDF5 export of a projection takes one file name; got {filenames!r:.300}"
            )
        paths = [_as_path(filenames, "filenames")]
    else:
        if isinstance(filenames, (str, os.PathLike)):
            raise ValueError(
                f"TIFF export of a projection takes a list of one file name per channel "
                f"({num_channels}); got the single name {os.fspath(filenames)!r}"
            )
        try:
            items = list(filenames)
        except TypeError:
            raise ValueError(
                f"TIFF export of a projection takes a list of one file name per channel "
                f"({num_channels}); got {filenames!r:.300}"
            ) from None
        if len(items) != num_channels:
            raise ValueError(
                f"TIFF export of a projection needs one file name per channel: the dataset "
                f"has {num_channels} channel(s) but {len(items)} name(s) were given: "
                f"{items!r:.300}"
            )
        paths = [_as_path(p, f"filenames[{i}]") for i, p in enumerate(items)]
    _check_targets(paths, [f for s in dataset.sequences for f in _seq_files(s)])

    data = np.asarray(getattr(dataset, PROJECTIONS[projection_type]), dtype=float)
    what = f"the time {projection_type}"
    if fmt == "HDF5":
        caster = _Caster(16)
        if scale_values:
            mx = _nanmax(data)
            if _scalable(mx, what):
                data = 65535.0 * data / mx
        out = caster(data)
        _write_projection_hdf5(paths[0], f"time_{projection_type}", out, dataset.channel_names)
        caster.warn(paths[0])
        return

    caster = _Caster(_TIFF_BITS[fmt])
    full = float(2 ** _TIFF_BITS[fmt] - 1)
    images = []
    for c in range(num_channels):
        channel = data[..., c]
        if scale_values:
            mx = _nanmax(channel)
            if _scalable(mx, f"{what}, channel {c}"):
                channel = full * channel / mx
        images.append(caster(channel))
    import tifffile

    with _atomic_outputs(paths) as temps:
        for tmp, image in zip(temps, images, strict=True):
            tifffile.imwrite(tmp, image, photometric="minisblack")
    caster.warn(paths[0] if len(paths) == 1 else f"{len(paths)} TIFF files")


def _nanmax(data: np.ndarray) -> float:
    return float(np.fmax.reduce(data, axis=None)) if data.size else float("nan")


def _write_projection_hdf5(path: str, name: str, data: np.ndarray, channel_names: Any) -> None:
    import h5py

    with _atomic_outputs([path]) as (tmp,), h5py.File(tmp, "w") as f:
        ds = f.create_dataset(name, data=data)
        for i, label in enumerate("zyxc"):
            ds.dims[i].label = label
        ds.attrs["channel_names"] = [np.bytes_(str(n)) for n in channel_names]
