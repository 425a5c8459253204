"""Automatic segmentation: strategies, post-processing steps and their evaluation.

SIMA's segmentation framework, modernised (see ``docs/segmentation.md``):

Strategies (dataclasses; ``strategy.segment(dataset)`` or ``dataset.segment(strategy)``)
    :class:`STICA`, :class:`PlaneNormalizedCuts` (with :class:`BasicAffinityMatrix` or
    :class:`AffinityMatrixCA1PC`), :class:`PlaneCA1PC`, :class:`PlaneWiseSegmentation`.
Post-processing steps (``strategy.append(step)``; they run in order)
    :class:`SparseROIsFromMasks`, :class:`SmoothROIBoundaries`, :class:`MergeOverlapping`,
    :class:`ROIFilter`, :class:`SizeFilter`, :class:`CircularityFilter`,
    :class:`CA1PCNucleus`.
Defaults and presets
    :func:`default_strategy` (chosen by measurement against ground truth),
    :data:`STRATEGIES`, :func:`make_strategy`.
Evaluation
    :func:`match_rois` (IoU, Hungarian matching, precision / recall / F1).
Building blocks
    :func:`dataset_opca` / :func:`offset_pca` (offset PCA), :class:`SegmentProgress`.
"""

from .affinity import AffinityMatrix, AffinityMatrixCA1PC, BasicAffinityMatrix
from .base import PostProcessingStep, SegmentationStrategy, SegmentProgress
from .ca1pc import CA1PCNucleus, PlaneCA1PC
from .defaults import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    configure_strategy,
    default_strategy,
    make_strategy,
)
from .evaluate import MatchResult, match_rois
from .normcut import PlaneNormalizedCuts
from .opca import dataset_opca, iter_dataset_opca, offset_pca
from .planewise import PlaneWiseSegmentation
from .postprocess import (
    CircularityFilter,
    MergeOverlapping,
    ROIFilter,
    SizeFilter,
    SmoothROIBoundaries,
    SparseROIsFromMasks,
)
from .stica import STICA

__all__ = [
    "DEFAULT_STRATEGY",
    "STICA",
    "STRATEGIES",
    "AffinityMatrix",
    "AffinityMatrixCA1PC",
    "BasicAffinityMatrix",
    "CA1PCNucleus",
    "CircularityFilter",
    "MatchResult",
    "MergeOverlapping",
    "PlaneCA1PC",
    "PlaneNormalizedCuts",
    "PlaneWiseSegmentation",
    "PostProcessingStep",
    "ROIFilter",
    "SegmentProgress",
    "SegmentationStrategy",
    "SizeFilter",
    "SmoothROIBoundaries",
    "SparseROIsFromMasks",
    "dataset_opca",
    "default_strategy",
    "iter_dataset_opca",
    "configure_strategy",
    "make_strategy",
    "match_rois",
    "offset_pca",
]
