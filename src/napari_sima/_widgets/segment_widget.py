"""The Segment dock widget: find ROIs automatically with SIMA's segmentation strategies.

The widget is a thin shell over :meth:`napari_sima.core.ImagingDataset.iter_segment`:
pick a dataset (any dataset behind the viewer's layers), a strategy preset from
:data:`napari_sima.core.segment.defaults.STRATEGIES`, edit its parameters and its
post-processing steps, choose the planes and the ROI-set label, and run.  The
segmentation runs in a napari ``thread_worker`` with a progress bar and a Cancel
button; the core stores the ROI set with the dataset, and the widget shows it in the
ROIs dock (:class:`~napari_sima._widgets.roi_widget.ROIManagerWidget`) for curation.

Parameter panels are built from the strategies' and steps' dataclass fields
(:class:`~napari_sima._widgets._param_panel.ParameterPanel`, magicgui widgets chosen
from the type annotations), so the GUI and a script use the very same objects::

    strategy = widget.strategy()          # what Run would segment with
    dataset.segment(strategy, label="x")  # the same thing, in a script

Every action is a public method (``set_dataset``, ``set_strategy``, ``add_step``,
``remove_step``, ``move_step``, ``set_planes``, ``set_label``, ``run``, ``cancel``) so
scripts and tests can drive the widget without dialogs.  Errors reach the user as
napari notifications with the core's message, never as tracebacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._layers import METADATA_KEY, unwrap
from ._common import (
    blocked,
    make_status_label,
)
from ._dataset_dock import DatasetDock
from ._param_panel import (
    HIDDEN_FIELDS,
    INDENT,
    LABEL_WIDTH,
    NUMBER_MAX,
    OPTIONAL_START_VALUES,
    ChannelEditor,
    NestedEditor,
    OptionalEditor,
    ParameterPanel,
    ReadOnlyEditor,
    TupleEditor,
    _concrete_subclasses,
    field_annotation,
    field_docs,
    make_editor,
    short_doc,
)

if TYPE_CHECKING:
    from napari.layers import Shapes

    from ..core import ImagingDataset
    from ..core.roi import ROIList
    from ..core.segment.base import PostProcessingStep, SegmentationStrategy, SegmentProgress
    from .roi_widget import ROIManagerWidget

logger = logging.getLogger(__name__)

#: Errors from the core that are the user's to fix (their message is shown as is).
USER_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError)

#: Resolution of the progress bar.
PROGRESS_STEPS = 1000

#: Name of the ROIs dock in the npe2 manifest.
ROI_WIDGET_COMMAND = "napari-sima.roi_widget"

#: Label used when the strategy has no preset name.
DEFAULT_LABEL_STEM = "segmentation"

#: Warnings of one run shown as notifications at most (all go to the status line).
MAX_WARNINGS_SHOWN = 3

#: Edge width of the ROI outlines of a layer added without the ROIs dock.
EDGE_WIDTH = 0.6


# ---------------------------------------------------------------------------------------
# Registries
# ---------------------------------------------------------------------------------------
def strategy_presets() -> dict[str, Callable[[], SegmentationStrategy]]:
    """Return the strategy presets offered by the widget, ``{name: factory}``.

    Returns
    -------
    dict
        :data:`napari_sima.core.segment.defaults.STRATEGIES` (each factory returns a
        new strategy with its post-processing steps appended).
    """
    from ..core.segment.defaults import STRATEGIES

    return dict(STRATEGIES)


def default_preset() -> tuple[str | None, SegmentationStrategy]:
    """Return the default strategy and the name of the preset it comes from.

    Returns
    -------
    (str or None, SegmentationStrategy)
        :func:`napari_sima.core.segment.defaults.default_strategy` (for one plane: the
        widget segments the planes of a volume on their own itself), and the name of
        its preset (``DEFAULT_STRATEGY``, else the preset with the same parameters, else
        None).
    """
    from ..core.segment import defaults

    strategy = defaults.default_strategy()
    presets = strategy_presets()
    name = getattr(defaults, "DEFAULT_STRATEGY", None)
    if name in presets:
        return name, strategy
    wanted = strategy.parameters()
    for name, factory in presets.items():
        with contextlib.suppress(Exception):
            if factory().parameters() == wanted:
                return name, strategy
    return None, strategy


def available_steps() -> dict[str, type[PostProcessingStep]]:
    """Return the post-processing steps the widget can add, ``{class name: class}``.

    Every concrete post-processing step of :mod:`napari_sima.core.segment` whose
    parameters all have defaults (so it can be built and then edited).
    :class:`~napari_sima.core.segment.postprocess.ROIFilter` takes a Python function
    and is not offered; :class:`~napari_sima.core.segment.postprocess.SizeFilter`
    covers its common use.

    Returns
    -------
    dict
        In a stable order (by class name).
    """
    from ..core.segment import ca1pc, postprocess  # noqa: F401 - registers the steps
    from ..core.segment.base import PostProcessingStep

    classes = _concrete_subclasses(PostProcessingStep)
    return {cls.__name__: cls for cls in sorted(classes, key=lambda c: c.__name__)}


def find_roi_manager(viewer: napari.Viewer) -> ROIManagerWidget | None:
    """Return the ROIs dock of a viewer (a docked, open one), or None.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (proxied or not).

    Returns
    -------
    ROIManagerWidget or None
    """
    from .roi_widget import ROIManagerWidget

    viewer = unwrap(viewer)
    with contextlib.suppress(Exception):
        for widget in viewer.window.dock_widgets.values():
            widget = unwrap(widget)
            if isinstance(widget, ROIManagerWidget) and not getattr(widget, "_closed", False):
                return widget
    return None


# ---------------------------------------------------------------------------------------
# Post-processing steps
# ---------------------------------------------------------------------------------------
def _is_editable_step(step: Any) -> bool:
    cls = type(step)
    return cls in available_steps().values()


class StepCard(QFrame):
    """One post-processing step: title, up / down / remove buttons, parameter panel."""

    def __init__(self, step: Any, channel_names: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.step = step
        self.setObjectName(f"step_card_{type(step).__name__}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        header = QHBoxLayout()
        self.title = QLabel(type(step).__name__, self)
        self.title.setObjectName("step_title")
        self.title.setToolTip(short_doc(type(step)))
        header.addWidget(self.title, 1)
        self.up_button = self._tool("↑", "step_up_button", "Run this step earlier")
        self.down_button = self._tool("↓", "step_down_button", "Run this step later")
        self.remove_button = self._tool("✕", "step_remove_button", "Remove this step")
        for b in (self.up_button, self.down_button, self.remove_button):
            header.addWidget(b)
        layout.addLayout(header)
        self.panel: ParameterPanel | None = None
        if _is_editable_step(step):
            # the card's frame and margins shift it right: keep the editors in line
            self.panel = ParameterPanel(step, channel_names, LABEL_WIDTH - 7)
            layout.addWidget(self.panel.native)
        else:
            note = QLabel(
                f"{type(step).__name__} holds Python code and cannot be edited here; it "
                "runs as it is (use SizeFilter or CircularityFilter for size and shape).",
                self,
            )
            note.setWordWrap(True)
            note.setObjectName("step_note")
            layout.addWidget(note)

    def _tool(self, text: str, name: str, tip: str) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setObjectName(name)
        button.setToolTip(tip)
        return button

    def build(self) -> Any:
        """Return the step with the edited parameters (the original if not editable)."""
        return self.panel.build() if self.panel is not None else self.step


class StepsEditor(QWidget):
    """The list of post-processing steps: add, remove, reorder, edit each one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("steps_editor")
        self._channel_names: list[str] = []
        self.cards: list[StepCard] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._cards_layout = QVBoxLayout()
        self._cards_layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._cards_layout)
        self.empty_label = QLabel(
            "No post-processing: the strategy's ROIs are kept as found.", self
        )
        self.empty_label.setObjectName("steps_empty_label")
        self.empty_label.setWordWrap(True)
        layout.addWidget(self.empty_label)
        row = QHBoxLayout()
        self.add_combo = QComboBox(self)
        self.add_combo.setObjectName("add_step_combo")
        for name, cls in available_steps().items():
            self.add_combo.addItem(name)
            self.add_combo.setItemData(
                self.add_combo.count() - 1, short_doc(cls), Qt.ItemDataRole.ToolTipRole
            )
        self.add_button = QPushButton("Add step", self)
        self.add_button.setObjectName("add_step_button")
        self.add_button.setToolTip("Append the chosen step (it runs after the others)")
        self.add_button.clicked.connect(self._on_add_clicked)
        row.addWidget(self.add_combo, 1)
        row.addWidget(self.add_button)
        layout.addLayout(row)
        self._relayout()

    def step_names(self) -> list[str]:
        """Class names of the steps, in order."""
        return [type(card.step).__name__ for card in self.cards]

    def set_steps(self, steps: list[Any], channel_names: list[str] | None = None) -> None:
        """Show these steps (replacing the list)."""
        if channel_names is not None:
            self._channel_names = list(channel_names)
        for card in self.cards:
            card.setParent(None)
            card.deleteLater()
        self.cards = []
        for step in steps:
            self.cards.append(self._make_card(step))
        self._relayout()

    def add_step(self, step: Any) -> int:
        """Append a step (an object, or a class name of :func:`available_steps`).

        Returns
        -------
        int
            Its index.

        Raises
        ------
        KeyError
            For an unknown class name.
        TypeError
            If ``step`` is not a post-processing step.
        """
        from ..core.segment.base import PostProcessingStep

        if isinstance(step, str):
            steps = available_steps()
            if step not in steps:
                raise KeyError(
                    f"unknown post-processing step {step!r}; choose one of {list(steps)}"
                )
            step = steps[step]()
        if not isinstance(step, PostProcessingStep):
            raise TypeError(f"not a post-processing step: {step!r}")
        self.cards.append(self._make_card(step))
        self._relayout()
        return len(self.cards) - 1

    def remove_step(self, index: int) -> None:
        """Remove the step at ``index`` (IndexError if there is none)."""
        self._check_index(index)
        card = self.cards.pop(index)
        card.setParent(None)
        card.deleteLater()
        self._relayout()

    def move_step(self, index: int, offset: int) -> int:
        """Move the step at ``index`` by ``offset`` places (clipped); return its new index."""
        self._check_index(index)
        new = min(max(index + int(offset), 0), len(self.cards) - 1)
        card = self.cards.pop(index)
        self.cards.insert(new, card)
        self._relayout()
        return new

    def build(self) -> list[Any]:
        """Return the steps with their edited parameters (may raise the steps' errors)."""
        out = []
        for k, card in enumerate(self.cards):
            try:
                out.append(card.build())
            except (ValueError, TypeError) as err:
                raise type(err)(
                    f"post-processing step {k + 1} ({type(card.step).__name__}): {err}"
                ) from None
        return out

    def set_channel_names(self, names: list[str]) -> None:
        """Offer new channel names in the steps' channel boxes."""
        self._channel_names = list(names)
        for card in self.cards:
            if card.panel is not None:
                card.panel.set_channel_names(names)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.cards):
            raise IndexError(f"no post-processing step {index}; there are {len(self.cards)}")

    def _make_card(self, step: Any) -> StepCard:
        card = StepCard(step, self._channel_names, self)
        card.up_button.clicked.connect(lambda: self._on_card_move(card, -1))
        card.down_button.clicked.connect(lambda: self._on_card_move(card, +1))
        card.remove_button.clicked.connect(lambda: self._on_card_remove(card))
        return card

    def _relayout(self) -> None:
        while self._cards_layout.count():
            self._cards_layout.takeAt(0)
        n = len(self.cards)
        for k, card in enumerate(self.cards):
            self._cards_layout.addWidget(card)
            card.title.setText(f"{k + 1}. {type(card.step).__name__}")
            card.up_button.setEnabled(k > 0)
            card.down_button.setEnabled(k < n - 1)
        self.empty_label.setVisible(n == 0)

    def _on_add_clicked(self) -> None:
        name = self.add_combo.currentText()
        if name:
            self.add_step(name)

    def _on_card_move(self, card: StepCard, offset: int) -> None:
        if card in self.cards:
            self.move_step(self.cards.index(card), offset)

    def _on_card_remove(self, card: StepCard) -> None:
        if card in self.cards:
            self.remove_step(self.cards.index(card))


# ---------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------
def _message(err: BaseException) -> str:
    """Return the user-facing text of an error (a KeyError's message unquoted)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err)
    if isinstance(err, USER_ERRORS):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


#: Warnings raised in worker threads that capture them, ``{thread id: list}``.
_THREAD_WARNINGS: dict[int, list[str]] = {}


def _showwarning_by_thread(
    message: Any,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: Any = None,
) -> None:
    """``warnings.showwarning`` hook: keep a capturing worker thread's warnings."""
    sink = _THREAD_WARNINGS.get(threading.get_ident())
    if sink is not None and issubclass(category, (UserWarning, RuntimeWarning)):
        sink.append(str(message))
        return
    previous = getattr(_showwarning_by_thread, "previous", None)
    if previous is not None and previous is not _showwarning_by_thread:
        previous(message, category, filename, lineno, file, line)
    else:  # pragma: no cover - the hook is always installed with its predecessor
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _thread_warnings(sink: list[str]) -> Generator[None, None, None]:
    """Collect the warnings of the current thread into ``sink`` (other threads unaffected).

    ``warnings.catch_warnings`` swaps module-wide state and is unsafe while the main
    thread uses it too; this routes only this thread's warnings, through a
    ``showwarning`` hook installed when missing (it hands other threads' warnings to
    the hook it replaced, e.g. napari's notification hook).
    """
    if warnings.showwarning is not _showwarning_by_thread:
        _showwarning_by_thread.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _showwarning_by_thread
    ident = threading.get_ident()
    _THREAD_WARNINGS[ident] = sink
    try:
        yield
    finally:
        _THREAD_WARNINGS.pop(ident, None)


@dataclass
class SegmentationJob:
    """State shared between the widget and one segmentation worker.

    Attributes
    ----------
    dataset : ImagingDataset
        The dataset segmented.
    strategy : SegmentationStrategy
        The strategy, with its post-processing steps.
    label : str or None
        Requested ROI-set label (None: the core's timestamp).
    planes : list of int or None
        Planes segmented (None: the whole dataset at once).
    steps : generator
        ``dataset.iter_segment(...)``; closed when the worker ends (which cancels it).
    replaced : bool
        Whether a set of the same label existed.
    cancel_requested : threading.Event
        Set by :meth:`SegmentWidget.cancel`.
    rois : ROIList or None
        Written by the worker when the set is stored.
    error : BaseException or None
        Written by the worker when it failed.
    warnings : list of str
        Warnings the core raised while segmenting (e.g. components clamped).
    """

    dataset: Any
    strategy: Any
    label: str | None
    planes: list[int] | None
    steps: Generator[Any, None, Any]
    replaced: bool = False
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    rois: Any = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


@thread_worker
def _segmentation_steps(job: SegmentationJob) -> Generator[SegmentProgress, None, None]:
    """Run a segmentation in a worker thread; the outcome goes to ``job``.

    Yields
    ------
    SegmentProgress
        ``(fraction, message)`` of ``dataset.iter_segment``.
    """
    steps = job.steps
    while True:
        # warnings are collected around each step only: between steps the worker is
        # suspended and the thread may run other code
        with _thread_warnings(job.warnings):
            try:
                item = next(steps)
            except StopIteration as stop:
                job.rois = stop.value
                return
            except Exception as err:  # reported by the widget as a notification
                job.error = err
                return
        yield item


# ---------------------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------------------
class SegmentWidget(DatasetDock):
    """Find ROIs automatically with a segmentation strategy and store them as a set.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; datasets are found through its layers'
        ``metadata['napari_sima']['dataset']``.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    dataset : ImagingDataset or None
        The dataset to segment.
    preset : str or None
        Name of the preset the strategy came from (None for a strategy given as an
        object).
    panel : ParameterPanel
        The strategy's parameters.
    steps_editor : StepsEditor
        Its post-processing steps.
    last_label : str or None
        Label of the last ROI set this widget stored.
    last_rois : ROIList or None
        The ROIs of that set.
    last_layer : napari.layers.Shapes or None
        The layer showing them.

    Notes
    -----
    The ROIs are shown by the ROIs dock when it is open (or opened, see "Curate in
    the ROIs panel"), so they can be curated and saved there at once; otherwise as a
    Shapes layer ``'ROIs: <label>'`` carrying the same metadata as the ROIs dock's
    layers (the Extract dock offers it as an ROI source).  On a dataset of several
    planes each plane is segmented on its own by default ("Each plane on its own", as
    ``default_strategy(num_planes=n)`` does); single-plane strategies and a choice of
    planes always work plane by plane, STICA may also segment the whole volume.
    Warnings of the core (e.g. components clamped to the frames) go to the status line
    and to notifications.  Cancelling stops the worker at its next progress report;
    nothing is stored.
    """

    capability = "iter_segment"
    job_name = "segmentation"
    busy_message = "A segmentation is running"

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.preset: str | None = None
        self.last_label: str | None = None
        self.last_rois: ROIList | None = None
        self.last_layer: Shapes | None = None
        self._existing_labels: set[str] = set()
        self._label_edited = False
        self._job: SegmentationJob | None = None
        self._presets = strategy_presets()

        self.setObjectName("napari_sima_segment_widget")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setObjectName("scroll_area")
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        content = QWidget(self.scroll_area)
        content.setObjectName("content")
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area)
        layout = QVBoxLayout(content)
        layout.addWidget(self._create_source_group())
        layout.addWidget(self._create_strategy_group())
        layout.addWidget(self._create_steps_group())
        layout.addWidget(self._create_run_group())
        layout.addStretch(1)

        name, strategy = default_preset()
        self.set_strategy(name if name is not None else strategy)
        self._start_following_layers()

    def _on_no_initial_dataset(self) -> None:
        self._fill_planes()

    # -- construction ---------------------------------------------------------------------
    def _create_source_group(self) -> QGroupBox:
        box = QGroupBox("Source", self)
        box.setObjectName("source_group")
        form = QFormLayout(box)
        self._make_dataset_combo(box)
        form.addRow("Dataset", self.dataset_combo)
        self.planes_widget = QWidget(box)
        self.planes_widget.setObjectName("planes_widget")
        planes = QVBoxLayout(self.planes_widget)
        planes.setContentsMargins(0, 0, 0, 0)
        self.all_planes_check = QCheckBox("All planes", self.planes_widget)
        self.all_planes_check.setObjectName("all_planes_check")
        self.all_planes_check.setChecked(True)
        self.all_planes_check.setToolTip(
            "Segment every plane (a single-plane strategy segments each plane on its own); "
            "untick to choose planes"
        )
        self.all_planes_check.toggled.connect(self._on_all_planes_toggled)
        self.planes_list = QListWidget(self.planes_widget)
        self.planes_list.setObjectName("planes_list")
        self.planes_list.setMaximumHeight(90)
        self.planes_list.setToolTip("Planes to segment, each on its own")
        self.planewise_check = QCheckBox("Each plane on its own", self.planes_widget)
        self.planewise_check.setObjectName("planewise_check")
        self.planewise_check.setChecked(True)
        self.planewise_check.setToolTip(
            "Segment every plane separately (cells of neighbouring planes are never "
            "joined); untick to segment the volume as a whole (STICA only).  Single-"
            "plane strategies and a choice of planes always work plane by plane."
        )
        planes.addWidget(self.all_planes_check)
        planes.addWidget(self.planes_list)
        planes.addWidget(self.planewise_check)
        form.addRow("Planes", self.planes_widget)
        self._planes_label = form.labelForField(self.planes_widget)
        return box

    def _create_strategy_group(self) -> QGroupBox:
        box = QGroupBox("Strategy", self)
        box.setObjectName("strategy_group")
        layout = QVBoxLayout(box)
        self.strategy_combo = QComboBox(box)
        self.strategy_combo.setObjectName("strategy_combo")
        for name, factory in self._presets.items():
            self.strategy_combo.addItem(name)
            self.strategy_combo.setItemData(
                self.strategy_combo.count() - 1, short_doc(factory), Qt.ItemDataRole.ToolTipRole
            )
        self.strategy_combo.setToolTip("Segmentation presets (parameters editable below)")
        self.strategy_combo.currentIndexChanged.connect(self._on_strategy_combo_changed)
        self.reset_button = self._button("Reset", "reset_button", self._on_reset_clicked, box)
        self.reset_button.setToolTip("Restore the preset's parameters and steps")
        row = QHBoxLayout()
        row.addWidget(self.strategy_combo, 1)
        row.addWidget(self.reset_button)
        layout.addLayout(row)
        self.strategy_doc = QLabel("", box)
        self.strategy_doc.setObjectName("strategy_doc")
        self.strategy_doc.setWordWrap(True)
        layout.addWidget(self.strategy_doc)
        self.panel_holder = QVBoxLayout()
        layout.addLayout(self.panel_holder)
        self.panel = ParameterPanel(_placeholder_strategy(), [])
        self.panel_holder.addWidget(self.panel.native)
        return box

    def _create_steps_group(self) -> QGroupBox:
        box = QGroupBox("Post-processing (in order)", self)
        box.setObjectName("steps_group")
        layout = QVBoxLayout(box)
        self.steps_editor = StepsEditor(box)
        layout.addWidget(self.steps_editor)
        return box

    def _create_run_group(self) -> QGroupBox:
        box = QGroupBox("Run", self)
        box.setObjectName("run_group")
        layout = QVBoxLayout(box)
        form = QFormLayout()
        self.label_edit = QLineEdit(box)
        self.label_edit.setObjectName("label_edit")
        self.label_edit.setPlaceholderText("blank: the current time")
        self.label_edit.setToolTip("Name of the stored ROI set")
        self.label_edit.textEdited.connect(self._on_label_edited)
        form.addRow("ROI set", self.label_edit)
        layout.addLayout(form)
        self.label_warning = QLabel("", box)
        self.label_warning.setObjectName("label_warning")
        self.label_warning.setWordWrap(True)
        self.label_warning.setStyleSheet("color: #e0a030;")
        self.label_warning.setVisible(False)
        layout.addWidget(self.label_warning)
        self.curate_check = QCheckBox("Curate in the ROIs panel", box)
        self.curate_check.setObjectName("curate_check")
        self.curate_check.setChecked(True)
        self.curate_check.setToolTip(
            "Show the result in the ROIs panel (opened if needed) to label, tag, accept "
            "or reject and save the ROIs; unticked, the result is added as a Shapes layer"
        )
        layout.addWidget(self.curate_check)
        row = QHBoxLayout()
        self.run_button = self._button("Segment", "run_button", self._on_run_clicked, box)
        self.run_button.setToolTip("Find ROIs and store them as the ROI set")
        self.cancel_button = self._button("Cancel", "cancel_button", self._on_cancel_clicked, box)
        self.cancel_button.setToolTip("Stop the segmentation; nothing is stored")
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar(box)
        self.progress_bar.setObjectName("progress_bar")
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = make_status_label(box)
        layout.addWidget(self.status_label)
        return box

    # -- state ----------------------------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        """Channel names of the dataset (empty without one)."""
        return list(self.dataset.channel_names) if self.dataset is not None else []

    @property
    def num_planes(self) -> int:
        """Planes of the dataset (1 without one)."""
        return int(self.dataset.frame_shape[0]) if self.dataset is not None else 1

    @property
    def planes(self) -> list[int] | None:
        """Planes chosen: None for all planes, else the ticked plane indices."""
        if self.num_planes <= 1 or self.all_planes_check.isChecked():
            return None
        return [
            k
            for k in range(self.planes_list.count())
            if self.planes_list.item(k).checkState() == Qt.CheckState.Checked
        ]

    @property
    def label(self) -> str | None:
        """ROI-set label entered (None when blank: the core uses the current time)."""
        return self.label_edit.text().strip() or None

    def label_exists(self, label: str | None = None) -> bool:
        """Whether the dataset already has an ROI set ``label`` (default: the one entered)."""
        label = self.label if label is None else label
        return label is not None and label in self._existing_labels

    def strategy(self) -> SegmentationStrategy:
        """Return the strategy the controls describe (with its post-processing steps).

        Returns
        -------
        SegmentationStrategy
            A new object; the widget keeps no reference to it.

        Raises
        ------
        ValueError, TypeError
            With the core's message, for a parameter it rejects.
        """
        strategy = self.panel.build()
        strategy.steps = self.steps_editor.build()
        return strategy

    # -- datasets -------------------------------------------------------------------------
    def _on_dataset_set(self, changed: bool) -> None:
        if changed:
            self.panel.set_channel_names(self.channel_names)
            self.steps_editor.set_channel_names(self.channel_names)
            self._fill_planes()
            self.refresh_labels()
            if not self._label_edited:
                self._suggest_label()

    def set_planes(self, planes: list[int] | None) -> None:
        """Choose the planes: None for all, else a list of plane indices.

        Raises
        ------
        IndexError
            For a plane the dataset does not have.
        """
        if planes is None:
            self.all_planes_check.setChecked(True)
            return
        chosen = {int(p) for p in planes}
        bad = sorted(p for p in chosen if not 0 <= p < self.planes_list.count())
        if bad:
            raise IndexError(
                f"plane(s) {bad} do not exist: the dataset has {self.num_planes} plane(s)"
            )
        self.all_planes_check.setChecked(False)
        for k in range(self.planes_list.count()):
            item = self.planes_list.item(k)
            item.setCheckState(Qt.CheckState.Checked if k in chosen else Qt.CheckState.Unchecked)

    def refresh_labels(self) -> None:
        """Re-read the labels of the dataset's ROI sets (for the replace warning)."""
        labels: set[str] = set()
        if self.dataset is not None:
            try:
                labels = set(self.dataset.ROIs)
            except USER_ERRORS as err:
                show_error(f"Cannot read the dataset's ROI sets: {_message(err)}")
        self._existing_labels = labels
        self._update_label_warning()

    def set_label(self, label: str) -> None:
        """Enter the ROI-set label (blank: the current time)."""
        self.label_edit.setText(str(label))
        self._label_edited = True
        self._update_label_warning()

    # -- strategy -------------------------------------------------------------------------
    def set_strategy(self, strategy: str | SegmentationStrategy) -> bool:
        """Show a preset (by name) or a strategy object, with its steps, in the panels.

        Parameters
        ----------
        strategy : str or SegmentationStrategy
            A name of :func:`strategy_presets`, or a strategy (its fields and its
            post-processing steps are shown; the object itself is not modified).

        Returns
        -------
        bool
            True on success (an unknown name is notified).
        """
        from ..core.segment.base import SegmentationStrategy

        if self.is_running:
            show_warning("A segmentation is running: cancel it before changing the strategy.")
            return False
        if isinstance(strategy, str):
            if strategy not in self._presets:
                show_error(f"Unknown strategy {strategy!r}; choose one of {list(self._presets)}.")
                return False
            try:
                obj = self._presets[strategy]()
            except Exception as err:
                show_error(f"Cannot build the strategy {strategy!r}: {_message(err)}")
                return False
            name: str | None = strategy
        elif isinstance(strategy, SegmentationStrategy):
            obj, name = strategy, None
        else:
            show_error(f"Not a segmentation strategy: {strategy!r}")
            return False
        self.preset = name
        with blocked(self.strategy_combo):
            self.strategy_combo.setCurrentIndex(
                self.strategy_combo.findText(name) if name is not None else -1
            )
        old = self.panel
        self.panel = ParameterPanel(obj, self.channel_names)
        self.panel_holder.replaceWidget(old.native, self.panel.native)
        old.native.setParent(None)
        old.native.deleteLater()
        self.steps_editor.set_steps(list(obj.steps), self.channel_names)
        self.strategy_doc.setText(f"{type(obj).__name__}: {short_doc(type(obj))}")
        if name is not None:
            self.strategy_doc.setToolTip(short_doc(self._presets[name]))
        if not self._label_edited:
            self._suggest_label()
        self._update_planewise()
        self._update_controls()
        return True

    def add_step(self, step: str | PostProcessingStep) -> int:
        """Append a post-processing step (a class name of :func:`available_steps` or an object).

        Returns
        -------
        int
            Its index, or -1 if it was refused (notified).
        """
        try:
            return self.steps_editor.add_step(step)
        except (KeyError, TypeError) as err:
            show_error(_message(err))
            return -1

    def remove_step(self, index: int) -> bool:
        """Remove the post-processing step at ``index``; False (notified) if there is none."""
        try:
            self.steps_editor.remove_step(index)
        except IndexError as err:
            show_error(_message(err))
            return False
        return True

    def move_step(self, index: int, offset: int) -> int:
        """Move the step at ``index`` by ``offset`` places; return its new index (-1 if none)."""
        try:
            return self.steps_editor.move_step(index, offset)
        except IndexError as err:
            show_error(_message(err))
            return -1

    # -- actions --------------------------------------------------------------------------
    def run(self, replace: bool = False) -> Any:
        """Segment the dataset in a worker thread; the ROIs are stored and shown.

        Parameters
        ----------
        replace : bool
            Replace an ROI set of the same label.  When False and the set exists,
            nothing runs and a warning says so (the Segment button asks first).

        Returns
        -------
        GeneratorWorker or None
            The running worker (its ``finished`` signal fires when done, failed or
            cancelled), or None if nothing was started (the reason is notified).
        """
        if self.is_running:
            show_warning("A segmentation is already running.")
            return None
        ds = self.dataset
        if ds is None:
            show_error("No dataset: open a movie or a .sima folder first.")
            return None
        if ds.read_only:
            show_error(
                f"The dataset {ds.savedir} is read-only (a legacy SIMA folder or a folder "
                "without write permission): save it to a new .sima folder with the Dataset "
                "panel first."
            )
            return None
        label = self.label
        try:
            from .roi_widget import RECOVERY_MARK

            if label is not None and RECOVERY_MARK in label:
                raise ValueError(
                    f"ROI set names must not contain {RECOVERY_MARK!r} (kept for recovery sets)."
                )
            strategy = self.strategy()
            planes = self._planes_argument(strategy)
        except USER_ERRORS as err:
            show_error(_message(err))
            self._set_status(f"Not started: {_message(err)}")
            return None
        self.refresh_labels()
        replaced = self.label_exists(label)
        if replaced and not replace:
            show_warning(
                f"The dataset already has an ROI set {label!r}: choose another name, or "
                "confirm to replace it."
            )
            return None
        try:
            steps = ds.iter_segment(strategy, label=label, planes=planes)
        except USER_ERRORS as err:
            show_error(_message(err))
            return None
        job = SegmentationJob(ds, strategy, label, planes, steps, replaced=replaced)
        self.progress_bar.setRange(0, 0)  # busy until the first progress report
        self.progress_bar.setValue(0)
        self._set_status(f"Segmenting with {type(strategy).__name__}…")
        return self._start_worker(job, _segmentation_steps, [ds])

    def cancel(self) -> None:
        """Stop a running segmentation; nothing is stored."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel_requested.set()
        self._worker.quit()
        self._set_status("Cancelling…")
        self.cancel_button.setEnabled(False)

    # -- handlers -------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        replace = False
        self.refresh_labels()
        if self.label_exists():
            answer = QMessageBox.question(
                self,
                "Replace ROI set?",
                f"The dataset already has an ROI set {self.label!r}.  Replace it with the "
                "segmentation?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            replace = True
        self.run(replace=replace)

    def _on_reset_clicked(self) -> None:
        if self.preset is not None:
            self.set_strategy(self.preset)

    def _on_strategy_combo_changed(self, index: int) -> None:
        name = self.strategy_combo.itemText(index)
        if name:
            self.set_strategy(name)

    def _on_all_planes_toggled(self, checked: bool) -> None:
        self._update_planewise()

    def _on_label_edited(self, text: str) -> None:
        self._label_edited = True
        self._update_label_warning()

    def _on_worker_yielded(self, progress: Any) -> None:
        fraction, message = float(progress[0]), str(progress[1])
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setValue(int(round(min(max(fraction, 0.0), 1.0) * PROGRESS_STEPS)))
        job = self._job
        if job is not None and not job.cancel_requested.is_set():
            self._set_status(message[:1].upper() + message[1:] if message else "Segmenting…")

    def _on_worker_finished(self, job: SegmentationJob) -> None:
        # the worker stopped: close the segmentation generator (this cancels it when the
        # worker was quit; a finished generator ignores it)
        with contextlib.suppress(Exception):
            job.steps.close()
        if self._job is job:
            self._job_guard.release()
            self._worker = None
            self._job = None
        try:
            self._finish(job)
        except RuntimeError:  # the Qt side of the widget is gone (closed with the viewer)
            logger.debug("segmentation finished after the widget was deleted", exc_info=True)
        job.dataset = None  # napari keeps ended workers (and a quit one's job): see JobGuard

    def _finish(self, job: SegmentationJob) -> None:
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        if job.error is not None:
            self.progress_bar.setValue(0)
            self._set_status(f"Failed: {_message(job.error)}")
            show_error(f"Segmentation failed: {_message(job.error)}")
            if not isinstance(job.error, USER_ERRORS):
                logger.error("segmentation failed", exc_info=job.error)
        elif job.rois is None:
            self.progress_bar.setValue(0)
            self._set_status("Cancelled; nothing was stored.")
            show_info("Segmentation cancelled; nothing was stored.")
        else:
            self.progress_bar.setValue(PROGRESS_STEPS)
            self._on_segmentation_stored(job)
        if job.rois is None:
            self.refresh_labels()
        self._update_controls()

    def _on_segmentation_stored(self, job: SegmentationJob) -> None:
        ds = job.dataset
        rois = job.rois
        label = job.label if job.label is not None else self._stored_label(ds, rois)
        self.last_label = label
        self.last_rois = rois
        n = len(rois)
        found = f"{n} ROI{'s' if n != 1 else ''}"
        message = f"{type(job.strategy).__name__} found {found} → ROI set {label!r}"
        if job.replaced:
            message += " (replacing the set of that name)"
        if job.cancel_requested.is_set():
            message = "The segmentation had finished before it could be cancelled. " + message
        notes = list(dict.fromkeys(job.warnings))  # unique, in order
        self._set_status(message + "".join(f"\n⚠ {w}" for w in notes))
        for note in notes[:MAX_WARNINGS_SHOWN]:
            show_warning(note)
        if len(notes) > MAX_WARNINGS_SHOWN:
            logger.warning("segmentation warnings: %s", notes)
        if n == 0:
            show_warning(
                f"{message}.  Nothing was found: check the channel, or loosen the "
                "parameters and post-processing filters."
            )
        else:
            show_info(message)
        self.refresh_labels()
        if not self._label_edited:
            self._suggest_label()
        if label is not None:
            self.last_layer = self._show_result(ds, label, rois)

    # -- results --------------------------------------------------------------------------
    def _show_result(self, ds: ImagingDataset, label: str, rois: ROIList) -> Shapes | None:
        """Show a stored set in the ROIs dock (opened if asked), else as a layer."""
        manager = find_roi_manager(self.viewer)
        if manager is None and self.curate_check.isChecked():
            manager = self._open_roi_manager()
        if manager is not None:
            try:
                return self._show_in_manager(manager, ds, label)
            except Exception as err:  # a display problem must not lose the result
                show_warning(f"The ROIs panel could not show the set: {_message(err)}")
                logger.warning("ROIs dock update failed", exc_info=True)
        return self._add_layer(ds, label, rois)

    def _open_roi_manager(self) -> ROIManagerWidget | None:
        viewer = unwrap(self.viewer)
        try:
            from .._demo import dock_plugin_widget

            dock_plugin_widget(viewer, ROI_WIDGET_COMMAND)
        except Exception as err:
            logger.warning("could not open the ROIs dock: %s", err, exc_info=True)
            return None
        return find_roi_manager(viewer)

    def _show_in_manager(
        self, manager: ROIManagerWidget, ds: ImagingDataset, label: str
    ) -> Shapes | None:
        if unwrap(manager.dataset) is not ds:
            manager.set_dataset(ds, self._name_of(ds))
        elif manager.current_set == label and manager.layer is not None:
            # the set shown was replaced: reload it (unsaved edits go to a recovery set)
            manager._detach_layer(reason=f"the set {label!r} was replaced by a segmentation")
            manager.current_set = None
        if not manager.show_set(label):
            raise ValueError(f"the ROIs panel did not show the set {label!r}")
        with contextlib.suppress(Exception):  # bring the dock to the front
            manager.parentWidget().raise_()
        return manager.layer

    def _add_layer(self, ds: ImagingDataset, label: str, rois: ROIList) -> Shapes | None:
        from .._roi_convert import rois_to_shapes

        try:
            kwargs = rois_to_shapes(rois, ndim=3)
        except USER_ERRORS as err:
            show_error(f"Cannot show the ROIs: {_message(err)}")
            return None
        kwargs["metadata"][METADATA_KEY].update(
            dataset=ds, roi_set=label, base_name=self._name_of(ds), source=ds.savedir
        )
        if not kwargs["data"]:  # napari warns about empty colour arrays
            kwargs.pop("edge_color", None)
            kwargs.pop("face_color", None)
        layer = self.viewer.add_shapes(**kwargs, name=f"ROIs: {label}", edge_width=EDGE_WIDTH)
        return unwrap(layer)

    # -- helpers --------------------------------------------------------------------------
    def _stored_label(self, ds: ImagingDataset, rois: ROIList) -> str | None:
        """Label the core gave a set stored without one (its timestamp)."""
        with contextlib.suppress(*USER_ERRORS):
            sets = ds.ROIs
            stamp = getattr(rois, "timestamp", None)
            if stamp and stamp in sets:
                return str(stamp)
            fresh = sorted(set(sets) - self._existing_labels)
            if len(fresh) == 1:
                return fresh[0]
            return max(sets, key=lambda k: str(sets[k].timestamp or ""), default=None)
        return None

    def _planes_argument(self, strategy: SegmentationStrategy) -> list[int] | None:
        """``planes`` of ``iter_segment``: None (the volume at once) or plane indices."""
        planes = self.planes
        if planes is not None and not planes:
            raise ValueError("No plane chosen: tick at least one plane, or 'All planes'.")
        planewise = self.planewise_check.isChecked() or getattr(strategy, "single_plane", False)
        if planes is None and self.num_planes > 1 and planewise:
            return list(range(self.num_planes))  # each plane on its own
        return planes

    def _update_planewise(self) -> None:
        """Plane-by-plane is forced for chosen planes and single-plane strategies."""
        chosen = not self.all_planes_check.isChecked()
        self.planes_list.setEnabled(chosen)
        single = bool(getattr(self.panel.source, "single_plane", False))
        with blocked(self.planewise_check):
            if chosen or single:
                self.planewise_check.setChecked(True)
        self.planewise_check.setEnabled(not (chosen or single))

    def _fill_planes(self) -> None:
        n = self.num_planes
        with blocked(self.planes_list):
            self.planes_list.clear()
            for k in range(n if n > 1 else 0):
                item = QListWidgetItem(f"plane {k}", self.planes_list)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked)
        self.all_planes_check.setChecked(True)
        self._update_planewise()
        self.planes_widget.setVisible(n > 1)
        if self._planes_label is not None:
            self._planes_label.setVisible(n > 1)

    def _suggest_label(self) -> None:
        stem = self.preset or DEFAULT_LABEL_STEM
        label, k = stem, 2
        while label in self._existing_labels:
            label, k = f"{stem}-{k}", k + 1
        self.label_edit.setText(label)
        self._update_label_warning()

    def _update_label_warning(self) -> None:
        label = self.label
        text = ""
        if label is not None and label in self._existing_labels:
            text = f"The dataset has an ROI set {label!r}: segmenting replaces it."
        self.label_warning.setText(text)
        self.label_warning.setVisible(bool(text))

    def _update_controls(self) -> None:
        has = self.dataset is not None
        running = self.is_running
        for w in (
            self.dataset_combo,
            self.planes_widget,
            self.strategy_combo,
            self.reset_button,
            self.panel.native,
            self.steps_editor,
            self.label_edit,
            self.curate_check,
        ):
            w.setEnabled(not running)
        self.reset_button.setEnabled(not running and self.preset is not None)
        self.run_button.setEnabled(has and not running)
        self.cancel_button.setEnabled(
            running and self._job is not None and not self._job.cancel_requested.is_set()
        )
        if running:
            return
        if not has:
            self._set_status("No dataset: open a movie or a .sima folder.", hint=True)
        elif self._status_is_hint:
            self._set_status("")

def _placeholder_strategy() -> Any:
    """Return an empty dataclass standing in for the strategy while the widget is built."""

    @dataclasses.dataclass
    class _Nothing:
        pass

    return _Nothing()


__all__ = [
    "HIDDEN_FIELDS",
    "INDENT",
    "LABEL_WIDTH",
    "NUMBER_MAX",
    "OPTIONAL_START_VALUES",
    "ChannelEditor",
    "NestedEditor",
    "OptionalEditor",
    "ParameterPanel",
    "ReadOnlyEditor",
    "SegmentWidget",
    "StepsEditor",
    "TupleEditor",
    "available_steps",
    "default_preset",
    "field_annotation",
    "field_docs",
    "find_roi_manager",
    "make_editor",
    "short_doc",
    "strategy_presets",
]
