"""Where a result came from: code revision, Prefect flow run, and the registry's Run rows."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
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


@contextmanager
def recorded_run(settings: Settings, kind: str, params: dict) -> Iterator[int]:
    """Record one step as a registry Run: 'running' now, then 'completed' or 'failed' with the error."""
    from components.registry import writes
    from components.registry.db import session_scope

    with session_scope(settings) as session:
        run = writes.start_run(session, kind=kind, params=params, flow_run_id=current_flow_run_id(),
                                code_revision=code_revision())
        run_id = run.id
    try:
        yield run_id
    except BaseException as exc:
        with session_scope(settings) as session:
            writes.finish_run(session, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    with session_scope(settings) as session:
        writes.finish_run(session, run_id, status="completed")
