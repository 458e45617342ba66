"""The Prefect task runner that the evaluation sweep's units are submitted to, chosen by
settings (``DLVM_TASK_RUNNER``, ``DLVM_DASK_ADDRESS``, ``DLVM_DASK_WORKERS``; docs/SCALING.md).

- ``sequential`` (default): one unit after another in the flow's process, as a single
  machine has always run the sweep.
- ``dask``: prefect-dask's ``DaskTaskRunner``, on the cluster whose scheduler is at
  ``DLVM_DASK_ADDRESS``, or on a ``LocalCluster`` of worker processes started for the sweep
  and stopped after it.

Why no thread pool: fine-tuning seeds torch's process-wide random generator
(``torch.manual_seed``), so two units training in threads of one process would draw from
each other's stream and their numbers would depend on timing. Processes keep a unit's
numbers the same wherever it runs; for the same reason each Dask worker runs one task at a
time (one thread).
"""
from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.settings import Settings


def sweep_task_runner(settings: Settings) -> TaskRunner:
    """A fresh task runner for one sweep (a runner is started and stopped by its flow run)."""
    if settings.task_runner == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if settings.task_runner != "dask":  # Settings validates this; a hand-built object may not be
        raise ValueError(f"unknown task runner {settings.task_runner!r}")
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        # Start its workers with `dask worker ADDRESS --nthreads 1` (see the module doc).
        return DaskTaskRunner(address=settings.dask_address)
    cluster = {"threads_per_worker": 1, "processes": True,
               "dashboard_address": None}  # a dashboard per sweep would only take a port
    if settings.dask_workers:
        cluster["n_workers"] = settings.dask_workers
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)
