"""Parameter panels built from dataclass fields, for the docks' strategy objects.

A :class:`ParameterPanel` shows one row per ``init`` field of a dataclass object (a
segmentation strategy, a post-processing step, ...), with an editor chosen from the
field's type annotation by :func:`make_editor` and the field's numpydoc description as
tooltip; :meth:`ParameterPanel.build` returns a new object of the same class with the
edited values, so the GUI and a script use the very same objects.  Nothing here knows
about a particular algorithm: any dock can reuse the panel for its own dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import sys
import types
import typing
from typing import Any

from magicgui.application import use_app
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
    Widget,
)
from magicgui.widgets.bases import ValuedContainerWidget
from qtpy.QtWidgets import QAbstractSpinBox

logger = logging.getLogger(__name__)

#: Fields never shown in a parameter panel (accepted for SIMA compatibility only).
HIDDEN_FIELDS = frozenset({"verbose"})

#: Value an optional field starts from when the user unticks "none" (by field name).
OPTIONAL_START_VALUES: dict[str, Any] = {
    "max_dist": (2, 2),
    "spatial_decay": (2.0, 2.0),
    "max_size": 500,
}

#: Smallest width of the parameter names column, in pixels (aligns the panels).
LABEL_WIDTH = 120

#: Indentation of a sub-panel (e.g. the affinity method's parameters), in pixels.
INDENT = 18

#: Largest value of the integer and float boxes.
NUMBER_MAX = 1_000_000_000


def _concrete_subclasses(base: type) -> list[type]:
    """Concrete dataclass subclasses of ``base`` (itself included) buildable from defaults."""
    out: list[type] = []
    seen: set[type] = set()
    todo = [base]
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if (
            dataclasses.is_dataclass(cls)
            and not getattr(cls, "__abstractmethods__", None)
            and cls.__module__.startswith("napari_sima.")
            and all(
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                for f in dataclasses.fields(cls)
                if f.init
            )
        ):
            out.append(cls)
    return out


def _annotation_namespace() -> dict[str, Any]:
    """Names that annotations of the core's dataclasses may use under TYPE_CHECKING."""
    from ..core import ImagingDataset
    from ..core.roi import ROI, ROIList
    from ..core.segment.affinity import AffinityMatrix
    from ..core.segment.base import PostProcessingStep, SegmentationStrategy

    return {
        "AffinityMatrix": AffinityMatrix,
        "ImagingDataset": ImagingDataset,
        "PostProcessingStep": PostProcessingStep,
        "ROI": ROI,
        "ROIList": ROIList,
        "SegmentationStrategy": SegmentationStrategy,
    }


def field_annotation(cls: type, f: dataclasses.Field) -> Any:
    """Return a dataclass field's annotation as a type (None if it cannot be resolved).

    String annotations (``from __future__ import annotations``) are evaluated in the
    namespace of the module of the class that declares the field, plus the core's
    classes that modules import only for type checking.
    """
    hint = f.type
    if not isinstance(hint, str):
        return hint
    owner = next((c for c in cls.__mro__ if f.name in getattr(c, "__annotations__", {})), cls)
    namespace = dict(_annotation_namespace())
    module = sys.modules.get(owner.__module__)
    if module is not None:
        namespace.update(vars(module))
    try:
        return eval(hint, namespace)  # noqa: S307 - annotations of our own classes
    except Exception:
        logger.debug("cannot resolve annotation %r of %s.%s", hint, cls.__name__, f.name)
        return None


def _union_args(hint: Any) -> tuple[list[Any], bool]:
    """``(non-None members, nullable)`` of a union annotation (``([hint], False)`` else)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = list(typing.get_args(hint))
        nullable = type(None) in args
        return [a for a in args if a is not type(None)], nullable
    return [hint], False


def _is_number_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) is not tuple:
        return False
    args = typing.get_args(hint)
    return bool(args) and Ellipsis not in args and all(a in (int, float) for a in args)


def _clean_doc(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", " ".join(text.split()))


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field: description}`` from the numpydoc "Parameters" of a class (and bases)."""
    import docstring_parser

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__doc__ or klass is object:
            continue
        try:
            parsed = docstring_parser.parse(klass.__doc__)
        except Exception:  # a malformed docstring only costs the tooltips
            continue
        for param in parsed.params:
            for name in param.arg_name.split(","):
                docs[name.strip()] = _clean_doc(param.description or "")
    return docs


def short_doc(obj: Any) -> str:
    """First sentence/line of an object's docstring, without reST markup."""
    import docstring_parser

    doc = getattr(obj, "__doc__", None) or ""
    with contextlib.suppress(Exception):
        return _clean_doc(docstring_parser.parse(doc).short_description or "")
    return ""


def _float_box(value: float, name: str, tooltip: str) -> FloatSpinBox:
    """Return a float box whose decimals show ``value`` and one digit more."""
    value = float(value)
    digits = 2
    if value and math.isfinite(value):
        digits = min(8, max(2, 1 - math.floor(math.log10(abs(value)))))
    box = FloatSpinBox(
        name=name, min=min(0.0, value), max=float(NUMBER_MAX), step=10.0**-digits, tooltip=tooltip
    )
    box.native.setDecimals(digits)
    box.value = value
    return box


def _int_box(value: int, name: str, tooltip: str) -> SpinBox:
    return SpinBox(
        value=int(value), name=name, min=min(0, int(value)), max=NUMBER_MAX, tooltip=tooltip
    )


class TupleEditor(ValuedContainerWidget):
    """A row of number boxes editing a fixed-length tuple of ints / floats."""

    def __init__(
        self, kinds: tuple[type, ...], value: Any, name: str = "", tooltip: str = ""
    ) -> None:
        self._kinds = tuple(kinds)
        values = list(value) if value is not None else [1] * len(self._kinds)
        boxes: list[Widget] = []
        for k, (kind, v) in enumerate(zip(self._kinds, values, strict=True)):
            make = _int_box if kind is int else _float_box
            box = make(kind(v), f"{name}_{k}", tooltip)
            box.native.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)  # compact
            boxes.append(box)
        super().__init__(
            widgets=boxes, layout="horizontal", labels=False, name=name, tooltip=tooltip
        )
        self.margins = (0, 0, 0, 0)
        for box in boxes:
            box.changed.connect(lambda *_: self.changed.emit(self.value))

    def get_value(self) -> tuple:
        """Return the tuple."""
        return tuple(kind(w.value) for kind, w in zip(self._kinds, self._list, strict=True))

    def set_value(self, value: Any) -> None:
        """Set the tuple (same length)."""
        values = list(value)
        if len(values) != len(self._kinds):
            raise ValueError(f"{self.name}: expected {len(self._kinds)} values, got {value!r}")
        with self.changed.blocked():
            for w, v in zip(self._list, values, strict=True):
                w.value = v
        self.changed.emit(self.value)


class OptionalEditor(ValuedContainerWidget):
    """An editor with a "none" check box: ticked, the value is None."""

    def __init__(self, inner: Widget, is_none: bool, name: str = "", tooltip: str = "") -> None:
        self.none_box = CheckBox(text="none", value=bool(is_none), name=f"{name}_none")
        self.none_box.tooltip = "Ticked: None (see the parameter's description for its meaning)"
        self.inner = inner
        super().__init__(
            widgets=[self.none_box, inner],
            layout="horizontal",
            labels=False,
            name=name,
            tooltip=tooltip,
        )
        self.margins = (0, 0, 0, 0)
        inner.enabled = not is_none
        self.none_box.changed.connect(self._on_none_toggled)
        inner.changed.connect(lambda *_: self.changed.emit(self.value))

    def _on_none_toggled(self, *_: Any) -> None:
        self.inner.enabled = not self.none_box.value
        self.changed.emit(self.value)

    def get_value(self) -> Any:
        """Return None when "none" is ticked, else the inner editor's value."""
        return None if self.none_box.value else self.inner.value

    def set_value(self, value: Any) -> None:
        """Set None (ticks "none") or a value for the inner editor."""
        if value is None:
            self.none_box.value = True
        else:
            self.inner.value = value
            self.none_box.value = False


class ChannelEditor(ComboBox):
    """A channel box listing the dataset's channel names; its value is the index.

    A channel given by name selects that name; an index beyond the known channels is
    kept as an entry of its own.
    """

    def __init__(
        self, value: Any, channel_names: list[str], name: str = "", tooltip: str = ""
    ) -> None:
        self._channel_choices: list[tuple[str, Any]] = []
        super().__init__(name=name, tooltip=tooltip)
        self.set_channel_names(channel_names, value)

    def reset_choices(self, *_: Any) -> None:
        """Keep the channel choices (magicgui containers reset their children's choices)."""
        value = self.value
        with self.changed.blocked():
            self.choices = self._channel_choices
            if any(v == value for _, v in self._channel_choices):
                self.value = value

    def set_channel_names(self, names: list[str], value: Any = None) -> None:
        """Offer the channels ``names``, keeping (or choosing) ``value``."""
        if value is None:
            value = self.value if self.choices else 0
        choices: list[tuple[str, Any]] = [(str(n), k) for k, n in enumerate(names)]
        if isinstance(value, str):
            value = list(names).index(value) if value in names else value
        if not any(v == value for _, v in choices):
            choices.append((str(value), value))
        self._channel_choices = choices
        with self.changed.blocked():
            self.choices = choices
            self.value = value


class ReadOnlyEditor(Label):
    """Shows a value that cannot be edited here (kept as is)."""

    def __init__(self, value: Any, name: str = "", tooltip: str = "") -> None:
        self._kept = value
        super().__init__(name=name)
        self.set_value(value)
        self.tooltip = (tooltip + "\n" if tooltip else "") + "Not editable here; kept as is."

    def get_value(self) -> Any:
        """Return the value kept."""
        return self._kept

    def set_value(self, value: Any) -> None:
        """Keep another value (shown as its repr)."""
        self._kept = value
        text = repr(value)
        super().set_value(text if len(text) < 60 else text[:57] + "…")


class NestedEditor(ValuedContainerWidget):
    """An indented sub-panel for a field holding a dataclass (e.g. ``affinity_method``).

    A header row shows the field's name and a class box choosing among the concrete
    classes the field accepts (values of the fields with the same name carry over);
    the indented panel below edits the object's fields.
    """

    def __init__(
        self,
        value: Any,
        candidates: list[type],
        channel_names: list[str],
        name: str = "",
        tooltip: str = "",
        label_width: int = LABEL_WIDTH,
    ) -> None:
        self._channel_names = list(channel_names)
        self._label_width = max(40, int(label_width) - INDENT)
        classes = list(candidates)
        if type(value) not in classes:
            classes.insert(0, type(value))
        self._classes = {cls.__name__: cls for cls in classes}
        self.header = Label(value=name.replace("_", " "), tooltip=tooltip)
        self.class_box = ComboBox(
            name=f"{name}_class", choices=list(self._classes), value=type(value).__name__
        )
        self.class_box.tooltip = (
            f"Class of the {name.replace('_', ' ')}: " + short_doc(type(value))
            if len(self._classes) > 1
            else short_doc(type(value))
        )
        self.class_box.enabled = len(self._classes) > 1
        header = Container(widgets=[self.header, self.class_box], layout="horizontal", labels=False)
        header.margins = (0, 0, 0, 0)
        self.panel = ParameterPanel(value, self._channel_names, self._label_width)
        self._holder = Container(widgets=[self.panel], layout="vertical", labels=False)
        self._holder.margins = (INDENT, 0, 0, 0)  # indented under the header
        super().__init__(
            widgets=[header, self._holder],
            layout="vertical",
            labels=False,
            name=name,
            tooltip=tooltip,
        )
        self.margins = (0, 0, 0, 0)
        self.class_box.changed.connect(self._on_class_changed)
        self.panel.changed.connect(self._on_panel_changed)

    @property
    def class_name(self) -> str:
        """Name of the chosen class."""
        return str(self.class_box.value)

    def set_class(self, name: str) -> None:
        """Choose the class (its fields start from the current values where names match).

        Raises
        ------
        ValueError
            If the field does not accept that class.
        """
        if name not in self._classes:
            raise ValueError(f"{self.name}: choose one of {list(self._classes)}, not {name!r}")
        self.class_box.value = name

    def _on_panel_changed(self, *_: Any) -> None:
        self.changed.emit(self.panel)

    def _on_class_changed(self, *_: Any) -> None:
        cls = self._classes[self.class_name]
        if type(self.panel.source) is cls:
            return
        try:
            old = self.panel.build()
        except Exception:
            old = self.panel.source
        shared = {
            f.name: getattr(old, f.name)
            for f in dataclasses.fields(cls)
            if f.init and hasattr(old, f.name) and f.name not in HIDDEN_FIELDS
        }
        try:
            new = cls(**shared)
        except Exception:
            new = cls()
        self.panel.changed.disconnect(self._on_panel_changed)
        self._holder.remove(self.panel)
        self.panel = ParameterPanel(new, self._channel_names, self._label_width)
        self._holder.append(self.panel)
        self.panel.changed.connect(self._on_panel_changed)
        self.class_box.tooltip = short_doc(cls)
        self.changed.emit(self.panel)

    def set_channel_names(self, names: list[str]) -> None:
        """Offer new channel names in the sub-panel."""
        self._channel_names = list(names)
        self.panel.set_channel_names(names)

    def get_value(self) -> Any:
        """Return a new object of the chosen class with the panel's values (may raise)."""
        return self.panel.build()

    def set_value(self, value: Any) -> None:
        """Show another object (of one of the offered classes)."""
        self.set_class(type(value).__name__)
        self.panel.set_values(value)


def make_editor(
    owner: type,
    f: dataclasses.Field,
    value: Any,
    channel_names: list[str],
    tooltip: str = "",
    label_width: int = LABEL_WIDTH,
) -> Widget:
    """Return the magicgui widget editing one dataclass field.

    Parameters
    ----------
    owner : type
        The dataclass.
    f : dataclasses.Field
        The field.
    value : object
        Its current value.
    channel_names : list of str
        The dataset's channel names (for ``channel`` fields, ``int | str``).
    tooltip : str
        The field's description.
    label_width : int
        Width of the names column of the panel holding the editor (a sub-panel's
        names column is narrower by its indentation, so the editors line up).

    Returns
    -------
    magicgui Widget
        With a ``value``: ``bool`` → check box, ``int`` / ``float`` → number boxes,
        ``str`` → line edit, ``tuple[int|float, ...]`` → a row of boxes, ``int | str``
        → channel box, ``X | None`` → a "none" check box beside X's editor, a
        dataclass value → an indented sub-panel; anything else is shown read-only and
        kept unchanged.
    """
    name = f.name
    hint = field_annotation(owner, f)
    members, nullable = _union_args(hint) if hint is not None else ([], value is None)
    if hint is None and value is not None:
        members = [type(value)]
    member_set = set(members)

    if member_set and member_set <= {int, str} and (str in member_set or name == "channel"):
        editor: Widget = ChannelEditor(value, channel_names, name=name, tooltip=tooltip)
        return editor if not nullable else OptionalEditor(editor, value is None, name, tooltip)

    dataclass_value = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if dataclass_value:
        bases = [
            m
            for m in members
            if typing.get_origin(m) is None and isinstance(m, type) and isinstance(value, m)
        ]
        candidates = _concrete_subclasses(bases[0]) if bases else [type(value)]
        return NestedEditor(
            value, candidates, channel_names, name=name, tooltip=tooltip, label_width=label_width
        )

    if len(members) != 1:
        return ReadOnlyEditor(value, name=name, tooltip=tooltip)
    kind = members[0]
    start = value
    if value is None:
        start = OPTIONAL_START_VALUES.get(name)
    inner: Widget
    if kind is bool:
        inner = CheckBox(value=bool(start), name=name, tooltip=tooltip)
        inner.native.setText("")  # the row's label names it
    elif kind is int:
        inner = _int_box(0 if start is None else int(start), name, tooltip)
    elif kind is float:
        inner = _float_box(0.0 if start is None else float(start), name, tooltip)
    elif kind is str:
        inner = LineEdit(value="" if start is None else str(start), name=name, tooltip=tooltip)
    elif _is_number_tuple(kind):
        kinds = typing.get_args(kind)
        inner = TupleEditor(kinds, start if start is not None else [1] * len(kinds), name, tooltip)
    else:
        return ReadOnlyEditor(value, name=name, tooltip=tooltip)
    if nullable:
        return OptionalEditor(inner, value is None, name=name, tooltip=tooltip)
    return inner


class ParameterPanel(Container):
    """A magicgui panel editing the fields of one dataclass object (strategy or step).

    Parameters
    ----------
    source : dataclass instance
        The object whose fields are shown; :meth:`build` returns a new object of the
        same class with the edited values (the source is not modified).
    channel_names : list of str
        Channel names offered by ``channel`` fields.

    Notes
    -----
    One row per ``init`` field, labelled with the field name, with its numpydoc
    description as tooltip; fields in :data:`HIDDEN_FIELDS` are kept from the source.
    A strategy's post-processing steps are not fields: :meth:`build` copies them from
    the source (the widget edits the top-level strategy's steps separately).
    """

    def __init__(
        self, source: Any, channel_names: list[str] | None = None, label_width: int = LABEL_WIDTH
    ) -> None:
        super().__init__(layout="vertical", labels=False)
        self.margins = (0, 0, 0, 0)
        self.source = source
        self._channel_names = list(channel_names or [])
        docs = field_docs(type(source))
        self._editors: dict[str, Widget] = {}
        labels: list[Label] = []
        for f in dataclasses.fields(source):
            if not f.init or f.name in HIDDEN_FIELDS or f.name.startswith("_"):
                continue
            tip = docs.get(f.name, "")
            editor = make_editor(
                type(source), f, getattr(source, f.name), self._channel_names, tip, label_width
            )
            self._editors[f.name] = editor
            editor.changed.connect(self._on_editor_changed)
            if isinstance(editor, NestedEditor):
                labels.append(editor.header)
                self.append(editor)
                continue
            label = Label(value=f.name.replace("_", " "), tooltip=tip)
            labels.append(label)
            row = Container(widgets=[label, editor], layout="horizontal", labels=False)
            row.margins = (0, 0, 0, 0)
            self.append(row)
        if labels:
            measure = use_app().get_obj("get_text_width")
            # measured in the default font; napari's theme font may be wider: keep slack
            widest = max(measure(label.value) for label in labels)
            width = max(label_width, int(widest * 1.2) + 10)
            for label in labels:
                label.min_width = width
                label.max_width = width

    def _on_editor_changed(self, *_: Any) -> None:
        self.changed.emit(self)

    @property
    def field_names(self) -> list[str]:
        """Names of the fields shown."""
        return list(self._editors)

    def editor(self, path: str) -> Widget:
        """Return the editor of a field; ``'a.b'`` reaches field ``b`` of sub-panel ``a``.

        Raises
        ------
        KeyError
            If there is no such field (the message lists the fields).
        """
        head, _, rest = path.partition(".")
        if head not in self._editors:
            raise KeyError(f"no parameter {head!r}; the parameters are {self.field_names}")
        editor = self._editors[head]
        if not rest:
            return editor
        if not isinstance(editor, NestedEditor):
            raise KeyError(f"parameter {head!r} has no sub-parameters")
        return editor.panel.editor(rest)

    def values(self) -> dict[str, Any]:
        """Return ``{field: value}`` of the editors (sub-panels built, may raise)."""
        return {name: editor.value for name, editor in self._editors.items()}

    def build(self) -> Any:
        """Return a new object of the source's class with the edited values.

        Raises
        ------
        ValueError, TypeError
            From the class's own checks, e.g. a parameter out of range.
        """
        kwargs = {
            f.name: getattr(self.source, f.name)
            for f in dataclasses.fields(self.source)
            if f.init and f.name not in self._editors
        }
        kwargs.update(self.values())
        obj = type(self.source)(**kwargs)
        steps = getattr(self.source, "steps", None)
        if steps and hasattr(obj, "steps"):
            obj.steps = list(steps)
        return obj

    def set_values(self, obj: Any) -> None:
        """Show the field values of another object of the same class."""
        self.source = obj
        for name, editor in self._editors.items():
            editor.value = getattr(obj, name)

    def set_channel_names(self, names: list[str]) -> None:
        """Offer new channel names in the channel boxes (the chosen indices are kept)."""
        self._channel_names = list(names)
        for editor in self._editors.values():
            target = editor.inner if isinstance(editor, OptionalEditor) else editor
            if isinstance(target, (ChannelEditor, NestedEditor)):
                target.set_channel_names(names)


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
    "TupleEditor",
    "field_annotation",
    "field_docs",
    "make_editor",
    "short_doc",
]
