"""Running blocks of work on a caller's :class:`concurrent.futures.Executor`.

Extraction (:mod:`napari_sima.core.extract`) and spike inference
(:mod:`napari_sima.core.spikes`) accept ``executor=``: any
:class:`concurrent.futures.Executor`, typically ``client.get_executor()`` of a
``dask.distributed`` client (also the client of ``distributed.worker_client()``
inside a task), or a :class:`~concurrent.futures.ProcessPoolExecutor` /
:class:`~concurrent.futures.ThreadPoolExecutor`.  The work is cut into blocks
submitted all at once; the calling process only waits and places the results, in
whatever order they finish, exactly where the serial code would put them.  This
module holds the argument checks and the wait loop both share.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

import numpy as np

__all__ = ["check_chunk_size", "check_executor", "completed"]

K = TypeVar("K")


def check_executor(executor: Any, n_processes: int) -> cf.Executor | None:
    """Check an ``executor=`` argument and its combination with ``n_processes``.

    Parameters
    ----------
    executor : concurrent.futures.Executor or None
        The executor given by the caller.
    n_processes : int
        The (already checked) ``n_processes`` given with it.

    Returns
    -------
    concurrent.futures.Executor or None
        ``executor`` unchanged.

    Raises
    ------
    TypeError
        If ``executor`` is not a :class:`concurrent.futures.Executor` (a
        ``dask.distributed`` ``Client`` itself is not one: pass
        ``client.get_executor()``).
    ValueError
        If ``n_processes > 1`` is given too.
    """
    if executor is None:
        return None
    if not isinstance(executor, cf.Executor):
        hint = (
            " (for a dask.distributed Client, pass client.get_executor())"
            if hasattr(executor, "get_executor")
            else ""
        )
        raise TypeError(
            f"executor must be a concurrent.futures.Executor{hint}; got {type(executor).__name__}"
        )
    if n_processes > 1:
        raise ValueError(
            f"executor and n_processes={n_processes} cannot be combined: with an executor "
            f"its workers do the parallel work; keep n_processes=1 (the default)"
        )
    return executor


def check_chunk_size(value: Any, name: str) -> int | None:
    """Return ``value`` as a positive int (None stays None).

    Raises
    ------
    ValueError
        If ``value`` is not None or a positive integer; the message names ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, got {int(value)}")
    return int(value)


def completed(
    futures: dict[cf.Future, K],
    describe: Callable[[K], str] | None = None,
) -> Generator[tuple[K, Any], None, None]:
    """Yield ``(key, result)`` for every future as it finishes, in finishing order.

    Futures that finish together are yielded in the order of ``futures``.  When the
    generator is closed early, or a future failed (its exception is raised here),
    every future not yet finished is cancelled (work already running may still run
    to its end; its result is dropped).

    Parameters
    ----------
    futures : dict
        Future -> key (e.g. the index of the block it computes).
    describe : callable, optional
        ``describe(key)`` names the work of a failed future; added as a note to its
        exception (``"while computing <description> on the executor"``).
    """
    order = {fut: k for k, fut in enumerate(futures)}
    pending: set[cf.Future] = set(futures)
    try:
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in sorted(done, key=order.__getitem__):
                try:
                    result = fut.result()
                except Exception as err:
                    if describe is not None:
                        err.add_note(f"while computing {describe(futures[fut])} on the executor")
                    raise
                yield futures[fut], result
    finally:
        cancel(futures)


def cancel(futures: Iterable[cf.Future]) -> None:
    """Cancel every future that has not finished (no effect on finished ones)."""
    for fut in futures:
        fut.cancel()
