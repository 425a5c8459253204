"""The napari-sima demo: napari with the sample dataset and all our widgets docked.

Run it with ``napari-sima demo`` (or ``make demo``).  Every widget contributed in
``napari.yaml`` must be listed in :data:`DEMO_WIDGET_COMMANDS` (a test checks it), in
the order the docks should appear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

#: Plugin name in the npe2 manifest.
PLUGIN_NAME = "napari-sima"

#: Sample-data key of the demo dataset.
DEMO_SAMPLE_KEY = "calcium"

#: Widget commands (manifest ids) docked by the demo, in docking order.
DEMO_WIDGET_COMMANDS: list[str] = [
    "napari-sima.dataset_widget",
    "napari-sima.roi_widget",
    "napari-sima.segment_widget",
    "napari-sima.extract_widget",
    "napari-sima.spikes_widget",
    "napari-sima.traces_widget",
    "napari-sima.sessions_widget",
    "napari-sima.pipeline_widget",
]

#: Dock areas of the widgets not docked in napari's default area (the right side).
DEMO_WIDGET_AREAS: dict[str, str] = {
    "napari-sima.traces_widget": "bottom",
}

#: Initial window size (width, height) in pixels.
DEMO_WINDOW_SIZE = (1400, 900)


def widget_display_names(commands: list[str] | None = None) -> list[str]:
    """Return the manifest display names of widget commands.

    Parameters
    ----------
    commands : list of str, optional
        Command ids (default :data:`DEMO_WIDGET_COMMANDS`).

    Returns
    -------
    list of str
        Display names, as napari's ``add_plugin_dock_widget`` expects them.

    Raises
    ------
    ValueError
        If a command is not a widget of the manifest.
    """
    from npe2 import PluginManager

    commands = DEMO_WIDGET_COMMANDS if commands is None else commands
    manifest = PluginManager.instance().get_manifest(PLUGIN_NAME)
    by_command = {w.command: w.display_name for w in manifest.contributions.widgets or []}
    missing = [c for c in commands if c not in by_command]
    if missing:
        raise ValueError(f"{missing} are not widget commands of {PLUGIN_NAME}'s napari.yaml")
    return [by_command[c] for c in commands]


def dock_plugin_widget(viewer: napari.Viewer, command: str, area: str = "right") -> object:
    """Dock a widget of the manifest in a given area of the window.

    ``add_plugin_dock_widget`` always uses napari's remembered or default (right)
    area; this builds the widget from the manifest and docks it under the same name
    (``'<display name> (napari-sima)'``), so napari's Plugins menu and
    ``viewer.window.dock_widgets`` find it as usual.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    command : str
        Widget command id, e.g. ``'napari-sima.traces_widget'``.
    area : {'left', 'right', 'top', 'bottom'}
        Dock area.

    Returns
    -------
    QWidget
        The widget.
    """
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN_NAME)
    contribution = next(w for w in manifest.contributions.widgets or [] if w.command == command)
    name = f"{contribution.display_name} ({PLUGIN_NAME})"
    docked = viewer.window.dock_widgets
    if name in docked:
        return docked[name]
    widget = contribution.get_callable()(viewer)
    viewer.window.add_dock_widget(widget, name=name, area=area)
    return widget


def run_demo(block: bool = True) -> napari.Viewer:
    """Open napari with the sample dataset loaded and all napari-sima widgets docked.

    Parameters
    ----------
    block : bool
        Enter the Qt event loop (``napari.run()``) until the window is closed.
        Use False in scripts and tests; then close the viewer yourself.

    Returns
    -------
    napari.Viewer
        The viewer (already closed when ``block`` is True and the user quit).
    """
    import napari

    viewer = napari.Viewer(title="napari-sima demo")
    viewer.window.resize(*DEMO_WINDOW_SIZE)
    viewer.open_sample(PLUGIN_NAME, DEMO_SAMPLE_KEY)
    movie_layers = [layer for layer in viewer.layers if layer.visible]
    if movie_layers:
        viewer.layers.selection.active = movie_layers[0]
    first_right = None
    for command, name in zip(DEMO_WIDGET_COMMANDS, widget_display_names(), strict=True):
        area = DEMO_WIDGET_AREAS.get(command)
        if area is None:
            # Tabbed: stacked, seven docks would make the window taller than a screen.
            dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name, tabify=True)
            first_right = first_right or dock
        else:
            dock_plugin_widget(viewer, command, area)
    if first_right is not None:
        first_right.raise_()  # the Dataset dock's tab in front
    viewer.dims.current_step = (0,) * viewer.dims.ndim
    if block:
        napari.run()
    return viewer
