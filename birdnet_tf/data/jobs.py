"""One runner for the package's long per-file jobs (``prepare`` and ``extract``).

A job is a list of items, one per source file, each with a ``key`` (its name in the
dataset) and a ``path`` (the file), and a worker function that handles one item and
never raises: it returns ``(value, error, warnings)``, the item's result (``None`` on
failure), a one-line error (``None`` on success) and the texts of the warnings it
caught, which the parent re-issues. :func:`run_jobs` gives every such job the same
behaviour:

* **resumable**: an item that an earlier run finished (``done_before`` returns its
  value) is counted as skipped and not run again;
* **parallel**: a process pool, forked where that is safe (:func:`pool_context`); each
  worker exits when the parent dies (``kill -9``) instead of waiting for ever on its
  pipe; a worker that dies (decoder crash, out of memory) breaks the pool and every
  unfinished item with it, so those run again in a fresh pool, and when a pool dies
  before finishing anything the first of them runs alone: only the culprit fails;
* **skip and count**: a failed item is warned about (``"<name>: <key> (<path>) failed:
  <reason>"``) and handed to ``on_failed``; the others go on;
* a tqdm progress bar over all items, the skipped ones included.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from birdnet_tf.errors import BirdnetError

__all__ = ["Outcome", "check_workers", "exit_with_parent", "failure_reason", "one_line", "pool_context",
           "run_jobs"]

#: What a worker returns for one item: ``(value or None, one-line error or None, warning texts)``.
Outcome = tuple[Any, "str | None", "list[str]"]


class _Item(Protocol):
    key: str
    path: Any


T = TypeVar("T", bound=_Item)


def one_line(text: object) -> str:
    """``text`` with every run of white space (newlines included) replaced by one space."""
    return " ".join(str(text).split())


def failure_reason(e: BaseException, path) -> str:
    """One line saying why a file of a long job failed (a worker's catch-all; the path is said elsewhere)."""
    if isinstance(e, BirdnetError):
        msg, prefix = one_line(str(e)), f"{path}: "
        return msg[len(prefix):] if msg.startswith(prefix) else msg
    if isinstance(e, MemoryError):
        return "out of memory"
    return one_line(f"{type(e).__name__}: {e}")


def check_workers(workers: object) -> int:
    """``workers`` as an int; ``ValueError`` unless it is a positive integer."""
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


def exit_with_parent() -> None:
    """Worker initializer: the worker exits when the process that started it is gone
    (``kill -9`` of the job), instead of waiting for ever on its pipe."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where it is safe and cheap (Linux, no extra threads, no TensorFlow), else ``spawn``.

    A script that runs a job with spawned workers needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    if (
        sys.platform.startswith("linux")
        and threading.active_count() == 1
        and "tensorflow" not in sys.modules
    ):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _start_worker(setup: Callable[[int], None] | None, threads: int) -> None:
    exit_with_parent()
    if setup is not None:
        setup(threads)


def _run_pool(items: list[T], work: Callable[..., Outcome], args: Callable[[T], tuple], workers: int,
              record: Callable[[T, Outcome], None], ctx, setup: Callable[[int], None] | None) -> list[T]:
    """Runs ``items`` in a process pool; returns the items lost to a broken pool, in order."""
    crashed: list[int] = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                                initargs=(setup, threads)) as pool:
        futures = {pool.submit(work, *args(item)): i for i, item in enumerate(items)}
        try:
            for fut in cf.as_completed(futures):
                index = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    crashed.append(index)
                    continue
                except Exception as e:  # noqa: BLE001 - e.g. a result that failed to pickle
                    outcome = (None, one_line(f"{type(e).__name__}: {e}"), [])
                record(items[index], outcome)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [items[i] for i in sorted(crashed)]


def run_jobs(
    items: Sequence[T],
    work: Callable[..., Outcome],
    args: Callable[[T], tuple],
    *,
    name: str,
    workers: int,
    on_done: Callable[[T, Any, bool], None],
    on_failed: Callable[[T, str], None],
    done_before: Callable[[T], Any] | None = None,
    progress: bool = True,
    crash_reason: str = "the worker process died (decoder crash or out of memory)",
    worker_setup: Callable[[int], None] | None = None,
    before_in_process: Callable[[], None] | None = None,
) -> None:
    """Runs ``work(*args(item))`` for every item not done before (see the module docstring).

    Args:
        items: The job's items, in the order they are handed out; each has ``key`` and ``path``.
        work: The worker: a module-level function (it is pickled for the pool) returning an
            :data:`Outcome` and never raising.
        args: The positional arguments of ``work`` for an item (called in this process).
        name: The job's name, for the progress bar and the failure warnings.
        workers: Worker processes; 1 (or a single item to run) runs in this process.
        on_done: ``on_done(item, value, fresh)`` for every finished item: ``fresh`` is False
            for an item ``done_before`` kept, True for one run now.
        on_failed: ``on_failed(item, reason)`` for every item that failed (after its warning).
        done_before: The value of an item an earlier run finished, or ``None`` to run it.
        progress: Show the progress bar (on a terminal).
        crash_reason: The failure reason of an item whose worker died, even when run alone.
        worker_setup: ``worker_setup(threads)`` runs once in each worker process, with the
            worker's share of the cores; must be a module-level function.
        before_in_process: Runs once before the first item when items run in this process.
    """
    from tqdm.auto import tqdm

    workers = check_workers(workers)
    todo: list[T] = []
    skipped = 0
    for item in items:
        value = done_before(item) if done_before is not None else None
        if value is None:
            todo.append(item)
        else:
            on_done(item, value, False)
            skipped += 1

    # Chosen once, before tqdm may start its monitor thread; retries reuse it.
    ctx = pool_context() if workers > 1 and len(todo) > 1 else None
    bar = tqdm(total=len(items), initial=skipped, desc=name, unit="file", leave=True,
               disable=None if progress else True)

    def record(item: T, outcome: Outcome) -> None:
        value, error, texts = outcome
        for text in texts:
            warnings.warn(text, stacklevel=3)
        if error is None:
            on_done(item, value, True)
        else:
            on_failed(item, error)
            warnings.warn(f"{name}: {item.key} ({item.path}) failed: {error}", stacklevel=3)
        bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            if todo and before_in_process is not None:
                before_in_process()
            for item in todo:
                record(item, work(*args(item)))
        else:
            remaining = todo
            while remaining:
                crashed = _run_pool(remaining, work, args, min(workers, len(remaining)), record, ctx,
                                    worker_setup)
                if crashed and len(crashed) == len(remaining):
                    head, crashed = crashed[0], crashed[1:]
                    if _run_pool([head], work, args, 1, record, ctx, worker_setup):
                        record(head, (None, crash_reason, []))
                remaining = crashed
    finally:
        bar.close()
