"""The exceptions napari-sima raises for bad files, refused inputs and busy datasets.

Reading any file napari-sima opens — movies (TIFF, HDF5), ImageJ ROIs (``.roi``,
RoiSet ``.zip``, TIFF overlays), dataset folders (``dataset.json``, set indexes, NPZ
files), legacy SIMA pickles, pipeline files — ends in a result or in one of
:data:`READ_ERRORS`:

:class:`ValueError`
    The content is broken, not what it claims to be, unsupported, or refused for
    safety.  Subclasses say more: :class:`FileFormatError`,
    :class:`ResourceLimitError` (a zip bomb, a TIFF claiming 10^12 pixels: refused
    before anything is allocated), ``legacy.UnsafePickleError`` (a pickle naming a
    class outside the allow-list: nothing was run), ``pipeline.PipelineError``.
:class:`OSError`
    The file cannot be read: missing (:class:`FileNotFoundError`), no permission,
    I/O error; and :class:`DatasetInUseError` when another process is writing to the
    dataset.

Never any other type (``struct.error``, ``IndexError``, ``zlib.error``,
``RecursionError``, ``MemoryError``, ...): the fuzzing job (``make fuzz``) checks this
for every format.  Messages name the file, the value and what was expected.
"""

from __future__ import annotations


from typing import Any

__all__ = [
    "READ_ERRORS",
    "DatasetInUseError",
    "FileFormatError",
    "ResourceLimitError",
    "brief",
]


class FileFormatError(ValueError):
    """A file whose content is broken or not what its kind requires."""


class ResourceLimitError(FileFormatError):
    """A file refused because reading it would need too much memory or time."""


class DatasetInUseError(OSError):
    """Another process holds the dataset's write lock (see :mod:`napari_sima.core.locking`)."""


#: What reading an untrusted file may raise (besides returning a result).
READ_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def brief(value: Any, limit: int = 200) -> str:
    """Return a bounded repr of a value read from a file, for error messages.

    Nested containers, long strings and huge numbers are cut (``reprlib``); the text
    is at most ``limit`` characters and is made in bounded time for any value.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, 80, 80
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
