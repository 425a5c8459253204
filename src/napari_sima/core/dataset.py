"""``ImagingDataset``: sequences of one field of view, with a dataset folder.

A dataset folder ``NAME.sima/`` holds:

``dataset.json``
    format version, channel names, shapes, and the sequences (movie files by
    absolute path and by path relative to the folder);
``projections.npz``
    cached per-pixel mean / standard deviation / kurtosis over all frames;
``opca_<channel>.npz``
    cached offset principal components of a channel (used by segmentation);
``seq_<hex>.npy``, ``displacements_<hex>.npy``
    arrays that had no file of their own.

Every file is written atomically (temporary file + ``os.replace``); nothing is pickled.
Legacy SIMA folders (``dataset.pkl``) are read read-only through a restricted
unpickler (:mod:`napari_sima.core.legacy`).

Examples
--------
>>> import numpy as np
>>> from napari_sima.core import ImagingDataset, Sequence
>>> seq = Sequence.create('ndarray', np.ones((10, 1, 8, 8, 2)))
>>> ds = ImagingDataset([seq, seq], None, channel_names=['red', 'green'])
>>> ds
<ImagingDataset: num_sequences=2, frame_shape=(1, 8, 8, 2), num_frames=20>
>>> ds[0].num_sequences, ds[:, 0].num_frames, ds[:, 0].frame_shape == ds.frame_shape
(1, 2, True)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import locking, storage
from ._indexing import normalize_axis_index
from .channels import resolve_channel
from .projections import Moments, MomentAccumulator
from .roi import ROI, ROIList
from .roi_store import delete_roi_set, load_legacy_roi_sets, load_roi_sets, save_roi_set
from .sequence import Sequence

FORMAT_NAME = "napari-sima dataset"
FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
PROJECTIONS_FILE = "projections.npz"
LEGACY_FILE = "dataset.pkl"
#: Bytes of movie read per step of the projection pass.
PROJECTION_BLOCK_BYTES = 64 * 2**20

#: Files of ours that move with a dataset when its ``savedir`` changes.
_OWN_PATTERNS = (
    "projections.npz",
    "seq_*.npy",
    "displacements_*.npy",
    "rois",
    "signals",
    "extractSummary_*",
    "opca_*.npz",
)


def _remove_unused_displacements(
    folder: Path, sequences: list[dict[str, Any]], min_age: float = storage.ORPHAN_AGE
) -> list[str]:
    """Delete ``displacements_*.npy`` files the description no longer names.

    Only files older than ``min_age`` go: a process that read the previous
    ``dataset.json`` a moment ago may be about to open its file.  Best effort.
    """
    used: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("displacements_file")
            if isinstance(name, str):
                used.add(os.path.basename(name))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(sequences)
    removed = []
    now = time.time()
    for path in folder.glob("displacements_*.npy"):
        try:
            if path.name in used or not path.is_file() or path.is_symlink():
                continue
            if now - path.stat().st_mtime < min_age:
                continue
            path.unlink()
            removed.append(path.name)
        except OSError:
            continue
    return removed


def timestamp() -> str:
    """Return the current local time in SIMA's format ``'%Y-%m-%d-%Hh%Mm%Ss'``."""
    return time.strftime("%Y-%m-%d-%Hh%Mm%Ss")


def _software_versions() -> dict[str, str]:
    from .provenance import software_versions

    return software_versions()


def _normalize_savedir(savedir: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(os.fspath(savedir)))
    if path.suffix != ".sima":
        path = path.with_name(path.name + ".sima")
    return path


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a file or a folder (merging), letting the first OSError through as it is.

    (``shutil.copytree`` gathers errors into ``shutil.Error``, losing e.g. ``ENOSPC``.)
    """
    if not src.is_dir():
        shutil.copy2(src, dst)
        return
    dst.mkdir(exist_ok=True)
    for child in src.iterdir():
        if child.name != locking.LOCK_FILE and storage.temp_target(child.name) is None:
            _copy_tree(child, dst / child.name)


def _check_description(meta: Any, source: str) -> None:
    """Check the fields of a ``dataset.json`` before anything is built from them.

    Raises
    ------
    napari_sima.core.errors.FileFormatError
        Naming the file, the field, the value and what was expected.
    """
    from .errors import FileFormatError
    from .errors import brief as _brief

    def bad(what: str, value: Any, expected: str) -> FileFormatError:
        return FileFormatError(f"{source!r}: {what} is {_brief(value)}, expected {expected}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FileFormatError(f"{source!r} is not a napari-sima dataset file")
    version = meta.get("format_version")
    if not is_int(version) or version > FORMAT_VERSION:
        raise FileFormatError(
            f"{source!r} has format version {_brief(version)}; this napari-sima reads "
            f"versions up to {FORMAT_VERSION} (upgrade napari-sima)"
        )
    if version < 1:
        raise bad("format_version", version, f"1 to {FORMAT_VERSION}")
    for key in ("sequences", "channel_names", "frame_shape", "num_frames"):
        if key not in meta:
            raise FileFormatError(f"{source!r} lacks the field {key!r}")
    shape = meta["frame_shape"]
    if not isinstance(shape, list) or len(shape) != 4 or not all(
        is_int(v) and v >= 1 for v in shape
    ):
        raise bad("frame_shape", shape, "4 positive integers (planes, rows, columns, channels)")
    frames = meta["num_frames"]
    if not is_int(frames) or frames < 0:
        raise bad("num_frames", frames, "a non-negative integer")
    names = meta["channel_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("channel_names", names, "a list of names (text)")
    if len(names) != shape[3] or len(set(names)) != len(names):
        raise bad("channel_names", names, f"{shape[3]} different names (one per channel)")
    sequences = meta["sequences"]
    if not isinstance(sequences, list) or not sequences or not all(
        isinstance(d, dict) for d in sequences
    ):
        raise bad("sequences", sequences, "a non-empty list of sequence descriptions")
    record = meta.get("provenance")
    if record is not None and not isinstance(record, dict):
        raise bad("provenance", record, "a record (mapping)")


def _links_out_of(folder: Path) -> list[str]:
    """Sub-folders we write into (``rois``, ``signals/*``) that lead outside ``folder``."""
    root = folder.resolve()
    candidates = [folder / "rois", folder / "signals"]
    signals = folder / "signals"
    if signals.is_dir() and not signals.is_symlink():
        with contextlib.suppress(OSError):
            candidates.extend(signals.iterdir())
    out = []
    for path in candidates:
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                out.append(str(path))
    return out


def is_dataset_folder(path: str | os.PathLike) -> bool:
    """Return True if ``path`` is a dataset folder (ours or a legacy SIMA one)."""
    p = Path(path)
    return p.is_dir() and ((p / DATASET_FILE).is_file() or (p / LEGACY_FILE).is_file())


class ImagingDataset:
    """Imaging sequences of one field of view, with their analysis results.

    Parameters
    ----------
    sequences : list of Sequence
        The sequences (trials, sessions); all must share their frame shape
        ``(planes, rows, columns, channels)``.
    savedir : path-like or None
        Dataset folder (``'.sima'`` is appended when missing); it is created and the
        dataset saved at once.  ``None`` keeps the dataset in memory only.
    channel_names : list of str, optional
        One name per channel (default ``['0', '1', ...]``).
    read_only : bool
        Refuse to write to the folder.

    Raises
    ------
    TypeError
        If ``sequences`` is not a list of :class:`Sequence`.
    ValueError
        If the sequences' frame shapes differ, or the channel names do not fit.
    FileExistsError
        If ``savedir`` already holds a dataset (use :meth:`load`).
    """

    def __init__(
        self,
        sequences: list[Sequence] | None,
        savedir: str | os.PathLike | None,
        channel_names: list[str] | None = None,
        read_only: bool = False,
    ) -> None:
        self._savedir: Path | None = None
        self._read_only = bool(read_only)
        self._moments: Moments | None = None
        self._meta: dict[str, Any] = {}
        self._creation_record: dict[str, Any] | None = None
        self._sequences: list[Sequence] | None = None
        self._stored_sequences: list[dict] | None = None
        self._memory_rois: dict[str, ROIList] = {}
        if sequences is None:  # the load path, see ImagingDataset.load
            return
        if isinstance(sequences, Sequence) or not isinstance(sequences, (list, tuple)):
            raise TypeError(
                f"sequences must be a list of Sequence objects, got {type(sequences).__name__}"
            )
        if not sequences:
            raise ValueError("an ImagingDataset needs at least one sequence")
        for i, s in enumerate(sequences):
            if not isinstance(s, Sequence):
                raise TypeError(f"sequences[{i}] is a {type(s).__name__}, not a Sequence")
        shapes = {s.frame_shape for s in sequences}
        if len(shapes) > 1:
            raise ValueError(
                "all sequences of a dataset must share their frame shape (z, y, x, c); got "
                + ", ".join(str(s.frame_shape) for s in sequences)
            )
        self._sequences = list(sequences)
        self._channel_names = self._check_channel_names(channel_names, self.frame_shape[3])
        if savedir is not None:
            target = _normalize_savedir(savedir)
            if is_dataset_folder(target):
                raise FileExistsError(
                    f"{str(target)!r} already holds a dataset; open it with "
                    f"ImagingDataset.load({str(target)!r}) or choose another folder"
                )
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise FileExistsError(
                    f"{str(target)!r} exists and is not an empty folder; choose another name"
                )
            if self._read_only:
                raise PermissionError("a new dataset with a savedir cannot be read-only")
            target.mkdir(parents=True, exist_ok=True)
            self._savedir = target
            self.save()

    # -- loading and saving -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> ImagingDataset:
        """Open a dataset folder.

        Parameters
        ----------
        path : path-like
            The ``.sima`` folder (ours, or a legacy SIMA folder, which opens read-only).

        Returns
        -------
        ImagingDataset

        Raises
        ------
        FileNotFoundError
            If the folder or its ``dataset.json`` does not exist.
        ValueError
            If ``dataset.json`` is broken or of an unknown format version; or a
            legacy pickle names a class outside the allow-list.
        """
        folder = Path(os.path.abspath(os.fspath(path)))
        if not folder.exists():
            raise FileNotFoundError(f"no dataset folder at {str(folder)!r}")
        if not folder.is_dir():
            raise NotADirectoryError(f"{str(folder)!r} is a file; a dataset is a .sima folder")
        if not (folder / DATASET_FILE).exists():
            if (folder / LEGACY_FILE).exists():
                from .legacy import load_legacy_dataset

                return load_legacy_dataset(folder)
            raise FileNotFoundError(
                f"{str(folder)!r} is not a dataset folder: it has no {DATASET_FILE} "
                f"(nor a legacy {LEGACY_FILE})"
            )
        meta = storage.read_json(folder / DATASET_FILE, "dataset description")
        _check_description(meta, str(folder / DATASET_FILE))
        ds = cls(None, None)
        ds._savedir = folder
        ds._meta = meta
        ds._stored_sequences = list(meta["sequences"])
        ds._channel_names = list(meta["channel_names"])
        ds._read_only = not os.access(folder, os.W_OK)
        links = _links_out_of(folder)
        if links:
            # writing through them would put ROI or signal sets outside the dataset
            warnings.warn(
                f"the dataset {str(folder)!r} is opened read-only: "
                + ", ".join(repr(p) for p in links)
                + " lead outside the dataset folder (symbolic links), and napari-sima never "
                "writes outside a dataset folder",
                UserWarning,
                stacklevel=2,
            )
            ds._read_only = True
        return ds

    @staticmethod
    def _check_channel_names(names: list[str] | None, num_channels: int) -> list[str]:
        if names is None:
            return [str(i) for i in range(num_channels)]
        if isinstance(names, str) or not hasattr(names, "__len__"):
            raise ValueError(f"channel_names must be a list of strings, got {names!r}")
        names = [str(n) for n in names]
        if len(names) != num_channels:
            raise ValueError(
                f"{len(names)} channel names {names} given for {num_channels} channel(s)"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        return names

    def _check_writable(self) -> None:
        if self._read_only:
            raise PermissionError(
                f"the dataset {str(self._savedir)!r} is read-only ({self._read_only_reason()}); "
                f"nothing was changed; save it elsewhere with save(savedir='new.sima')"
            )

    def _read_only_reason(self) -> str:
        folder = self._savedir
        if folder is None:
            return "opened read-only"
        if not (folder / DATASET_FILE).exists() and (folder / LEGACY_FILE).exists():
            return "a legacy SIMA folder"
        with contextlib.suppress(OSError, AttributeError):
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                return "it is on a read-only file system"
        if not os.access(folder, os.W_OK):
            return "no write permission for this folder"
        return "opened read-only"

    def save(self, savedir: str | os.PathLike | None = None) -> None:
        """Write the dataset description to its folder (atomically).

        Parameters
        ----------
        savedir : path-like, optional
            Save to this new folder instead (our files are copied there, and the
            dataset then lives there, no longer read-only).

        Raises
        ------
        ValueError
            If the dataset has no folder and none is given.
        PermissionError
            If the dataset is read-only and no new folder is given, or its file system
            refuses writing (nothing was changed).
        napari_sima.core.errors.DatasetInUseError
            If another process keeps writing to the dataset folder.
        OSError
            If the disk is full (nothing was changed).
        """
        if savedir is not None:
            self.savedir = savedir  # the setter saves
            return
        if self._savedir is None:
            raise ValueError("this dataset has no folder; give save(savedir='name.sima')")
        self._check_writable()
        with locking.locked_write(self._savedir, "saving the dataset description"):
            self._save_locked()

    def _save_locked(self) -> None:
        assert self._savedir is not None
        storage.remove_orphan_temps(self._savedir)  # left by killed writers, when old
        sequences = [s.to_dict(self._savedir) for s in self.sequences]
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "channel_names": list(self._channel_names),
            "num_sequences": len(sequences),
            "num_frames": self.num_frames,
            "frame_shape": list(self.frame_shape),
            "sequences": sequences,
            "saved": timestamp(),
            "software": _software_versions(),
        }
        record = self.creation_provenance
        if record:
            meta["provenance"] = record
        storage.atomic_write_json(self._savedir / DATASET_FILE, meta)
        self._meta = meta
        self._stored_sequences = sequences
        _remove_unused_displacements(self._savedir, sequences)

    @property
    def savedir(self) -> str | None:
        """The dataset folder (absolute path), or None for an in-memory dataset."""
        return None if self._savedir is None else str(self._savedir)

    @savedir.setter
    def savedir(self, value: str | os.PathLike | None) -> None:
        if value is None:
            self._savedir = None
            return
        target = _normalize_savedir(value)
        if self._savedir is not None and target == self._savedir:
            self.save()
            return
        if is_dataset_folder(target):
            raise FileExistsError(f"{str(target)!r} already holds a dataset")
        sequences = self.sequences  # make sure the movies are reachable first
        old, old_read_only = self._savedir, self._read_only
        before = set(os.listdir(target)) if target.is_dir() else None
        try:
            with contextlib.ExitStack() as stack:
                if old is not None and not old_read_only:
                    # nobody changes the old folder while it is copied (unless we cannot
                    # lock it: a read-only folder is not changed through us either)
                    with contextlib.suppress(PermissionError):
                        stack.enter_context(
                            locking.dataset_lock(old, purpose=f"copying it to {str(target)!r}")
                        )
                stack.enter_context(locking.locked_write(target, "saving a copy of the dataset"))
                try:
                    self._copy_to(target, old, sequences)
                except BaseException:
                    self._discard_copy(target, before)  # under the lock
                    raise
        except BaseException:
            self._savedir, self._read_only = old, old_read_only
            if before is None:
                with contextlib.suppress(OSError):
                    target.rmdir()  # only when empty
            raise

    def _discard_copy(self, target: Path, before: set[str] | None) -> None:
        """Remove what a failed copy put into ``target`` (files there before are kept).

        Array files the in-memory sequences were just written to stay: they are theirs.
        """
        keep = set(before or ()) | {locking.LOCK_FILE}
        for s in self._sequences or []:
            keep.update(os.path.basename(f) for f in s.files if Path(f).parent == target)
        for name in set(os.listdir(target)) - keep:
            path = target / name
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def _copy_to(self, target: Path, old: Path | None, sequences: list[Sequence]) -> None:
        if old is not None:
            for pattern in _OWN_PATTERNS:
                for src in old.glob(pattern):
                    _copy_tree(src, target / src.name)
        legacy_rois = self.ROIs if (old is not None and self._uses_legacy_rois()) else {}
        self._savedir = target
        self._read_only = False
        self._sequences = sequences
        # ROI sets that lived in memory, or in a legacy rois.pkl, move into the new folder
        for label, rois in {**legacy_rois, **self._memory_rois}.items():
            save_roi_set(self._roi_folder(), rois, label)
        # and so do signal sets extracted while the dataset had no folder
        from . import signal_store

        for channel, sets in self.__dict__.get("_memory_signals", {}).items():
            for label, signals in sets.items():
                signal_store.save_signal_set(
                    signal_store.store_dir(target, channel), signals, label
                )
        # dataset.json last: until it exists the folder is no dataset, and a failed copy
        # can be retried into it
        self.save()
        self._memory_rois = {}
        self.__dict__.pop("_memory_signals", None)

    @property
    def read_only(self) -> bool:
        """Whether writing to the dataset folder is refused."""
        return self._read_only

    # -- structure ------------------------------------------------------------------------
    @property
    def sequences(self) -> list[Sequence]:
        """The sequences (opened on first access for a loaded dataset)."""
        if self._sequences is None:
            if self._stored_sequences is None:
                raise ValueError("this dataset has no sequences")
            self._sequences = [
                Sequence.from_dict(d, self._savedir) for d in self._stored_sequences
            ]
            shapes = {s.frame_shape for s in self._sequences}
            stored = tuple(self._meta.get("frame_shape", ()))
            if len(shapes) > 1 or (stored and shapes != {stored}):
                raise ValueError(
                    f"the movies of {self.savedir!r} no longer match the stored frame shape "
                    f"{stored}: found {sorted(shapes)}"
                )
        return self._sequences

    @sequences.setter
    def sequences(self, value: list[Sequence]) -> None:
        shapes = {s.frame_shape for s in value}
        if len(shapes) != 1:
            raise ValueError(f"sequences must share one frame shape, got {sorted(shapes)}")
        self._sequences = list(value)
        self._moments = None
        self._channel_names = self._check_channel_names(
            self._channel_names if len(self._channel_names) == self.frame_shape[3] else None,
            self.frame_shape[3],
        )

    @property
    def num_sequences(self) -> int:
        """Number of sequences."""
        if self._sequences is None and self._stored_sequences is not None:
            return len(self._stored_sequences)
        return len(self.sequences)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """``(planes, rows, columns, channels)``."""
        if self._sequences is None and "frame_shape" in self._meta:
            return tuple(int(v) for v in self._meta["frame_shape"])  # type: ignore[return-value]
        return self.sequences[0].frame_shape

    @property
    def num_frames(self) -> int:
        """Total number of frames over all sequences."""
        if self._sequences is None and "num_frames" in self._meta:
            return int(self._meta["num_frames"])
        return int(sum(len(s) for s in self.sequences))

    @property
    def channel_names(self) -> list[str]:
        """Channel names (``['0', '1', ...]`` unless named)."""
        return list(self._channel_names)

    @channel_names.setter
    def channel_names(self, names: list[str]) -> None:
        self._channel_names = self._check_channel_names(names, self.frame_shape[3])
        if self._savedir is not None and not self._read_only:
            self.save()

    def resolve_channel(self, channel: int | str) -> int:
        """Return the index of a channel given by index or name (see :func:`resolve_channel`)."""
        return resolve_channel(channel, self._channel_names)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.sequences)

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, indices: Any) -> ImagingDataset:
        if isinstance(indices, tuple):
            seq_index, rest = indices[0], indices[1:]
        else:
            seq_index, rest = indices, ()
        if isinstance(seq_index, (int, np.integer)) and not isinstance(seq_index, bool):
            n = self.num_sequences
            if not -n <= int(seq_index) < n:
                raise IndexError(f"sequence index {int(seq_index)} out of range for {n} sequences")
            chosen = [self.sequences[int(seq_index)]]
        elif isinstance(seq_index, slice):
            chosen = self.sequences[seq_index]
        else:
            try:
                chosen = [self.sequences[int(i)] for i in seq_index]  # type: ignore[union-attr]
            except TypeError:
                raise TypeError(
                    f"datasets are indexed by sequence (int, slice or list of ints), got "
                    f"{type(seq_index).__name__}"
                ) from None
        if not chosen:
            raise IndexError("the selection holds no sequence")
        names = self._channel_names
        if rest:
            chosen = [s[rest] for s in chosen]
            if len(rest) >= 5:
                c_index = rest[4]
                sel = normalize_axis_index(c_index, len(names), "c", "dataset")
                names = [names[i] for i in sel]
        return ImagingDataset(list(chosen), None, channel_names=list(names))

    def __repr__(self) -> str:
        return (
            f"<ImagingDataset: num_sequences={self.num_sequences}, "
            f"frame_shape={self.frame_shape}, num_frames={self.num_frames}>"
        )

    def __str__(self) -> str:
        return "<ImagingDataset>"

    def close(self) -> None:
        """Close the movie files (they reopen on the next read)."""
        if self._sequences is not None:
            for s in self._sequences:
                s.close()

    # -- projections ------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        parts = []
        for s in self.sequences:
            files = []
            for f in s.files:
                try:
                    files.append([os.path.basename(f), os.path.getsize(f)])
                except OSError:
                    files.append([os.path.basename(f), None])
            parts.append({"shape": list(s.shape), "dtype": str(s.dtype), "files": files})
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _load_cached_moments(self) -> Moments | None:
        if self._savedir is None:
            return None
        path = self._savedir / PROJECTIONS_FILE
        if not path.exists():
            return None
        try:
            arrays = storage.load_npz(path, "projection cache")
            if str(arrays["fingerprint"]) != self._fingerprint():
                return None
            moments = Moments(
                arrays["mean"], arrays["std"], arrays["kurtosis"], arrays["count"]
            )
        except (ValueError, KeyError, OSError):
            return None  # a stale or broken cache is recomputed
        if moments.mean.shape != tuple(self.frame_shape):
            return None
        return moments

    def iter_projections(
        self, block_frames: int | None = None, backend: str = "numba"
    ) -> Generator[tuple[int, int], None, Moments]:
        """Compute mean, std and kurtosis in one streaming pass, as a generator.

        Parameters
        ----------
        block_frames : int, optional
            Frames read per step; by default about 64 MB of frames (128 frames of
            512 x 512 uint16), which measured fastest here (larger blocks leave the
            cache, smaller ones pay more per-call overhead).
        backend : {'numba', 'numpy'}
            Kernel used for the accumulation (same numbers either way).

        Yields
        ------
        (frames_done, total_frames)
            Progress after each block; closing the generator cancels the work.

        Returns
        -------
        Moments
            As the generator's return value; also cached in memory and in the
            dataset folder (``projections.npz``) unless read-only.
        """
        cached = self._moments or self._load_cached_moments()
        total = self.num_frames
        if cached is not None:
            self._moments = cached
            yield total, total
            return cached
        acc = MomentAccumulator(self.frame_shape, backend=backend)
        if block_frames is None:
            frame_bytes = int(np.prod(self.frame_shape)) * self.sequences[0].dtype.itemsize
            block_frames = max(1, min(1024, PROJECTION_BLOCK_BYTES // max(1, frame_bytes)))
        done = 0
        yield done, total
        for seq in self.sequences:
            for block in seq.iter_blocks(block_frames):
                acc.update(block)
                done += block.shape[0]
                yield done, total
        moments = acc.result()
        self._moments = moments
        if self._savedir is not None and not self._read_only:
            # A cache: written atomically without the dataset lock (two processes write
            # the same numbers; a broken or stale cache is recomputed), and a full disk
            # or a read-only folder only costs the cache.
            try:
                storage.atomic_save_npz(
                    self._savedir / PROJECTIONS_FILE,
                    compress=False,
                    mean=moments.mean,
                    std=moments.std,
                    kurtosis=moments.kurtosis,
                    count=moments.count,
                    fingerprint=np.asarray(self._fingerprint()),
                )
            except OSError as err:
                warnings.warn(
                    f"could not cache the projections in {str(self._savedir)!r}: {err}",
                    stacklevel=2,
                )
        return moments

    def compute_projections(self, backend: str = "numba") -> Moments:
        """Compute (or fetch from the cache) mean, std and kurtosis over all frames.

        Returns
        -------
        Moments
            ``(mean, std, kurtosis, count)``, each ``(z, y, x, c)``.
        """
        gen = self.iter_projections(backend=backend)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    @property
    def time_averages(self) -> np.ndarray:
        """Per-pixel mean over all frames of all sequences, NaN ignored; ``(z, y, x, c)``."""
        return self.compute_projections().mean

    @property
    def time_std(self) -> np.ndarray:
        """Per-pixel population standard deviation over all frames; ``(z, y, x, c)``."""
        return self.compute_projections().std

    @property
    def time_kurtosis(self) -> np.ndarray:
        """Per-pixel excess (Fisher) kurtosis, population estimator; ``(z, y, x, c)``."""
        return self.compute_projections().kurtosis

    # -- ROI sets ----------------------------------------------------------------------------
    def _roi_folder(self) -> Path:
        assert self._savedir is not None
        return self._savedir / "rois"

    def _uses_legacy_rois(self) -> bool:
        return (
            self._savedir is not None
            and not (self._roi_folder() / "index.json").exists()
            and (self._savedir / "rois.pkl").exists()
        )

    @property
    def ROIs(self) -> dict[str, ROIList]:  # noqa: N802 - SIMA's name
        """ROI sets of the dataset, ``{label: ROIList}`` (empty when none).

        Read fresh from the dataset folder on each access (a legacy SIMA folder's
        ``rois.pkl`` through the restricted unpickler); kept in memory for a dataset
        without a folder.
        """
        if self._savedir is None:
            return {k: ROIList(list(v), timestamp=v.timestamp) for k, v in self._memory_rois.items()}
        if self._uses_legacy_rois():
            return load_legacy_roi_sets(self._savedir)
        return load_roi_sets(self._roi_folder())

    def add_ROIs(  # noqa: N802 - SIMA's name
        self,
        ROIs: ROIList | list[ROI],  # noqa: N803
        label: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> str:
        """Store an ROI set with the dataset (atomically), replacing one of the same label.

        Parameters
        ----------
        ROIs : ROIList or list of ROI
            The ROIs.
        label : str, optional
            Name of the set (default: the current timestamp).
        provenance : dict, optional
            What made the set (:func:`napari_sima.core.provenance.make_provenance`);
            default: a record of a set saved by hand (step ``'add_ROIs'``).

        Returns
        -------
        str
            The label used.

        Raises
        ------
        PermissionError
            If the dataset is read-only.
        TypeError
            If an item is not an ROI.
        """
        self._check_writable()
        rois = ROIList(list(ROIs))
        if self._savedir is None:
            label = timestamp() if label is None else str(label)
            rois.timestamp = timestamp()
            self._memory_rois.pop(label, None)
            self._memory_rois[label] = rois
            return label
        return save_roi_set(self._roi_folder(), rois, label, provenance=provenance)

    def provenance(self) -> dict[str, Any]:
        """What made each stored result: the records kept next to them.

        Returns
        -------
        dict
            ``{'dataset': record or None, 'rois': {label: record},
            'signals': {channel_name: {label: {'provenance': record,
            'derived': {entry: record}}}}}``; a record is ``None`` for results stored
            before provenance was recorded (or in a legacy SIMA folder).  Empty
            sections for a dataset without a folder.
        """
        from . import signal_store
        from .roi_store import roi_set_provenance

        out: dict[str, Any] = {
            "dataset": self.creation_provenance,
            "rois": {},
            "signals": {},
        }
        if self._savedir is None:
            return out
        if not self._uses_legacy_rois():
            out["rois"] = roi_set_provenance(self._roi_folder())
        for ch, name in enumerate(self.channel_names):
            folder = signal_store.store_dir(self._savedir, ch)
            sets = signal_store.signal_set_provenance(folder)
            if sets:
                out["signals"][name] = sets
        return out

    @property
    def creation_provenance(self) -> dict[str, Any] | None:
        """The record of the step that created the dataset (kept in ``dataset.json``)."""
        return self._meta.get("provenance") or self._creation_record

    @creation_provenance.setter
    def creation_provenance(self, record: dict[str, Any] | None) -> None:
        self._creation_record = None if record is None else dict(record)
        self._meta = {**self._meta, "provenance": self._creation_record}
        if self._savedir is not None and not self._read_only:
            self.save()

    def delete_ROIs(self, label: str) -> None:  # noqa: N802 - SIMA's name
        """Remove an ROI set; an unknown label is silently ignored (as in SIMA)."""
        self._check_writable()
        if self._savedir is None:
            self._memory_rois.pop(label, None)
            return
        delete_roi_set(self._roi_folder(), label)

    def import_transformed_ROIs(  # noqa: N802 - SIMA's name
        self,
        source_dataset: ImagingDataset,
        method: str = "affine",
        source_channel: int | str = 0,
        target_channel: int | str = 0,
        source_label: str | None = None,
        target_label: str | None = None,
        anchor_label: str | None = None,
        copy_properties: bool = True,
        pre_processing_method: str | None = None,
        pre_processing_kwargs: dict[str, Any] | None = None,
        **method_kwargs: Any,
    ) -> ROIList:
        """Map another session's ROI set onto this dataset and store it here.

        The transform comes from registering the two datasets' time averages (any of
        'euclidean', 'similarity', 'affine', 'projective', 'polynomial',
        'piecewise-affine'), or from anchor ROIs (``anchor_label``).  The ROIs keep
        label, id and tags (``copy_properties``), are clipped to this frame (ROIs
        left outside are dropped with a warning) and stored under ``target_label``
        (default: the source set's label, or ``'<label>_<timestamp>'`` if taken).

        Returns
        -------
        ROIList
            The stored ROIs.

        Raises
        ------
        napari_sima.core.transform.TransformError
            If no transform can be estimated; nothing is imported.

        See Also
        --------
        napari_sima.core.import_rois.import_transformed_ROIs : parameters in full.
        napari_sima.core.import_rois.iter_transformed_ROIs : preview, with progress.
        """
        from .import_rois import import_transformed_ROIs

        return import_transformed_ROIs(
            self,
            source_dataset,
            method=method,
            source_channel=source_channel,
            target_channel=target_channel,
            source_label=source_label,
            target_label=target_label,
            anchor_label=anchor_label,
            copy_properties=copy_properties,
            pre_processing_method=pre_processing_method,
            pre_processing_kwargs=pre_processing_kwargs,
            **method_kwargs,
        )

    # -- segmentation -------------------------------------------------------------------------
    def iter_segment(
        self, strategy: Any, label: str | None = None, planes: Any = None
    ) -> Generator[Any, None, ROIList]:
        """Segment and store the ROIs, as a generator yielding ``(fraction, message)``.

        Same parameters and result (the generator's return value) as :meth:`segment`;
        closing the generator cancels the work and stores nothing.

        See Also
        --------
        napari_sima.core.segment.planewise.iter_segment_dataset
        """
        from .segment.planewise import iter_segment_dataset

        return (yield from iter_segment_dataset(self, strategy, label=label, planes=planes))

    def segment(
        self,
        strategy: Any,
        label: str | None = None,
        planes: Any = None,
        progress: Any = None,
    ) -> ROIList:
        """Find ROIs automatically, store them as an ROI set and return them.

        Parameters
        ----------
        strategy : SegmentationStrategy
            E.g. ``STICA(components=50)`` with post-processing steps appended.
        label : str, optional
            Name of the stored ROI set (default: the current timestamp).
        planes : int or list of int, optional
            Segment only these planes, each on its own (ROIs are placed in their
            plane of the volume).
        progress : callable, optional
            Called as ``progress(fraction, message)``.

        Returns
        -------
        ROIList

        Raises
        ------
        IndexError
            For a plane that does not exist.
        PermissionError
            If the dataset is read-only (checked before any work).

        See Also
        --------
        napari_sima.core.segment : strategies and post-processing steps.
        """
        from .segment.planewise import segment_dataset

        return segment_dataset(self, strategy, label=label, planes=planes, progress=progress)

    # -- signals ------------------------------------------------------------------------------
    def iter_extract(
        self,
        rois: Any = None,
        signal_channel: int | str = 0,
        label: str | None = None,
        remove_overlap: bool = True,
        n_processes: int = 1,
        demix_channel: int | str | None = None,
        save_summary: bool = True,
        *,
        executor: cf.Executor | None = None,
        chunk_frames: int | None = None,
    ) -> Generator[tuple[int, int], None, dict[str, Any]]:
        """Extract and store ROI signals, as a generator yielding ``(frames_done, total)``.

        Same parameters and result (the generator's return value) as :meth:`extract`;
        closing the generator cancels the work (and an executor's unfinished chunks).

        See Also
        --------
        napari_sima.core.extract.iter_extract
        """
        from .extract import iter_extract

        return (
            yield from iter_extract(
                self,
                rois,
                signal_channel=signal_channel,
                label=label,
                remove_overlap=remove_overlap,
                n_processes=n_processes,
                demix_channel=demix_channel,
                save_summary=save_summary,
                executor=executor,
                chunk_frames=chunk_frames,
            )
        )

    def extract(
        self,
        rois: Any = None,
        signal_channel: int | str = 0,
        label: str | None = None,
        remove_overlap: bool = True,
        n_processes: int = 1,
        demix_channel: int | str | None = None,
        save_summary: bool = True,
        *,
        executor: cf.Executor | None = None,
        chunk_frames: int | None = None,
    ) -> dict[str, Any]:
        """Extract the signal of every ROI in every frame, and store it with the dataset.

        Parameters
        ----------
        rois : ROIList, list of ROI, str or None
            The ROIs, or the label of a stored ROI set (default: the most recent set).
        signal_channel : int or str
            Channel to extract, by index or name.
        label : str, optional
            Name of the stored signal set (default: the extraction timestamp).
        remove_overlap : bool
            Drop pixels shared by several ROIs (default); otherwise solve them by
            least squares.
        n_processes : int
            Processes reading and computing (more are never slower than one).
        demix_channel : int, str or None
            Experimental two-channel demixing (adds ``'demixed_raw'``).
        save_summary : bool
            With a folder, also write ``extractSummary_<timestamp>.png`` / ``.pdf``.
        executor : concurrent.futures.Executor, optional
            Split the frames into chunks computed on this executor (e.g.
            ``client.get_executor()`` of a ``dask.distributed`` client, also inside a
            task with ``distributed.worker_client()``); identical numbers.  Not with
            ``n_processes > 1``.
        chunk_frames : int, optional
            Frames per executor task (default: about 64 MB of movie, at most 4,096
            frames).

        Returns
        -------
        dict
            ``raw`` (list per sequence of ``(n_rois, n_frames)`` float32: the weighted
            mean of ``F / time_average`` per ROI), ``demixed_raw`` (with demixing),
            ``mean_frame``, ``overlap`` (with ``remove_overlap``), ``signal_channel``,
            ``demix_channel`` (with demixing), ``rois`` (ROI dicts in row order),
            ``timestamp``.

        Raises
        ------
        ValueError
            If there are no ROIs or none has a pixel, a channel is unknown, or
            ``executor`` is given with ``n_processes > 1``.
        PermissionError
            If the dataset is read-only.

        See Also
        --------
        napari_sima.core.extract : the algorithm, unobserved pixels, demixing, speed.
        """
        from .extract import extract

        return extract(
            self,
            rois,
            signal_channel=signal_channel,
            label=label,
            remove_overlap=remove_overlap,
            n_processes=n_processes,
            demix_channel=demix_channel,
            save_summary=save_summary,
            executor=executor,
            chunk_frames=chunk_frames,
        )

    def signal_labels(self, channel: int | str = 0) -> list[str]:
        """Labels of a channel's stored signal sets, oldest first (by timestamp, then label).

        A dataset folder's index is read without loading the sets themselves.
        """
        from . import signal_store

        ch = self.resolve_channel(channel)
        stamps: dict[str, str] | None = None
        if self._savedir is not None:
            folder = signal_store.store_dir(self._savedir, ch)
            if (folder / signal_store.INDEX_FILE).exists():
                stamps = signal_store.signal_set_timestamps(folder)
        if stamps is None:
            stamps = {k: str(v.get("timestamp") or "") for k, v in self.signals(ch).items()}
        return sorted(stamps, key=lambda k: (str(stamps[k] or ""), k))

    def signals(self, channel: int | str = 0) -> dict[str, dict[str, Any]]:
        """Stored signal sets of a channel, ``{label: signals}`` (empty when none).

        Read fresh from the dataset folder on each access (a legacy SIMA folder's
        ``signals_<k>.pkl`` through the restricted unpickler); kept in memory for a
        dataset without a folder.
        """
        from . import signal_store

        ch = self.resolve_channel(channel)
        if self._savedir is None:
            return dict(signal_store.memory_store(self, ch))
        return signal_store.dataset_signal_sets(self._savedir, ch)

    def delete_signals(self, label: str, channel: int | str = 0) -> None:
        """Remove a stored signal set; an unknown label is silently ignored."""
        from . import signal_store

        self._check_writable()
        ch = self.resolve_channel(channel)
        if self._savedir is None:
            signal_store.memory_store(self, ch).pop(label, None)
            return
        signal_store.delete_signal_set(signal_store.store_dir(self._savedir, ch), label)

    def export_signals(
        self,
        path: str | os.PathLike,
        fmt: str = "csv",
        channel: int | str = 0,
        signals_label: str | None = None,
    ) -> None:
        """Write a stored signal set (default: the most recent) to a file.

        Parameters
        ----------
        path : path-like
            Output file.
        fmt : {'csv', 'tsv', 'npz'}
            Comma-separated, SIMA's tab-separated layout, or NumPy arrays with the ROI
            properties (see :func:`napari_sima.core.signal_store.export_signals`).
        channel : int or str
            Channel whose signals are exported.
        signals_label : str, optional
            The set (default: the one with the latest timestamp).

        Raises
        ------
        KeyError
            If there are no signals (or no such set) for the channel.
        """
        from . import signal_store
        from .roi_store import most_recent_label

        ch = self.resolve_channel(channel)
        if self._savedir is None:
            sets = signal_store.memory_store(self, ch)
            if signals_label is None:
                signals_label = most_recent_label(
                    {k: v.get("timestamp") or "" for k, v in sets.items()}
                )
            if signals_label not in sets:
                raise KeyError(
                    f"no signal set {signals_label!r} for channel {ch}; stored sets: {sorted(sets)}"
                )
            signals = sets[signals_label]
        else:
            signals = signal_store.dataset_signal_set(self._savedir, ch, signals_label)
        signal_store.export_signals(signals, path, fmt=fmt)

    # -- spikes -------------------------------------------------------------------------------
    def infer_spikes(
        self,
        channel: int | str = 0,
        label: str | None = None,
        gamma: Any = None,
        share_gamma: bool = True,
        mode: str = "correct",
        verbose: bool = False,
        solver: str = "oasis",
        progress: Any = None,
        n_processes: int = 1,
        *,
        executor: cf.Executor | None = None,
        chunk_rows: int | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]]:
        """Infer spikes of a stored signal set (default: the most recent) and store them.

        Returns ``(spikes, fits, parameters)``: per sequence, ``(n_rois, n_frames)``
        arrays and ``{'gamma', 'sigma', 'baseline', 'spike_scale'}`` lists over ROIs;
        they are also stored with the signal set as ``spikes``, ``spikes_fits`` and
        ``spikes_params``.  ``executor`` (e.g. ``client.get_executor()`` of a
        ``dask.distributed`` client) solves blocks of ``chunk_rows`` traces on its
        workers, with identical numbers.

        See Also
        --------
        napari_sima.core.spikes.infer_spikes : parameters, model and solvers.
        """
        from .spikes import infer_spikes

        return infer_spikes(
            self,
            channel=channel,
            label=label,
            gamma=gamma,
            share_gamma=share_gamma,
            mode=mode,
            verbose=verbose,
            solver=solver,
            progress=progress,
            n_processes=n_processes,
            executor=executor,
            chunk_rows=chunk_rows,
        )

    # -- exports ------------------------------------------------------------------------------
    def export_nwb(
        self,
        path: str | os.PathLike,
        channel: int | str = 0,
        signals_label: str | None = None,
        rois_label: str | None = None,
        **metadata: Any,
    ) -> Path:
        """Write the ROIs, traces (raw, ΔF/F, spikes) and projections to an NWB file.

        Needs the optional ``nwb`` extra (``pip install 'napari-sima[nwb]'``).

        Parameters
        ----------
        path : path-like
            Output file, written atomically.
        channel : int or str
            Channel whose signal set and projections are exported.
        signals_label : str, optional
            The signal set (default: the most recent); its ROIs are exported with it.
        rois_label : str, optional
            Export this ROI set without traces instead.
        **metadata
            ``session_description``, ``identifier``, ``session_start_time``,
            ``experimenter``, ``institution``, ``lab``, ``imaging_rate``, ``indicator``,
            ``location``, ``excitation_lambda``, ``emission_lambda``, ``overwrite``.

        Returns
        -------
        pathlib.Path
            The file written.

        See Also
        --------
        napari_sima.core.nwb.export_nwb : layout of the file, defaults and errors.
        """
        from .nwb import export_nwb

        return export_nwb(
            self,
            path,
            channel=channel,
            signals_label=signals_label,
            rois_label=rois_label,
            **metadata,
        )

    def export_averages(
        self,
        filenames: Any,
        fmt: str = "TIFF16",
        scale_values: bool = True,
        projection_type: str = "average",
    ) -> None:
        """Write the time projection of every channel to TIFF or HDF5.

        Parameters
        ----------
        filenames : str or list of str
            One file per channel for TIFF formats; one file for ``'HDF5'``.
        fmt : {'TIFF8', 'TIFF16', 'HDF5'}
            Output format.
        scale_values : bool
            Scale each channel to the full range of the output type.
        projection_type : {'average', 'std', 'kurtosis'}
            Which projection to write.

        See Also
        --------
        napari_sima.core.export.export_averages
        """
        from .export import export_averages

        export_averages(
            self, filenames, fmt=fmt, scale_values=scale_values, projection_type=projection_type
        )

    def export_frames(
        self,
        filenames: Any,
        fmt: str = "TIFF16",
        fill_gaps: bool = True,
        scale_values: bool = False,
        compression: str | None = None,
        interlace: bool = False,
    ) -> None:
        """Write every sequence's frames to TIFF or HDF5 files.

        Parameters
        ----------
        filenames : nested list of str
            ``[sequence][plane][channel]`` for TIFF, ``[sequence][channel]`` for
            interlaced TIFF, ``[sequence]`` for HDF5.
        fmt : {'TIFF8', 'TIFF16', 'HDF5'}
            Output format.
        fill_gaps : bool
            Replace unobserved (NaN) pixels by the nearest earlier (else later)
            observation.
        scale_values : bool
            Scale each channel to the output type's range.
        compression : str, optional
            HDF5 compression (``'gzip'``, ``'lzf'``).
        interlace : bool
            TIFF only: one file per channel with planes interleaved.

        See Also
        --------
        napari_sima.core.export.export_frames
        """
        from .export import export_frames

        export_frames(
            self,
            filenames,
            fmt=fmt,
            fill_gaps=fill_gaps,
            scale_values=scale_values,
            compression=compression,
            interlace=interlace,
        )
