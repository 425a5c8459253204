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
]

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
    for name in widget_display_names():
        viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name)
    viewer.dims.current_step = (0,) * viewer.dims.ndim
    if block:
        napari.run()
    return viewer
