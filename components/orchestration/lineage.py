"""Where a result came from: code revision, Prefect flow run, and the registry's Run rows."""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from components.settings import Settings


@lru_cache(maxsize=1)
def code_revision() -> str:
    """The git commit of the dlvm source tree ("+dirty" when it has local changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version
        try:
            return f"dlvm=={version('dlvm')}"
        except PackageNotFoundError:
            return "unknown"


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run we are inside, or None outside Prefect."""
    try:
        from prefect.runtime import flow_run
        run_id = flow_run.id
    except Exception:  # prefect missing or not in a run: lineage just has no flow run
        return None
    return str(run_id) if run_id else None


# Set by the command line: after a termination signal (SIGTERM from `timeout`, a scheduler
# or a container stop; Ctrl-C) has marked the run failed, the process ends within this many
# seconds even when Prefect cannot report the crash (its embedded server may have been
# stopped by the same signal, and its client would retry for minutes). None: never.
EXIT_AFTER_TERMINATION_S: float | None = None
CRASHED = "crashed: the process ended without finishing the run (killed?)"
TERMINATED = "stopped by a termination signal"


def _liveness_file(settings: Settings, run_id: int) -> Path:
    return settings.home / "runs" / f"{run_id}.alive"


@contextmanager
def _alive(settings: Settings, run_id: int) -> Iterator[None]:
    """Hold an exclusive lock on the run's liveness file while the step runs: the kernel
    drops it when the process dies however it dies (SIGKILL included), which is how
    :func:`reconcile_stale_runs` tells a crashed run from a running one."""
    path = _liveness_file(settings, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a read-only or odd home: the run is still recorded, only not reconcilable
        yield
        return
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _is_termination(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"


@contextmanager
def recorded_run(settings: Settings, kind: str, params: dict) -> Iterator[int]:
    """Record one step as a registry Run: 'running' now, then 'completed' or 'failed' with the error."""
    from components.registry import writes
    from components.registry.db import session_scope

    with session_scope(settings) as session:
        run = writes.start_run(session, kind=kind, params=params, flow_run_id=current_flow_run_id(),
                                code_revision=code_revision())
        run_id = run.id
    # The liveness lock is released only after the run's end is recorded, so a run that
    # finishes is never taken for a crashed one.
    alive = ExitStack()
    alive.enter_context(_alive(settings, run_id))
    try:
        yield run_id
    except BaseException as exc:
        terminated = _is_termination(exc)
        if terminated and EXIT_AFTER_TERMINATION_S is not None:
            timer = threading.Timer(EXIT_AFTER_TERMINATION_S, os._exit, args=(143,))
            timer.daemon = True
            timer.start()
        with session_scope(settings) as session:
            error = f"{type(exc).__name__}: {exc}"
            writes.finish_run(session, run_id, status="failed",
                              error=f"{TERMINATED} ({error})" if terminated else error)
        raise
    else:
        with session_scope(settings) as session:
            writes.finish_run(session, run_id, status="completed")
    finally:
        alive.close()


def reconcile_stale_runs(settings: Settings) -> list[int]:
    """Mark 'running' runs whose process is gone as failed (crashed); returns their ids.

    A run is gone when its liveness file exists and nobody holds its lock (the process
    died: SIGKILL, power loss). Runs without a liveness file (started before this existed,
    or on another machine whose state directory this is not) are left alone."""
    from sqlmodel import select

    from components.registry import writes
    from components.registry.db import session_scope
    from components.registry.tables import Run

    with session_scope(settings) as session:
        running = [r.id for r in session.exec(select(Run).where(Run.status == "running")).all()]
    crashed = []
    for run_id in running:
        path = _liveness_file(settings, run_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the run is alive
            os.close(fd)
            continue
        try:
            with session_scope(settings) as session:
                row = session.get(Run, run_id)
                if row is not None and row.status == "running":
                    writes.finish_run(session, run_id, status="failed", error=CRASHED)
                    crashed.append(run_id)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return crashed
