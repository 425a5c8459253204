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

Untrusted files
---------------
Opening a file reads only its headers, and what they declare is checked before
anything is allocated: a page (every frame read decodes whole pages) may not exceed
:data:`MAX_PAGE_BYTES`; uncompressed pages must fit in the file; compressed pages may
not claim more than :data:`MAX_COMPRESSION_RATIO` times the file size (unless
small); metadata (OME, ImageJ, tifffile's own) may not declare more than
:data:`MAX_PAGES` pages.  Before a compressed page is decoded, its compressed size is
checked against its decoded size (a deflate bomb in a strip is refused).  Whatever
tifffile raises for a damaged file (``struct.error``, ``IndexError``, ...) is turned
into :class:`~napari_sima.core.errors.FileFormatError` naming the file.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _indexing as ix
from ._indexing import Region, TimeIndex
from .errors import FileFormatError, ResourceLimitError
from .sequence import Sequence, _register, check_movie_file, path_to_dict, resolve_stored_path

#: Largest decoded size of one page, in bytes (reading any frame decodes whole pages).
MAX_PAGE_BYTES = 2**30
#: Largest number of pages a file's metadata may declare.
MAX_PAGES = 2**22
#: A compressed page may not declare more than this many times the file's size in
#: decoded bytes (deflate's best ratio is 1032:1) unless it is at most
#: :data:`_SMALL_PAGE_BYTES`.
MAX_COMPRESSION_RATIO = 4096
_SMALL_PAGE_BYTES = 16 * 2**20

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


@contextlib.contextmanager
def _tifffile_errors(path: str, doing: str) -> Iterator[None]:
    """Turn what tifffile raises for a damaged file into :class:`FileFormatError`.

    ``OSError`` (the file cannot be read) and our own errors pass through; so does
    ``MemoryError``: sizes are checked before allocating, and the fuzzing job must
    see any allocation that escaped the checks.
    """
    try:
        yield
    except (OSError, FileFormatError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - struct.error, IndexError, KeyError, ...
        raise FileFormatError(
            f"cannot {doing} {path!r}: the file is damaged or not a TIFF file that can be "
            f"read ({type(err).__name__}: {err})"
        ) from err


def _open_tiff_loud(path: str):
    import tifffile

    check_movie_file(path, "TIFF")
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as err:
        raise FileFormatError(f"{path!r} is not a readable TIFF file ({err})") from None
    except (OSError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - struct.error, IndexError... on damaged files
        raise FileFormatError(
            f"{path!r} is not a readable TIFF file ({type(err).__name__}: {err})"
        ) from None


def _as_int(text: str) -> int | None:
    """Read an OME attribute as tifffile does (``int()``: signs, ``_``); None if no integer."""
    try:
        return int(text)
    except ValueError:
        return None


def _check_ome_sizes(tif: Any, path: str) -> None:
    """Refuse OME metadata declaring more than :data:`MAX_PAGES` pages.

    tifffile makes a list entry for every page it expects (missing ones are zeros):
    the declared ``SizeX * SizeY * SizeZ * SizeC * SizeT`` pixels of each image
    divided by the pixels of a page, so ``SizeT="1000000" SizeZ="1000000"`` or a
    ``SizeX`` far larger than the pages would allocate terabytes.
    """
    import re

    first = tif.pages.first
    page_pixels = max(math.prod(int(n) for n in first.shape), 1)
    total = 0
    for pixels in re.finditer(r"<(?:\w+:)?Pixels\b[^>]*>", first.description or ""):
        attrs = [(axis, n) for axis, text in re.findall(
            r'\bSize([XYZCT])\s*=\s*["\']([^"\']{1,40})["\']', pixels.group(0)
        ) if (n := _as_int(text)) is not None]
        declared = math.prod(max(v, 1) for _, v in attrs)
        pages = max(declared // page_pixels, 1)
        # tifffile indexes planes by the sizes of DimensionOrder's axes after X and Y
        # (an order like "ZZZZZ" repeats one size)
        order = re.search(r'\bDimensionOrder\s*=\s*["\']\s*(\w{1,30})', pixels.group(0))
        if order:
            sizes = dict(attrs)
            pages = max(pages, math.prod(max(sizes.get(ax, 1), 1) for ax in order.group(1)[2:]))
        total += pages
    if total > MAX_PAGES:
        raise ResourceLimitError(
            f"{path!r}: its OME metadata declares {total} pages of {page_pixels} pixels, "
            f"more than the {MAX_PAGES} accepted; refusing to read it"
        )
    # a TiffData element's plane count is also a list length for tifffile
    for data in re.finditer(r"<(?:\w+:)?TiffData\b[^>]*>", first.description or ""):
        for name, text in re.findall(
            r'\b(NumPlanes|PlaneCount)\s*=\s*["\']([^"\']{1,40})["\']', data.group(0)
        ):
            value = _as_int(text)
            if value is not None and value > MAX_PAGES:
                raise ResourceLimitError(
                    f"{path!r}: its OME metadata declares {name}={value}, more than the "
                    f"{MAX_PAGES} pages accepted; refusing to read it"
                )


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
        path = self.path
        with _tifffile_errors(path, "read the TIFF structure of"):
            if not len(tif.pages):
                raise FileFormatError(f"{path!r} holds no image pages")
            if tif.is_ome:
                _check_ome_sizes(tif, path)
            meta_shaped = tif.is_imagej or tif.is_ome or tif.is_scanimage
            series = None
            if meta_shaped or (tif.is_shaped and len(tif.series) == 1):
                series = tif.series[0]
            if series is not None:
                axes = str(series.axes)
                shape = tuple(int(s) for s in series.shape)
                keyframe = series.keyframe
                series_offset = series.dataoffset
            else:
                keyframe = tif.pages.first
                axes = "I"
                shape = (len(tif.pages), *(int(s) for s in keyframe.shape))
                series_offset = None
            planar = keyframe.planarconfig
            pixel_dtype = keyframe.dtype
            compression = int(keyframe.compression)
            bits = int(keyframe.bitspersample)
            memmappable = bool(keyframe.is_memmappable)
        if series is not None:
            if "Y" not in axes or "X" not in axes:
                raise FileFormatError(f"{path!r}: cannot find the image axes in {axes!r}")
            # page axes: everything before Y; samples after X
            iy = axes.index("Y")
            if axes[iy:] not in ("YX", "YXS"):
                raise FileFormatError(
                    f"{path!r} stores pages with axes {axes[iy:]!r}; expected 'YX' or 'YXS'"
                )
            self.axes = axes[:iy]
            self.grid_shape = shape[:iy]
            self.page_shape = shape[iy:]
            self._series_index: int | None = 0
        else:
            self.axes = axes
            self.grid_shape = shape[:1]
            self.page_shape = shape[1:]
            if len(self.page_shape) == 3 and planar == 2:
                raise FileFormatError(f"{path!r}: planar RGB pages are not supported")
            if len(self.page_shape) not in (2, 3):
                raise FileFormatError(
                    f"{path!r}: its pages have shape {self.page_shape}; expected (y, x) or "
                    f"(y, x, samples)"
                )
            self._series_index = None
        if pixel_dtype is None:
            raise FileFormatError(
                f"{path!r} stores pixels of {bits} bits per sample in a format that cannot "
                f"be read (its BitsPerSample/SampleFormat tags are unsupported or corrupt)"
            )
        if np.dtype(pixel_dtype).kind not in "biuf":
            raise FileFormatError(f"{path!r} holds {pixel_dtype} pixels, expected numbers")
        stored = np.dtype(pixel_dtype).newbyteorder(tif.byteorder)
        self._stored_dtype = stored
        self.dtype = stored.newbyteorder("=")
        self.num_pages = math.prod(self.grid_shape)
        self.page_bytes = math.prod(self.page_shape) * stored.itemsize
        self._check_sizes(compression, bits, series_offset)
        self._raw_ok = bool(
            compression == 1 and memmappable and (bits == stored.itemsize * 8)
        )
        self._series_offset = series_offset

    def _check_sizes(self, compression: int, bits: int, series_offset: int | None) -> None:
        """Refuse declared sizes that cannot be real before anything is allocated."""
        path = self.path
        file_size = os.path.getsize(path)
        what = f"{' x '.join(map(str, self.page_shape))} {self.dtype} pixels"
        if self.num_pages > MAX_PAGES:
            raise ResourceLimitError(
                f"{path!r} declares {self.num_pages} pages, more than the {MAX_PAGES} "
                f"accepted; refusing to read it"
            )
        if self.page_bytes > MAX_PAGE_BYTES:
            raise ResourceLimitError(
                f"{path!r} declares pages of {what} ({self.page_bytes} bytes each), more "
                f"than the {MAX_PAGE_BYTES} bytes accepted per page; refusing to read it"
            )
        if compression == 1:
            stored_bits = math.prod(self.page_shape) * max(bits, 1)
            if (stored_bits + 7) // 8 > file_size:
                raise FileFormatError(
                    f"{path!r} declares uncompressed pages of {what} "
                    f"({(stored_bits + 7) // 8} bytes) but the whole file has {file_size} "
                    f"bytes: its header is corrupt"
                )
            if series_offset is not None:
                end = int(series_offset) + self.num_pages * self.page_bytes
                if end > file_size:
                    raise FileFormatError(
                        f"{path!r} declares {self.num_pages} pages of {what} stored from "
                        f"byte {series_offset}, which would end at byte {end}, but the file "
                        f"has {file_size} bytes: its metadata is corrupt or the file is "
                        f"truncated"
                    )
        elif self.page_bytes > max(_SMALL_PAGE_BYTES, MAX_COMPRESSION_RATIO * file_size):
            raise ResourceLimitError(
                f"{path!r} declares compressed pages of {what} ({self.page_bytes} bytes "
                f"each) in a file of {file_size} bytes, a ratio above "
                f"{MAX_COMPRESSION_RATIO}:1; refusing to read it"
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
            with _tifffile_errors(self.path, "read the page headers of"), _quiet_tifffile():
                # index every IFD first: it stops at a circular IFD chain, which
                # tifffile's page iterator with frames would follow forever
                len(self._tif.pages)
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
        """Byte offsets of every page's pixels when they can be read raw, else None.

        Only for files without a contiguous series (those use
        :meth:`_offsets_of`); looks at every page's IFD once.
        """
        if self._offsets is not None or not self._raw_ok:
            return self._offsets
        tif = self._tiff()
        offsets = np.empty(self.num_pages, dtype=np.int64)
        with _tifffile_errors(self.path, "read the page headers of"), _quiet_tifffile():
            first_shape = tif.pages.first.shape
            for i in range(self.num_pages):
                page = tif.pages[i]
                doffs, dcounts = page.dataoffsets, page.databytecounts
                if (
                    page.shape != first_shape
                    or not len(doffs)
                    or sum(dcounts) != self.page_bytes
                    or any(doffs[k] + dcounts[k] != doffs[k + 1] for k in range(len(doffs) - 1))
                ):
                    self._raw_ok = False
                    return None
                offsets[i] = doffs[0]
        self._offsets = offsets
        return offsets

    def _offsets_of(self, first: int, length: int) -> np.ndarray | None:
        """Byte offsets of pages ``first ... first + length - 1``, or None (decode)."""
        if self._series_offset is not None and self._raw_ok:
            return self._series_offset + self.page_bytes * np.arange(
                first, first + length, dtype=np.int64
            )
        offsets = self._page_offsets()
        return None if offsets is None else offsets[first : first + length]

    # -- reading ---------------------------------------------------------------------------
    def read(self, pages: np.ndarray) -> np.ndarray:
        """Read pages by index (into the page grid, flattened) as ``(n, *page_shape)``."""
        pages = np.asarray(pages, dtype=np.int64)
        if pages.size and (pages.min() < 0 or pages.max() >= self.num_pages):
            raise IndexError(f"page index out of range for {self.num_pages} pages of {self.path!r}")
        with self._lock:
            if not self._raw_ok or (self._series_offset is None and self._page_offsets() is None):
                return self._read_decoded(pages)
            out = np.empty((pages.size,) + tuple(self.page_shape), dtype=self._stored_dtype)
            flat = out.reshape(pages.size, -1).view(np.uint8)
            fd = self._fdesc()
            for pos, first, length in ix.runs(pages):
                offs = self._offsets_of(first, length)
                assert offs is not None
                adjacent = length == 1 or bool(np.all(np.diff(offs) == self.page_bytes))
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

    def _page_objects(self, tif: Any, pages: np.ndarray) -> list[Any] | None:
        """Tifffile's page objects for ``pages`` (None: let tifffile map a series)."""
        if self._series_index is None:
            return [tif.pages[int(i)] for i in pages]
        series = tif.series[self._series_index]
        if len(series.pages) != self.num_pages:
            return None
        return [series.pages[int(i)] for i in pages]

    def _check_page(self, page: Any, index: int) -> None:
        """Refuse a page unlike the first one, or a deflate bomb, before decoding it.

        The compressed data of a page may not exceed twice its decoded size (plus
        64 kB): more means a corrupt file or a decompression bomb.
        """
        if page is None:  # a plane missing from an OME series: tifffile gives zeros
            return
        shape = tuple(int(s) for s in page.shape)
        if math.prod(shape) * self._stored_dtype.itemsize != self.page_bytes:
            raise FileFormatError(
                f"page {index} of {self.path!r} has shape {shape}, unlike the first page "
                f"{tuple(self.page_shape)}"
            )
        if int(page.compression) != 1:
            packed = sum(int(c) for c in page.databytecounts)
            if packed > 2 * self.page_bytes + 65536:
                raise FileFormatError(
                    f"page {index} of {self.path!r} holds {packed} bytes of compressed data "
                    f"for {self.page_bytes} bytes of pixels: the file is corrupt (or a "
                    f"decompression bomb); refusing to decode it"
                )

    def _read_decoded(self, pages: np.ndarray) -> np.ndarray:
        out = np.empty((pages.size,) + tuple(self.page_shape), dtype=self.dtype)
        if pages.size == 0:
            return out
        with _tifffile_errors(self.path, "read the page headers of"), _quiet_tifffile():
            tif = self._tiff()
            objects = self._page_objects(tif, pages)
            if objects is not None:
                for page, index in zip(objects, pages.tolist(), strict=True):
                    self._check_page(page, index)
        try:
            with _quiet_tifffile():
                if objects is None:
                    data = tif.asarray(key=pages.tolist(), series=self._series_index)
                    out[...] = np.reshape(data, out.shape)
                else:
                    for k, page in enumerate(objects):
                        if page is None:
                            out[k] = 0
                        else:
                            out[k] = np.reshape(page.asarray(), out.shape[1:])
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - tifffile raises many kinds
            raise FileFormatError(f"cannot decode pages of {self.path!r}: {err}") from None
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
