"""The subcommands of the ``napari-sima`` command line, one module per group.

:mod:`napari_sima.cli` builds the parser from the ``add_parsers`` function of each
module and runs the chosen command through :func:`.common.execute`, which turns the
core's documented exceptions into a one-line message and an exit code.  Nothing here
imports napari or Qt (only ``demo`` does, when it runs), and the core is imported by
the commands themselves, so ``napari-sima --help`` starts fast.
"""
