"""TIFF sequences: one multi-page file (``'TIFF'``) or a grid of files (``'TIFFs'``).

Reading strategy (fastest first):

1. the pages' pixel data are stored uncompressed, back to back (tifffile's
   ``series.dataoffset``, or per-page offsets that turn out adjacent): one
   ``os.preadv`` per run of consecutive pages into the output array — disk speed,
   thread-safe, and no memory map whose touched pages would count towards the
   process's resident memory during a full pass;
2. uncompressed pages at scattered offsets (e.g. ScanImage files with an IFD between
   pages): one ``preadv`` per page;
3. anything else (compressed, tiled, odd bit depths): tifffile decodes the pages.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _indexing as ix
from ._indexing import Region, TimeIndex
from .sequence import Sequence, _register, check_movie_file, path_to_dict, resolve_stored_path

#: tifffile axis letters that mean "a sequence of images of unknown meaning".
_GENERIC_AXES = set("IQ")
_AXIS_MAP = {"T": "t", "Z": "z", "C": "c"}


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's warnings about odd metadata (we fall back to plain pages)."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it reports bad ImageJ metadata with .error()
    try:
        yield
    finally:
        logger.setLevel(level)


def _open_tiff(path: str):
    """Open a TIFF file with clear errors; tifffile's metadata warnings are silenced."""
    with _quiet_tifffile():
        return _open_tiff_loud(path)


def _open_tiff_loud(path: str):
    import tifffile

    check_movie_file(path, "TIFF")
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as err:
        raise ValueError(f"{path!r} is not a readable TIFF file ({err})") from None


class TiffPages:
    """Random access to the image pages of one TIFF file.

    Parameters
    ----------
    path : str
        The TIFF file.

    Attributes
    ----------
    axes : str
        tifffile's axes of the page grid (e.g. ``'TZC'``, ``'I'``), outermost first.
    grid_shape : tuple of int
        Sizes of the page grid axes.
    page_shape : tuple of int
        ``(y, x)`` or ``(y, x, samples)``.
    dtype : numpy.dtype
        Native-byte-order dtype of the pixels.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1
        self._tif = None
        self._offsets: np.ndarray | None = None  # per-page byte offsets (pread paths)
        tif = _open_tiff(self.path)
        try:
            with _quiet_tifffile():
                self._inspect(tif)
        finally:
            tif.close()

    # -- inspection ------------------------------------------------------------------
    def _inspect(self, tif: Any) -> None:
        if not len(tif.pages):
            raise ValueError(f"{self.path!r} holds no image pages")
        meta_shaped = tif.is_imagej or tif.is_ome or tif.is_scanimage
        series = None
        if meta_shaped or (tif.is_shaped and len(tif.series) == 1):
            series = tif.series[0]
        if series is not None:
            axes = series.axes
            shape = tuple(int(s) for s in series.shape)
            if "Y" not in axes or "X" not in axes:
                raise ValueError(f"{self.path!r}: cannot find the image axes in {axes!r}")
            # page axes: everything before Y; samples after X
            iy = axes.index("Y")
            self.axes = axes[:iy]
            self.grid_shape = shape[:iy]
            self.page_shape = shape[iy:]
            if axes[iy:] not in ("YX", "YXS"):
                raise ValueError(
                    f"{self.path!r} stores pages with axes {axes[iy:]!r}; expected 'YX' or 'YXS'"
                )
            keyframe = series.keyframe
            self._series_index = 0
            self._series_offset = series.dataoffset
        else:
            keyframe = tif.pages.first
            n = len(tif.pages)
            self.axes = "I"
            self.grid_shape = (n,)
            self.page_shape = tuple(int(s) for s in keyframe.shape)
            if len(self.page_shape) == 3 and keyframe.planarconfig == 2:
                raise ValueError(f"{self.path!r}: planar RGB pages are not supported")
            self._series_index = None
            self._series_offset = None
        if keyframe.dtype is None or np.dtype(keyframe.dtype).kind not in "biuf":
            raise ValueError(f"{self.path!r} holds {keyframe.dtype} pixels, expected numbers")
        stored = np.dtype(keyframe.dtype).newbyteorder(tif.byteorder)
        self._stored_dtype = stored
        self.dtype = stored.newbyteorder("=")
        self.num_pages = int(np.prod(self.grid_shape)) if self.grid_shape else 1
        self.page_bytes = int(np.prod(self.page_shape)) * stored.itemsize
        self._raw_ok = bool(
            keyframe.compression == 1
            and keyframe.is_memmappable
            and (keyframe.bitspersample == stored.itemsize * 8)
        )
        if self._series_offset is not None:
            self._offsets = self._series_offset + self.page_bytes * np.arange(
                self.num_pages, dtype=np.int64
            )

    # -- file handles --------------------------------------------------------------------
    def _fdesc(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def _tiff(self):
        if self._tif is None or self._pid != os.getpid():
            self._tif = _open_tiff(self.path)
            self._tif.pages.useframes = True
            self._pid = os.getpid()
        return self._tif

    def close(self) -> None:
        """Close the open file handles."""
        with self._lock:
            if self._pid == os.getpid():
                if self._fd is not None:
                    os.close(self._fd)
                if self._tif is not None:
                    self._tif.close()
            self._fd = None
            self._tif = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_fd=None, _tif=None, _pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._pid == os.getpid():
                if self._fd is not None:
                    os.close(self._fd)
                if self._tif is not None:
                    self._tif.close()
        except Exception:  # noqa: BLE001
            pass

    def _page_offsets(self) -> np.ndarray | None:
        """Byte offsets of every page's pixels when they can be read raw, else None."""
        if self._offsets is not None or not self._raw_ok:
            return self._offsets
        tif = self._tiff()
        offsets = np.empty(self.num_pages, dtype=np.int64)
        for i in range(self.num_pages):
            page = tif.pages[i]
            doffs, dcounts = page.dataoffsets, page.databytecounts
            if (
                page.shape != tif.pages.first.shape
                or sum(dcounts) != self.page_bytes
                or any(doffs[k] + dcounts[k] != doffs[k + 1] for k in range(len(doffs) - 1))
            ):
                self._raw_ok = False
                return None
            offsets[i] = doffs[0]
        self._offsets = offsets
        return offsets

    # -- reading ---------------------------------------------------------------------------
    def read(self, pages: np.ndarray) -> np.ndarray:
        """Read pages by index (into the page grid, flattened) as ``(n, *page_shape)``."""
        pages = np.asarray(pages, dtype=np.int64)
        if pages.size and (pages.min() < 0 or pages.max() >= self.num_pages):
            raise IndexError(f"page index out of range for {self.num_pages} pages of {self.path!r}")
        with self._lock:
            offsets = self._page_offsets()
            if offsets is None:
                return self._read_decoded(pages)
            out = np.empty((pages.size,) + tuple(self.page_shape), dtype=self._stored_dtype)
            flat = out.reshape(pages.size, -1).view(np.uint8)
            fd = self._fdesc()
            for pos, first, length in ix.runs(pages):
                offs = offsets[first : first + length]
                adjacent = length == 1 or bool(
                    np.all(np.diff(offs) == self.page_bytes)
                )
                if adjacent:
                    self._pread(fd, flat[pos : pos + length].reshape(-1), int(offs[0]))
                else:
                    for k in range(length):
                        self._pread(fd, flat[pos + k], int(offs[k]))
        if not self._stored_dtype.isnative:
            return out.astype(self.dtype)
        return out

    def _pread(self, fd: int, buf: np.ndarray, offset: int) -> None:
        view = memoryview(buf)
        got = 0
        while got < buf.nbytes:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise OSError(
                    f"{self.path!r} ends before the image data at byte {offset + got} "
                    f"(truncated file?)"
                )
            got += n

    def _read_decoded(self, pages: np.ndarray) -> np.ndarray:
        tif = self._tiff()
        out = np.empty((pages.size,) + tuple(self.page_shape), dtype=self.dtype)
        if pages.size == 0:
            return out
        try:
            if self._series_index is not None:
                with _quiet_tifffile():
                    data = tif.asarray(key=pages.tolist(), series=self._series_index)
            else:
                data = np.stack([tif.pages[int(i)].asarray() for i in pages])
        except Exception as err:  # noqa: BLE001 - tifffile raises many kinds
            raise OSError(f"cannot decode pages of {self.path!r}: {err}") from None
        out[...] = np.reshape(data, out.shape)
        return out


def _grid_mapping(
    pages: TiffPages, num_planes: int, num_channels: int
) -> tuple[str, tuple[int, ...], int]:
    """Decide how the page grid maps to (t, z, c).

    Returns
    -------
    (grid_axes, grid_sizes, num_frames)
        ``grid_axes`` in lower case over ``'tzc'`` (outermost first).
    """
    axes = pages.axes
    sizes = tuple(pages.grid_shape)
    letters = set(axes)
    explicit = letters & {"Z", "C"}
    user_set = num_planes != 1 or num_channels != 1
    if explicit:
        unknown = letters - {"T", "Z", "C"}
        if unknown:
            raise ValueError(
                f"{pages.path!r} has axes {axes!r}; cannot map {sorted(unknown)} onto "
                f"(t, z, c)"
            )
        size = dict(zip(axes, sizes))
        if user_set and (
            size.get("Z", 1) != num_planes or size.get("C", 1) != num_channels
        ):
            raise ValueError(
                f"{pages.path!r} says it holds {size.get('Z', 1)} planes and "
                f"{size.get('C', 1)} channels (axes {axes!r}, shape {sizes}), but "
                f"num_planes={num_planes}, num_channels={num_channels} were given"
            )
        grid_axes = "".join(_AXIS_MAP[a] for a in axes)
        if "t" not in grid_axes:
            grid_axes = "t" + grid_axes
            sizes = (1,) + sizes
        return grid_axes, sizes, int(dict(zip(grid_axes, sizes))["t"])
    if len(axes) > 1:
        raise ValueError(f"{pages.path!r} has page axes {axes!r}, which cannot be interleaved")
    n = pages.num_pages
    if num_planes < 1 or num_channels < 1:
        raise ValueError(
            f"num_planes and num_channels must be at least 1, got {num_planes} and {num_channels}"
        )
    per_frame = num_planes * num_channels
    frames = n // per_frame
    if frames == 0:
        raise ValueError(
            f"{pages.path!r} has {n} pages, fewer than one frame of {num_planes} planes x "
            f"{num_channels} channels"
        )
    if n % per_frame:
        warnings.warn(
            f"{pages.path!r} has {n} pages, not a multiple of {num_planes} planes x "
            f"{num_channels} channels; the last {n % per_frame} pages are ignored",
            stacklevel=4,
        )
    return "tzc", (frames, num_planes, num_channels), frames


@_register
class _TIFFSequence(Sequence):
    """One multi-page TIFF file (``Sequence.create('TIFF', path, num_planes, num_channels)``)."""

    kind = "TIFF"

    def __init__(
        self,
        path: str | os.PathLike,
        num_planes: int = 1,
        num_channels: int = 1,
        len_: int | None = None,
    ) -> None:
        for name, value in (("num_planes", num_planes), ("num_channels", num_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._pages = TiffPages(path)
        self._num_planes = int(num_planes)
        self._num_channels = int(num_channels)
        grid_axes, grid_sizes, frames = _grid_mapping(
            self._pages, self._num_planes, self._num_channels
        )
        samples = len(self._pages.page_shape) == 3
        if samples and "c" in grid_axes and dict(zip(grid_axes, grid_sizes))["c"] > 1:
            raise ValueError(
                f"{self._pages.path!r} has both a channel axis and samples per pixel; "
                f"this layout is not supported"
            )
        self._grid_axes = grid_axes
        self._grid_sizes = grid_sizes
        size = dict(zip(grid_axes, grid_sizes))
        y, x = self._pages.page_shape[:2]
        c = self._pages.page_shape[2] if samples else size.get("c", 1)
        self._samples = samples
        if len_ is not None and int(len_) < frames:
            frames = int(len_)
        self._shape = (frames, size.get("z", 1), y, x, c)

    @property
    def path(self) -> str:
        """Absolute path of the TIFF file."""
        return self._pages.path

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self._pages.dtype

    @property
    def files(self) -> list[str]:
        return [self._pages.path]

    def close(self) -> None:
        self._pages.close()

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        zr, yr, xr, cr = region
        t = ix.as_time_array(times)
        per_axis = {"t": t, "z": np.asarray(zr, dtype=np.int64)}
        per_axis["c"] = (
            np.zeros(1, dtype=np.int64) if self._samples else np.asarray(cr, dtype=np.int64)
        )
        grids = [per_axis.get(a, np.zeros(1, dtype=np.int64)) for a in self._grid_axes]
        mesh = np.meshgrid(*grids, indexing="ij")
        index = np.ravel_multi_index(tuple(mesh), self._grid_sizes)  # in grid-axis order
        data = self._pages.read(index.ravel())
        data = data.reshape(index.shape + tuple(self._pages.page_shape))
        # bring to (t, z, c, y, x[, s]) then (t, z, y, x, c)
        order = [self._grid_axes.index(a) if a in self._grid_axes else None for a in "tzc"]
        present = [o for o in order if o is not None]
        data = np.transpose(data, present + list(range(len(self._grid_axes), data.ndim)))
        for i, a in enumerate("tzc"):
            if a not in self._grid_axes:
                data = np.expand_dims(data, i)
        ys, xs = ix.range_to_slice(yr), ix.range_to_slice(xr)
        if self._samples:
            data = data[:, :, 0, ys, xs][..., ix.range_to_slice(cr)]  # (t, z, y, x, s)
            return np.ascontiguousarray(data)
        data = data[:, :, :, ys, xs]
        return np.ascontiguousarray(np.moveaxis(data, 2, 4))

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_planes": self._num_planes,
            "num_channels": self._num_channels,
            "num_frames": self._shape[0],
            **path_to_dict(self._pages.path, savedir),
        }

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        path = resolve_stored_path(data, savedir, "TIFF movie")
        seq = cls(path, data.get("num_planes", 1), data.get("num_channels", 1))
        stored = data.get("num_frames")
        if stored is not None and int(stored) != seq.shape[0]:
            raise ValueError(
                f"the TIFF movie {path!r} now has {seq.shape[0]} frames but the dataset "
                f"recorded {stored}; the file has changed since the dataset was saved"
            )
        return seq


# ---------------------------------------------------------------------------------------
# 'TIFFs': a [plane][channel] grid of files
# ---------------------------------------------------------------------------------------
def _expand_entry(entry: Any, where: str) -> tuple[list[str], bool]:
    """Return ``(files, one_file_per_frame)`` for one ``[plane][channel]`` entry.

    A single path names one multi-page movie (its pages are the frames); a glob
    pattern or a list names one file per frame (sorted for a glob), whose pages are
    channels, as in SIMA.
    """
    if isinstance(entry, (str, os.PathLike)):
        text = os.fspath(entry)
        if os.path.exists(text):
            return [os.path.abspath(text)], False
        if _glob.has_magic(text):
            files = sorted(_glob.glob(text))
            if not files:
                raise FileNotFoundError(f"no files match the pattern {text!r} ({where})")
            return [os.path.abspath(f) for f in files], True
        raise FileNotFoundError(f"no such TIFF file: {text!r} ({where})")
    if isinstance(entry, (list, tuple, np.ndarray)):
        files = [os.fspath(f) for f in entry]
        if not files:
            raise ValueError(f"empty list of files ({where})")
        for f in files:
            if not os.path.exists(f):
                raise FileNotFoundError(f"no such TIFF file: {f!r} ({where})")
        return [os.path.abspath(f) for f in files], True
    raise ValueError(
        f"each entry of a 'TIFFs' grid is a path, a glob pattern or a list of files; "
        f"got {type(entry).__name__} ({where})"
    )


class _Entry:
    """One ``[plane][channel]`` entry: a multi-page file or one file per frame."""

    def __init__(self, files: list[str], where: str, one_file_per_frame: bool) -> None:
        self.files = files
        self.where = where
        first = TiffPages(files[0])
        if first.axes != "I" and first.num_pages > 1 and set(first.axes) - {"T", "I", "Q"}:
            first.close()
            raise ValueError(
                f"{files[0]!r} ({where}) has axes {first.axes!r}; each file of a 'TIFFs' "
                f"grid must hold one plane and channel"
            )
        self.page_shape = tuple(first.page_shape)
        self.dtype = first.dtype
        if not one_file_per_frame:
            self.per_frame_files = False
            self.pages = first
            self.num_frames = first.num_pages
            self.num_channels = first.page_shape[2] if len(first.page_shape) == 3 else 1
        else:
            self.per_frame_files = True
            self.pages = None
            self.num_frames = len(files)
            self.num_channels = first.num_pages * (
                first.page_shape[2] if len(first.page_shape) == 3 else 1
            )
            first.close()

    def close(self) -> None:
        if self.pages is not None:
            self.pages.close()

    def read(self, t: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Return ``(n, y, x, len(channels))`` for frames ``t``."""
        y, x = self.page_shape[:2]
        if not self.per_frame_files:
            assert self.pages is not None
            data = self.pages.read(t)
            if data.ndim == 3:
                data = data[..., None]
            return data[..., channels]
        out = np.empty((t.size, y, x, channels.size), dtype=self.dtype)
        for k, ti in enumerate(t):
            path = self.files[int(ti)]
            pages = TiffPages(path)
            try:
                if tuple(pages.page_shape) != tuple(self.page_shape) or (
                    pages.num_pages * (pages.page_shape[2] if len(pages.page_shape) == 3 else 1)
                    != self.num_channels
                ):
                    raise ValueError(
                        f"{path!r} ({self.where}) holds {pages.num_pages} page(s) of "
                        f"{pages.page_shape}, but the first file of its list holds "
                        f"{self.num_channels} channel(s) of {self.page_shape}"
                    )
                img = pages.read(np.arange(pages.num_pages))
            finally:
                pages.close()
            if img.ndim == 4:  # (pages, y, x, samples) -> (pages * samples, y, x)
                img = np.moveaxis(img, 3, 1).reshape(-1, y, x)
            img = img[channels]
            out[k] = np.moveaxis(img, 0, 2)
        return out


@_register
class _TIFFsSequence(Sequence):
    """A grid of TIFF files, ``paths[plane][channel]`` (``Sequence.create('TIFFs', paths)``).

    Each entry is either one multi-page TIFF (its pages are the frames) or a glob
    pattern / list of files (sorted; file ``k`` is frame ``k``, its pages are
    channels, as in SIMA).
    """

    kind = "TIFFs"

    def __init__(self, paths: Any) -> None:
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple)):
            raise ValueError(
                "'TIFFs' needs a nested list paths[plane][channel] of files or glob "
                f"patterns, got {type(paths).__name__}"
            )
        if not paths or any(
            isinstance(row, (str, os.PathLike)) or not isinstance(row, (list, tuple)) or not row
            for row in paths
        ):
            raise ValueError(
                "'TIFFs' needs a non-empty nested list paths[plane][channel], e.g. "
                "[['ch0.tif', 'ch1.tif']] for one plane and two channels"
            )
        self._entries: list[list[_Entry]] = []
        try:
            for p, row in enumerate(paths):
                entries = []
                for c, entry in enumerate(row):
                    where = f"plane {p}, channel {c}"
                    files, per_frame = _expand_entry(entry, where)
                    entries.append(_Entry(files, where, per_frame))
                self._entries.append(entries)
            self._check()
        except Exception:
            self.close()
            raise

    def _check(self) -> None:
        all_entries = [e for row in self._entries for e in row]
        ref = all_entries[0]
        for e in all_entries[1:]:
            if e.page_shape[:2] != ref.page_shape[:2]:
                raise ValueError(
                    f"'TIFFs' files differ in image shape: {ref.files[0]!r} ({ref.where}) is "
                    f"{ref.page_shape[:2]} but {e.files[0]!r} ({e.where}) is {e.page_shape[:2]}"
                )
            if e.num_frames != ref.num_frames:
                raise ValueError(
                    f"'TIFFs' entries differ in number of frames: {ref.where} has "
                    f"{ref.num_frames} ({ref.files[0]!r}...) but {e.where} has {e.num_frames}"
                )
        counts = [sum(e.num_channels for e in row) for row in self._entries]
        if len(set(counts)) != 1:
            raise ValueError(f"'TIFFs' planes have different numbers of channels: {counts}")
        self._dtype = np.result_type(*[e.dtype for e in all_entries])
        y, x = ref.page_shape[:2]
        self._shape = (ref.num_frames, len(self._entries), y, x, counts[0])
        # channel -> (entry index, channel within entry), per plane
        self._channel_map = [
            [(j, k) for j, e in enumerate(row) for k in range(e.num_channels)]
            for row in self._entries
        ]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def files(self) -> list[str]:
        return [f for row in self._entries for e in row for f in e.files]

    def close(self) -> None:
        for row in getattr(self, "_entries", []):
            for e in row:
                e.close()

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        zr, yr, xr, cr = region
        t = ix.as_time_array(times)
        ys, xs = ix.range_to_slice(yr), ix.range_to_slice(xr)
        out = np.empty((t.size, len(zr), len(yr), len(xr), len(cr)), dtype=self._dtype)
        for zi, p in enumerate(zr):
            wanted = [self._channel_map[p][c] for c in cr]
            for j, entry in enumerate(self._entries[p]):
                pos = [i for i, (jj, _) in enumerate(wanted) if jj == j]
                if not pos:
                    continue
                chans = np.asarray([wanted[i][1] for i in pos], dtype=np.int64)
                block = entry.read(t, chans)
                out[:, zi, :, :, pos] = np.moveaxis(block[:, ys, xs, :], 3, 0)
        return out

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        grid = [
            [
                {
                    "files": [path_to_dict(f, savedir) for f in e.files],
                    "one_file_per_frame": e.per_frame_files,
                }
                for e in row
            ]
            for row in self._entries
        ]
        return {"kind": self.kind, "grid": grid}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        grid = []
        for row in data["grid"]:
            entries = []
            for entry in row:
                files = [resolve_stored_path(f, savedir, "TIFF file") for f in entry["files"]]
                # a list always means one file per frame; a single path, a multi-page movie
                entries.append(files if entry["one_file_per_frame"] else files[0])
            grid.append(entries)
        return cls(grid)
