"""The segmentation framework: strategies, post-processing steps and progress.

A :class:`SegmentationStrategy` turns an :class:`~napari_sima.core.ImagingDataset`
into an :class:`~napari_sima.core.ROIList`, then runs its post-processing steps in
the order they were appended (as in SIMA).  Strategies are dataclasses: their fields
are the typed parameters with SIMA's defaults, so a GUI can build its panel from
:func:`dataclasses.fields` and a pipeline can record :meth:`parameters`.

Long work is generator-shaped: :meth:`SegmentationStrategy.iter_segment` yields
:class:`SegmentProgress` ``(fraction, message)`` and returns the ROIs; closing the
generator cancels the work.  :meth:`SegmentationStrategy.segment` drives it.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..roi import ROIList

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "PostProcessingStep",
    "SegmentProgress",
    "SegmentationStrategy",
    "drive",
    "scaled",
]


class SegmentProgress(NamedTuple):
    """Progress of a segmentation.

    Attributes
    ----------
    fraction : float
        Work done, from 0 to 1.
    message : str
        What is being done (for a status line).
    """

    fraction: float
    message: str


SegmentGenerator = Generator[SegmentProgress, None, ROIList]


def scaled(gen: Generator[SegmentProgress, None, Any], start: float, stop: float) -> Generator[
    SegmentProgress, None, Any
]:
    """Re-map a sub-task's progress from ``[0, 1]`` to ``[start, stop]``.

    Use as ``result = yield from scaled(sub_generator, 0.2, 0.6)``.

    Parameters
    ----------
    gen : generator of SegmentProgress
        The sub-task.
    start, stop : float
        Fractions of the whole task the sub-task spans.

    Returns
    -------
    object
        The sub-task's return value.
    """
    span = stop - start
    try:
        item = next(gen)
        while True:
            fraction = min(1.0, max(0.0, float(item.fraction)))
            yield SegmentProgress(start + span * fraction, item.message)
            item = next(gen)
    except StopIteration as stop_iteration:
        return stop_iteration.value
    finally:
        gen.close()


def drive(
    gen: Generator[SegmentProgress, None, Any],
    progress: Callable[[float, str], Any] | None = None,
) -> Any:
    """Run a progress generator to the end and return its value.

    Parameters
    ----------
    gen : generator of SegmentProgress
    progress : callable, optional
        Called as ``progress(fraction, message)`` for every report.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop_iteration:
            return stop_iteration.value
        if progress is not None:
            progress(float(item.fraction), str(item.message))


class PostProcessingStep(abc.ABC):
    """A step applied to the ROIs a strategy found (filters, smoothing, merging).

    Subclasses are dataclasses holding the step's parameters and implement
    :meth:`apply`.
    """

    @abc.abstractmethod
    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return the processed ROIs (a new list; the input is left unchanged).

        Parameters
        ----------
        rois : ROIList
            ROIs from the strategy or from the previous step.
        dataset : ImagingDataset, optional
            The dataset being segmented (some steps read its images).

        Returns
        -------
        ROIList
        """

    def parameters(self) -> dict[str, Any]:
        """Return the step's name and parameters as JSON-able values."""
        return {"step": type(self).__name__, **_field_values(self)}


class SegmentationStrategy(abc.ABC):
    """Base class of segmentation strategies (subclasses are dataclasses).

    Subclasses implement :meth:`_iter_segment`; post-processing steps added with
    :meth:`append` run afterwards, in order.
    """

    #: Whether the strategy needs a dataset with exactly one plane.
    single_plane: bool = False

    @property
    def steps(self) -> list[PostProcessingStep]:
        """The post-processing steps, in the order they run (a list you may edit)."""
        try:
            return self.__dict__["_steps"]
        except KeyError:
            self.__dict__["_steps"] = steps = []
            return steps

    @steps.setter
    def steps(self, value: Iterable[PostProcessingStep]) -> None:
        value = list(value)
        for step in value:
            _check_step(step)
        self.__dict__["_steps"] = value

    def append(self, step: PostProcessingStep) -> None:
        """Add a post-processing step to run after the ones already added.

        Raises
        ------
        TypeError
            If ``step`` is not a :class:`PostProcessingStep`.
        """
        _check_step(step)
        self.steps.append(step)

    def parameters(self) -> dict[str, Any]:
        """Return the strategy's name, parameters and steps as JSON-able values."""
        return {
            "strategy": type(self).__name__,
            **_field_values(self),
            "post_processing": [step.parameters() for step in self.steps],
        }

    def check_dataset(self, dataset: ImagingDataset) -> None:
        """Raise ``ValueError`` if this strategy cannot segment ``dataset``."""
        if self.single_plane and dataset.frame_shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__} segments one plane, but the dataset has "
                f"{dataset.frame_shape[0]} planes; wrap it in "
                f"PlaneWiseSegmentation({type(self).__name__}(...)) or pass planes=[p]"
            )

    @abc.abstractmethod
    def _iter_segment(self, dataset: ImagingDataset) -> SegmentGenerator:
        """Find ROIs (before post-processing), yielding :class:`SegmentProgress`."""

    def iter_segment(self, dataset: ImagingDataset) -> SegmentGenerator:
        """Segment ``dataset`` as a generator (progress, then the ROIs as return value).

        Yields
        ------
        SegmentProgress
            ``(fraction, message)``; closing the generator cancels the work.

        Returns
        -------
        ROIList
            As the generator's return value.
        """
        self.check_dataset(dataset)
        return (yield from self._iter_with_steps(self._iter_segment(dataset), dataset))

    def _iter_with_steps(
        self, found: SegmentGenerator, dataset: ImagingDataset
    ) -> SegmentGenerator:
        """Run ``found`` (a generator of raw ROIs), then the post-processing steps."""
        steps = list(self.steps)
        share = 0.9 if steps else 1.0
        rois = yield from scaled(found, 0.0, share)
        if not isinstance(rois, (list, tuple)):
            raise TypeError(
                f"{type(self).__name__} found {type(rois).__name__}, not a list of ROIs"
            )
        rois = ROIList(list(rois))
        for k, step in enumerate(steps):
            yield SegmentProgress(
                share + (1 - share) * k / len(steps), f"post-processing: {type(step).__name__}"
            )
            rois = ROIList(list(step.apply(rois, dataset)))
        yield SegmentProgress(1.0, f"{len(rois)} ROIs")
        return rois

    def segment(
        self, dataset: ImagingDataset, progress: Callable[[float, str], Any] | None = None
    ) -> ROIList:
        """Segment ``dataset`` and return the ROIs (not stored; see ``dataset.segment``).

        Parameters
        ----------
        dataset : ImagingDataset
        progress : callable, optional
            Called as ``progress(fraction, message)``.

        Returns
        -------
        ROIList
        """
        return drive(self.iter_segment(dataset), progress)


def _check_step(step: Any) -> None:
    if not isinstance(step, PostProcessingStep):
        raise TypeError(
            f"post-processing steps must be PostProcessingStep objects, got "
            f"{type(step).__name__}"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (SegmentationStrategy, PostProcessingStep)):
        return value.parameters()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"class": type(value).__name__, **_field_values(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _field_values(obj: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(obj):
        return {}
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
