"""Stand-ins for SIMA's modules, so that test pickles name SIMA's classes as its files do."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def fake_sima_modules(classes: dict[str, Iterable[str]]) -> Iterator[dict[str, type]]:
    """Install modules such as ``sima.sequence`` holding empty classes, for a moment.

    Parameters
    ----------
    classes : dict
        ``{module name: class names}``, e.g. ``{'sima.sequence': ['_Sequence_HDF5']}``.

    Yields
    ------
    dict
        ``{class name: class}``; pickling an instance (or the class) names
        ``module.ClassName``.  The previous ``sys.modules`` entries come back after.
    """
    names = {m.rsplit(".", k)[0] for m in classes for k in range(m.count(".") + 1)}
    saved = {name: sys.modules.get(name) for name in names}
    made: dict[str, type] = {}
    try:
        for name in sorted(names):
            sys.modules[name] = types.ModuleType(name)
        for modname, class_names in classes.items():
            for class_name in class_names:
                cls = type(class_name, (), {})
                cls.__module__, cls.__qualname__ = modname, class_name
                setattr(sys.modules[modname], class_name, cls)
                made[class_name] = cls
        yield made
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
