"""The default segmentation strategy and the named presets offered by the GUI and CLI.

:func:`default_strategy` is what napari-sima runs when the user does not choose: STICA
with parameters and post-processing chosen by measurement against ground truth
(``benchmarks/bench_segment_quality.py``; the table and the reasoning are in
``docs/segmentation.md``).  :data:`STRATEGIES` maps preset names to factories; every
factory takes ``channel`` and ``seed`` keywords and returns a new, independent
strategy with its post-processing steps appended, which the caller may edit.

Strategy modules are imported inside the factories, so importing this module is
cheap and never fails because of one strategy.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import SegmentationStrategy

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "ca1pc",
    "default_strategy",
    "configure_strategy",
    "make_strategy",
    "normcuts",
    "normcuts_sima",
    "stica",
    "stica_sima",
]

# -- measured choices (see docs/segmentation.md, "How the default was chosen") ----------
#: Offset principal / independent components of the default STICA.
STICA_COMPONENTS = 10
#: Space/time weight of the default STICA.
STICA_MU = 0.1
#: Smallest blob (pixels) kept from a component map, and the size range of the ROIs.
MIN_ROI_SIZE = 20
MAX_ROI_SIZE = 1000
#: Douglas-Peucker tolerance of the outline smoothing (pixels).
SMOOTH_TOLERANCE = 1.0
#: Overlap (fraction of the smaller ROI) above which two ROIs are one cell.
MERGE_THRESHOLD = 0.9
#: Smallest circularity ``4 pi A / P**2`` kept.
CIRCULARITY_THRESHOLD = 0.5
#: Normalized cuts: offset PCs of the affinity, cut penalty, and the size above which
#: a region is cut whatever the cost (so large: background is cut only where cheap).
NORMCUTS_PCS = 10
NORMCUTS_MAX_PEN = 0.02
NORMCUTS_MAX_SIZE = 100_000


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_channel(channel: Any) -> int | str:
    if isinstance(channel, bool) or not isinstance(channel, (numbers.Integral, str)):
        raise TypeError(f"channel must be an index or a name, got {channel!r}")
    return channel if isinstance(channel, str) else int(channel)


def stica(channel: int | str = 0, seed: int = 0) -> SegmentationStrategy:
    """Return STICA with our measured parameters and post-processing (the default).

    ``STICA(components=10, mu=0.1)`` followed by ``SparseROIsFromMasks(min_size=20)``,
    ``SizeFilter(20, 1000)``, ``SmoothROIBoundaries(tolerance=1.0)``,
    ``MergeOverlapping(0.9)`` and ``CircularityFilter(0.5)``.

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    seed : int
        Seed of the ICA (results are repeatable).

    Returns
    -------
    SegmentationStrategy
    """
    from .postprocess import (
        CircularityFilter,
        MergeOverlapping,
        SizeFilter,
        SmoothROIBoundaries,
        SparseROIsFromMasks,
    )
    from .stica import STICA

    strategy = STICA(
        channel=_check_channel(channel),
        mu=STICA_MU,
        components=STICA_COMPONENTS,
        seed=_check_seed(seed),
    )
    strategy.append(SparseROIsFromMasks(min_size=MIN_ROI_SIZE))
    strategy.append(SizeFilter(min_size=MIN_ROI_SIZE, max_size=MAX_ROI_SIZE))
    strategy.append(SmoothROIBoundaries(tolerance=SMOOTH_TOLERANCE))
    strategy.append(MergeOverlapping(threshold=MERGE_THRESHOLD))
    strategy.append(CircularityFilter(circularity_threshold=CIRCULARITY_THRESHOLD))
    return strategy


def stica_sima(channel: int | str = 0, seed: int = 0) -> SegmentationStrategy:
    """Return STICA with SIMA's defaults and the post-processing its documentation shows.

    ``STICA()`` (75 components, ``mu=0.01``) followed by ``SparseROIsFromMasks()``,
    ``SmoothROIBoundaries()`` and ``MergeOverlapping(0.5)``.

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    seed : int
        Seed of the ICA.

    Returns
    -------
    SegmentationStrategy
    """
    from .postprocess import MergeOverlapping, SmoothROIBoundaries, SparseROIsFromMasks
    from .stica import STICA

    strategy = STICA(channel=_check_channel(channel), seed=_check_seed(seed))
    strategy.append(SparseROIsFromMasks())
    strategy.append(SmoothROIBoundaries())
    strategy.append(MergeOverlapping(threshold=0.5))
    return strategy


def normcuts(channel: int | str = 0, seed: int = 0) -> SegmentationStrategy:
    """Return normalized cuts with our measured parameters and post-processing.

    ``PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=10), cut_max_pen=0.02,
    cut_max_size=100000)`` followed by ``SizeFilter(20, 1000)`` and
    ``CircularityFilter(0.5)``: regions are cut only where the cut is cheap, so the
    background stays in large pieces that the size filter removes.

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    seed : int
        Seed of the eigensolvers' start vectors.

    Returns
    -------
    SegmentationStrategy
    """
    from .affinity import BasicAffinityMatrix
    from .normcut import PlaneNormalizedCuts
    from .postprocess import CircularityFilter, SizeFilter

    seed = _check_seed(seed)
    strategy = PlaneNormalizedCuts(
        affinity_method=BasicAffinityMatrix(
            channel=_check_channel(channel), num_pcs=NORMCUTS_PCS, seed=seed
        ),
        cut_max_pen=NORMCUTS_MAX_PEN,
        cut_min_size=40,
        cut_max_size=NORMCUTS_MAX_SIZE,
        seed=seed,
    )
    strategy.append(SizeFilter(min_size=MIN_ROI_SIZE, max_size=MAX_ROI_SIZE))
    strategy.append(CircularityFilter(circularity_threshold=CIRCULARITY_THRESHOLD))
    return strategy


def normcuts_sima(channel: int | str = 0, seed: int = 0) -> SegmentationStrategy:
    """Return ``PlaneNormalizedCuts`` with SIMA's defaults (and default affinity matrix).

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    seed : int
        Seed of the eigensolvers' start vectors.

    Returns
    -------
    SegmentationStrategy
    """
    from .affinity import BasicAffinityMatrix
    from .normcut import PlaneNormalizedCuts

    seed = _check_seed(seed)
    return PlaneNormalizedCuts(
        affinity_method=BasicAffinityMatrix(channel=_check_channel(channel), seed=seed), seed=seed
    )


def ca1pc(channel: int | str = 0, seed: int = 0) -> SegmentationStrategy:
    """Return ``PlaneCA1PC`` (packed cells with a dark nucleus) with SIMA's defaults.

    Not tuned: the synthetic movies we measure on have no dark nuclei, which is what
    this strategy looks for, so there is no ground truth to tune it against.

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    seed : int
        Seed of the eigensolvers' start vectors.

    Returns
    -------
    SegmentationStrategy
    """
    from .ca1pc import PlaneCA1PC

    return PlaneCA1PC(channel=_check_channel(channel), seed=_check_seed(seed))


#: Preset name -> factory ``(channel=0, seed=0) -> SegmentationStrategy``.  The
#: ``-sima`` presets reproduce SIMA's defaults (and, for STICA, the post-processing
#: SIMA's documentation shows); ``'stica'`` and ``'normcuts'`` are napari-sima's
#: measured parameters; ``'ca1pc'`` is SIMA's ``PlaneCA1PC``.  The first line of each
#: factory's docstring describes it.
STRATEGIES: dict[str, Callable[..., SegmentationStrategy]] = {
    "stica": stica,
    "normcuts": normcuts,
    "ca1pc": ca1pc,
    "stica-sima": stica_sima,
    "normcuts-sima": normcuts_sima,
}

#: Name of the preset :func:`default_strategy` uses.
DEFAULT_STRATEGY = "stica"


def make_strategy(
    name: str, channel: int | str = 0, *, num_planes: int = 1, seed: int = 0
) -> SegmentationStrategy:
    """Build the preset ``name`` (a key of :data:`STRATEGIES`) for a dataset.

    Parameters
    ----------
    name : str
        Preset name, e.g. ``'stica'``, ``'normcuts'``, ``'ca1pc'``.
    channel : int or str
        Channel to segment, by index or name.
    num_planes : int
        Planes of the dataset to segment.  With more than one, the preset is wrapped
        in ``PlaneWiseSegmentation`` (each plane segmented on its own).
    seed : int
        Seed (results are repeatable).

    Returns
    -------
    SegmentationStrategy

    Raises
    ------
    KeyError
        If ``name`` is not a preset (the message lists them).
    ValueError
        For ``num_planes < 1`` or a negative seed.
    """
    try:
        factory = STRATEGIES[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown segmentation preset {name!r}; choose one of {sorted(STRATEGIES)}"
        ) from None
    if (
        isinstance(num_planes, bool)
        or not isinstance(num_planes, numbers.Integral)
        or num_planes < 1
    ):
        raise ValueError(f"num_planes must be an integer >= 1, got {num_planes!r}")
    strategy = factory(channel=channel, seed=seed)
    if num_planes > 1:
        from .planewise import PlaneWiseSegmentation

        strategy = PlaneWiseSegmentation(strategy)
    return strategy


def default_strategy(
    channel: int | str = 0, *, num_planes: int = 1, seed: int = 0
) -> SegmentationStrategy:
    """Return the strategy napari-sima uses by default (the ``'stica'`` preset).

    Parameters
    ----------
    channel : int or str
        Channel to segment, by index or name.
    num_planes : int
        Planes of the dataset; with more than one the strategy segments each plane on
        its own (``PlaneWiseSegmentation``), so cells of neighbouring planes are never
        joined.
    seed : int
        Seed (results are repeatable).

    Returns
    -------
    SegmentationStrategy
        A new strategy with its post-processing steps; edit it freely.

    Examples
    --------
    >>> strategy = default_strategy(channel="GCaMP")
    >>> strategy.parameters()["strategy"], strategy.components, strategy.mu
    ('STICA', 10, 0.1)
    >>> len(strategy.steps)
    5
    """
    return make_strategy(DEFAULT_STRATEGY, channel, num_planes=num_planes, seed=seed)


def _coerce_value(name: str, value: Any, current: Any, where: str) -> Any:
    """Convert a parameter value (often a string from a command line) to the field's type."""
    if isinstance(value, str) and not isinstance(current, str):
        text = value.strip()
        if text.lower() in ("none", "null"):
            return None
        if isinstance(current, bool):
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"{where}: {name}={value!r} is not a boolean (true/false)")
        try:
            import json

            return json.loads(text)
        except ValueError:
            return text  # e.g. a channel name; the strategy's own checks judge it
    return value


def configure_strategy(
    strategy: SegmentationStrategy, params: dict[str, Any] | None, where: str = "segment"
) -> SegmentationStrategy:
    """Return a copy of ``strategy`` with some of its parameters replaced.

    Parameters
    ----------
    strategy : SegmentationStrategy
        E.g. ``make_strategy('stica')``.  For a ``PlaneWiseSegmentation`` the
        parameters apply to its plane strategy (every plane).
    params : dict
        ``{field: value}``; values may be strings (``'20'``, ``'0.5'``, ``'true'``,
        ``'[1, 2]'``), converted to the field's type.  Post-processing steps are kept.
    where : str
        Prefix of error messages (the command or pipeline step).

    Returns
    -------
    SegmentationStrategy

    Raises
    ------
    ValueError
        For a parameter the strategy does not have (the message lists those it has),
        or a value the strategy refuses.
    """
    import copy
    import dataclasses

    if not params:
        return copy.deepcopy(strategy)
    from .planewise import PlaneWiseSegmentation

    if isinstance(strategy, PlaneWiseSegmentation):
        inner = strategy.plane_strategy
        if isinstance(inner, list):
            configured: Any = [configure_strategy(s, params, where) for s in inner]
        else:
            configured = configure_strategy(inner, params, where)
        out = copy.deepcopy(strategy)
        out.plane_strategy = configured
        return out
    if not dataclasses.is_dataclass(strategy):
        raise ValueError(f"{where}: {type(strategy).__name__} has no settable parameters")
    fields = {f.name: f for f in dataclasses.fields(strategy) if f.init}
    changes = {}
    for name, value in params.items():
        if name not in fields:
            raise ValueError(
                f"{where}: {type(strategy).__name__} has no parameter {name!r}; its "
                f"parameters are {sorted(fields)}"
            )
        changes[name] = _coerce_value(name, value, getattr(strategy, name), where)
    try:
        out = dataclasses.replace(strategy, **changes)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    out.steps = copy.deepcopy(list(strategy.steps))
    return out
