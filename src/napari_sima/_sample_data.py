"""Sample data: a small synthetic calcium-imaging dataset generated in code.

Two sequences (sessions) of :data:`SAMPLE_FRAMES` frames, one plane of
128 × 128 pixels, two channels — a functional ``'GCaMP'`` channel with calcium
transients and a static structural ``'tdTomato'`` channel — and
:data:`SAMPLE_CELLS` cells with known footprints and spike trains
(:func:`sample_movie` returns the ground truth).  Nothing is downloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._layers import LayerDataTuple, dataset_layer_data

if TYPE_CHECKING:
    from .core import ImagingDataset, ROIList
    from .core.synthetic import SyntheticMovie

#: Name stem of the sample layers.
SAMPLE_NAME = "calcium"

#: Channel names of the sample dataset.
SAMPLE_CHANNELS = ("GCaMP", "tdTomato")

#: Frames per sequence.
SAMPLE_FRAMES = 200

#: ``(planes, rows, columns, channels)`` of one frame.
SAMPLE_FRAME_SHAPE = (1, 128, 128, 2)

#: Number of sequences.
SAMPLE_SEQUENCES = 2

#: Number of cells.
SAMPLE_CELLS = 12

#: Seed of the generator (the sample is the same on every machine).
SAMPLE_SEED = 0


def sample_movie() -> SyntheticMovie:
    """Return the synthetic movie behind the sample data, with its ground truth.

    Returns
    -------
    SyntheticMovie
        ``sequences`` (``(t, z, y, x, c)`` uint16 arrays) and ``cells`` (footprints,
        masks, spikes, calcium).
    """
    from .core.synthetic import make_calcium_movie

    return make_calcium_movie(
        num_frames=SAMPLE_FRAMES,
        frame_shape=SAMPLE_FRAME_SHAPE,
        num_sequences=SAMPLE_SEQUENCES,
        num_cells=SAMPLE_CELLS,
        seed=SAMPLE_SEED,
        allow_overlap=False,
    )


def sample_dataset(movie: SyntheticMovie | None = None) -> ImagingDataset:
    """Return the sample as an in-memory :class:`~napari_sima.core.ImagingDataset`.

    Parameters
    ----------
    movie : SyntheticMovie, optional
        A movie from :func:`sample_movie` to wrap (default: generate it).

    Returns
    -------
    ImagingDataset
        Two sequences, channels named ``'GCaMP'`` and ``'tdTomato'``, no folder
        (save it with ``dataset.save('name.sima')``).
    """
    from .core import ImagingDataset, Sequence

    movie = sample_movie() if movie is None else movie
    sequences = [Sequence.create("ndarray", array, "tzyxc") for array in movie.sequences]
    return ImagingDataset(sequences, None, channel_names=list(SAMPLE_CHANNELS))


def sample_true_rois(movie: SyntheticMovie | None = None, start: int = 1) -> ROIList:
    """Return the sample's true cells as ROIs (labels ``cell-<start>``, ``cell-<start+1>``...).

    Parameters
    ----------
    movie : SyntheticMovie, optional
        A movie from :func:`sample_movie` (default: generate it).
    start : int
        Number in the first ROI's label.

    Returns
    -------
    ROIList
        One boolean-mask ROI per cell, sized to the sample's ``(z, y, x)``.
    """
    from .core import ROI, ROIList

    movie = sample_movie() if movie is None else movie
    shape = movie.frame_shape[:3]
    return ROIList(
        [
            ROI(mask=cell.mask, label=f"cell-{i + start}", im_shape=shape)
            for i, cell in enumerate(movie.cells)
        ]
    )


def make_sample_data() -> list[LayerDataTuple]:
    """Return the image layers of the sample dataset (napari sample-data command).

    Returns
    -------
    list of (data, kwargs, 'image')
        One lazy layer per sequence and channel, named e.g.
        ``'calcium seq 0 [GCaMP]'``.
    """
    return dataset_layer_data(sample_dataset(), SAMPLE_NAME)
