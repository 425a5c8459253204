"""``napari-sima create MOVIE... -o NAME.sima``: a dataset from movie files."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CommandError, Reporter, UsageError, add_command, plural

if TYPE_CHECKING:
    from ..core.sequence import Sequence

#: Movie formats the command line knows, by the name ``--format`` takes.
FORMATS = ("TIFF", "TIFFs", "HDF5")
#: Format chosen from a movie's suffix when ``--format`` is not given.
SUFFIX_FORMATS = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".h5": "HDF5",
    ".hdf5": "HDF5",
    ".hdf": "HDF5",
    ".he5": "HDF5",
}


def infer_format(movie: str, fmt: str | None) -> str:
    """Return the format of ``movie``: ``fmt`` if given, else from the suffix.

    A glob pattern (``'frames/*.tif'``) that is not an existing file is ``'TIFFs'``.

    Raises
    ------
    UsageError
        If the suffix names no known format.
    """
    if fmt:
        return fmt
    if glob.has_magic(movie) and not os.path.exists(movie):
        return "TIFFs"
    suffix = Path(movie).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    raise UsageError(
        f"cannot tell the format of {movie!r} from its suffix (known: "
        f"{', '.join(sorted(SUFFIX_FORMATS))}, or a quoted glob pattern for TIFFs); "
        f"give --format {' / '.join(FORMATS)}"
    )


def open_movie(
    movie: str,
    fmt: str | None,
    *,
    num_planes: int | None = None,
    num_channels: int | None = None,
    dim_order: str | None = None,
    group: str | None = None,
    key: str | None = None,
) -> tuple[Sequence, str]:
    """Open one movie as a :class:`~napari_sima.core.Sequence`; ``(sequence, format)``.

    Parameters
    ----------
    movie : str
        A TIFF or HDF5 file; for ``'TIFFs'`` a glob pattern (one file per frame) or a
        multi-page file, several channels separated by commas.
    fmt : {'TIFF', 'TIFFs', 'HDF5'} or None
        The format (default: from the suffix, see :func:`infer_format`).
    num_planes, num_channels : int, optional
        TIFF only: how the pages of a plain multi-page file interleave.
    dim_order, group, key : str, optional
        HDF5 only: axis order (default: the file's dimension labels), group and
        dataset name.

    Raises
    ------
    UsageError
        If an option does not apply to the movie's format.
    OSError, ValueError
        From the core, for a missing or unreadable movie.
    """
    from ..core.sequence import Sequence

    kind = infer_format(movie, fmt)
    tiff_opts = {"--num-planes": num_planes, "--num-channels": num_channels}
    h5_opts = {"--dim-order": dim_order, "--group": group, "--key": key}
    if kind == "TIFF":
        wrong = h5_opts
    elif kind == "HDF5":
        wrong = tiff_opts
    else:
        wrong = {**tiff_opts, **h5_opts}
    given = [name for name, value in wrong.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used with the {kind} movie {movie!r}")
    if kind == "TIFF":
        seq = Sequence.create(
            "TIFF", movie, num_planes=num_planes or 1, num_channels=num_channels or 1
        )
    elif kind == "TIFFs":
        seq = Sequence.create("TIFFs", [[entry for entry in movie.split(",")]])
    else:
        seq = Sequence.create("HDF5", movie, dim_order, group=group, key=key)
    return seq, kind


def dataset_path(name: str) -> Path:
    """Return the absolute dataset folder for ``-o NAME`` (``.sima`` appended if missing)."""
    path = Path(os.path.abspath(name))
    return path if path.suffix == ".sima" else path.with_name(path.name + ".sima")


def _channel_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UsageError(f"--channel-names takes names separated by commas, got {text!r}")
    return names


def cmd_create(args: argparse.Namespace, reporter: Reporter) -> int:
    """Create a dataset folder from one or more movies (one sequence each)."""
    from ..core.dataset import ImagingDataset, is_dataset_folder
    from ..core.provenance import make_provenance, movie_ref

    target = dataset_path(args.output)
    names = _channel_names(args.channel_names)
    replacing = is_dataset_folder(target)
    if replacing and not args.force:
        raise CommandError(f"{str(target)!r} already holds a dataset; give --force to replace it")
    if target.exists() and not replacing and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(
            f"{str(target)!r} exists and is neither a dataset nor an empty folder; "
            f"choose another -o (not removed, even with --force)"
        )
    sequences = []
    kinds = []
    with reporter.timed("open"):
        for movie in args.movies:
            seq, kind = open_movie(
                movie,
                args.format,
                num_planes=args.num_planes,
                num_channels=args.num_channels,
                dim_order=args.dim_order,
                group=args.group,
                key=args.key,
            )
            for f in seq.files:
                if Path(f).resolve().is_relative_to(target.resolve()):
                    raise CommandError(
                        f"the movie {f!r} lies inside the dataset folder {str(target)!r}; "
                        f"keep movies outside it"
                    )
            sequences.append(seq)
            kinds.append(kind)
    ds = ImagingDataset(sequences, None, channel_names=names)  # checks shapes and names
    ds.creation_provenance = make_provenance(
        "create",
        {
            "formats": kinds,
            "num_planes": args.num_planes,
            "num_channels": args.num_channels,
            "dim_order": args.dim_order,
            "group": args.group,
            "key": args.key,
            "channel_names": ds.channel_names,
        },
        {"movies": {"files": [list(s.files) for s in sequences], "fingerprint": movie_ref(ds)}},
    )
    with reporter.timed("save"):
        if replacing:
            shutil.rmtree(target)
            reporter.note(f"replaced the dataset {str(target)!r}")
        ds.save(savedir=target)
    reporter.set_dataset(ds.savedir)
    reporter.output("dataset", ds.savedir)
    reporter.count("sequences", ds.num_sequences)
    reporter.count("frames", ds.num_frames)
    reporter.summary["frame_shape"] = list(ds.frame_shape)
    reporter.summary["channels"] = ds.channel_names
    reporter.result(
        f"created {ds.savedir}: {plural(ds.num_sequences, 'sequence')}, {ds.num_frames} "
        f"frames of (planes, rows, columns, channels) = {ds.frame_shape}"
    )
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``create`` subcommand."""
    p = add_command(
        sub,
        "create",
        cmd_create,
        parents,
        help="create a dataset folder from movie files (one sequence per movie)",
        description=(
            "Create a dataset folder NAME.sima from movies; each MOVIE is one sequence "
            "(trial, session) of the same field of view.  The format comes from the "
            "suffix (.tif/.tiff: TIFF, .h5/.hdf5: HDF5, a quoted glob pattern such as "
            "'frames/*.tif': TIFFs, one file per frame) unless --format is given.  For "
            "TIFFs, several channels are given as comma-separated patterns."
        ),
        epilog=(
            "examples:\n"
            "  napari-sima create trial1.tif trial2.tif -o mouse1.sima\n"
            "  napari-sima create session.h5 --dim-order tzyxc -o s.sima "
            "--channel-names GCaMP,tdTomato\n"
            "  napari-sima create 'frames/*.tif' -o frames.sima"
        ),
    )
    p.add_argument("movies", nargs="+", metavar="MOVIE", help="movie file (or TIFFs pattern)")
    p.add_argument(
        "-o", "--output", required=True, metavar="NAME.sima", help="dataset folder to create"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        type=lambda s: {f.lower(): f for f in FORMATS}.get(s.lower(), s),
        help="movie format (default: from each movie's suffix)",
    )
    p.add_argument(
        "--num-planes",
        type=int,
        metavar="N",
        help="TIFF: planes interleaved in a plain multi-page file (default 1; ImageJ, "
        "OME and ScanImage files describe their own axes)",
    )
    p.add_argument(
        "--num-channels",
        type=int,
        metavar="N",
        help="TIFF: channels interleaved in a plain multi-page file (default 1)",
    )
    p.add_argument(
        "--dim-order",
        metavar="ORDER",
        help="HDF5: axis order such as tzyxc or tyx (default: the file's dimension labels)",
    )
    p.add_argument("--group", metavar="GROUP", help="HDF5: group holding the movie (default /)")
    p.add_argument(
        "--key", metavar="KEY", help="HDF5: dataset name (default: the group's only dataset)"
    )
    p.add_argument(
        "--channel-names",
        metavar="A,B,...",
        help="channel names separated by commas (default 0, 1, ...)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing dataset folder")
