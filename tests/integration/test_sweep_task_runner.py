"""The evaluation sweep on a Prefect task runner (flows/evaluate.py, components/orchestration/task_runners.py):
the same tiny sweep, sequential in the flow's process and on Dask clusters of worker
processes (one the runner starts, one already running that DLVM_DASK_ADDRESS points at),
gives the same rows and the same probabilities, and every unit is a task run on the
Prefect server."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from prefect import flow
from synthetic import banded_images as _striped_images
from synthetic import fake_shas as _shas

from components.evaluation.split import test_split as make_test_split
from components.evaluation.sweep import Backbone, SweepConfig, plan_units
from components.models.vit import ViTConfig
from components.orchestration.task_runners import sweep_task_runner
from components.settings import Settings
from components.training.recipes import tiny_adapt
from flows.evaluate import sweep_on_task_runner

VIT = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def tiny_sweep():
    """Two backbones x (probe + fine-tune) x 2 fractions x 2 seeds: 16 runs in 10 units (a feature unit per backbone, a unit per fine-tune run)."""
    from components.training import adapt as learn

    images, labels = _striped_images(48, 3, 16, seed=0)
    train, test = make_test_split(_shas(48), labels)
    backbones = [Backbone("scratch", VIT, None),
                 Backbone("other", VIT, learn.build_encoder(VIT, None, seed=123).state_dict(), model_version_id=7)]
    cfg = SweepConfig(fractions=(0.25, 1.0), seeds=(0, 1), methods=("probe", "finetune"), n_boot=100,
                      probe=tiny_adapt("probe", probe_l2=1e-2),
                      finetune=tiny_adapt("finetune", epochs=1, probe_l2=1e-2), device="cpu")
    return backbones, images, labels, train, test, 3, cfg


@flow(name="sweep-on-task-runner-test")
def sweep_in_a_flow(settings: Settings, sweep: tuple):
    return sweep_on_task_runner(settings, *sweep)


@pytest.fixture
def one_torch_thread():
    """Dask workers run torch on one thread each (the nanny sets OMP_NUM_THREADS=1); CPU
    kernels split sums by thread count, which moves the last bit of a float. The flow's own
    process does the same here, so any difference left would be the runner's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same(result, reference):
    assert result.rows == reference.rows  # order, n_train, every metric and CI bound
    assert list(result.test_proba) == list(reference.test_proba)
    for key, proba in reference.test_proba.items():
        np.testing.assert_array_equal(result.test_proba[key], proba, err_msg=str(key))
    np.testing.assert_array_equal(result.test_idx, reference.test_idx)
    assert result.backbones == reference.backbones


def _sweep_unit_runs(api_url: str, flow_run_id) -> list:
    """The task runs of one flow run (the session's Prefect server holds other tests' runs too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])), limit=200)
    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def test_settings_choose_the_task_runner():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    sequential = sweep_task_runner(Settings())
    assert isinstance(sequential, ThreadPoolTaskRunner) and sequential._max_workers == 1
    local = sweep_task_runner(Settings(task_runner="dask", dask_workers=3))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True,
                                    "dashboard_address": None}
    assert "n_workers" not in sweep_task_runner(Settings(task_runner="dask")).cluster_kwargs  # Dask's default
    existing = sweep_task_runner(Settings(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert existing.address == "tcp://10.0.0.5:8786" and not existing.cluster_kwargs


def test_sweep_on_dask_gives_the_sequential_rows(tiny_sweep, prefect_api, one_torch_thread):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        sequential = sweep_in_a_flow(Settings(), tiny_sweep)
        state = sweep_in_a_flow(Settings(task_runner="dask", dask_workers=2), tiny_sweep, return_state=True)
        on_dask = state.result()
    assert len(sequential.rows) == 16
    _assert_same(on_dask, sequential)
    # Each unit ran as a task run the Prefect server recorded, named after what it ran.
    runs = _sweep_unit_runs(prefect_api, state.state_details.flow_run_id)
    units = plan_units(tiny_sweep[0], tiny_sweep[-1])
    assert len(runs) == len(units) == 10
    assert all(r.state and r.state.is_completed() for r in runs)
    assert {r.name for r in runs} == {f"sweep {u.label}" for u in units}


def test_sweep_on_an_existing_dask_cluster(tiny_sweep, prefect_api, one_torch_thread):
    """DLVM_DASK_ADDRESS: the units go to a cluster that was already running (workers started
    as docs/SCALING.md says: processes, one thread each), which is still up afterwards."""
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings


    backbones, images, labels, train, test, classes, _ = tiny_sweep
    probes = SweepConfig(fractions=(0.25, 1.0), seeds=(0, 1), methods=("probe", "prototype"), n_boot=100,
                         probe=tiny_adapt("probe", probe_l2=1e-2), device="cpu")
    sweep = (backbones, images, labels, train, test, classes, probes)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            temporary_settings({PREFECT_API_URL: prefect_api}):
        reference = sweep_in_a_flow(Settings(), sweep)
        on_cluster = sweep_in_a_flow(Settings(task_runner="dask", dask_address=cluster.scheduler_address), sweep)
        with Client(cluster.scheduler_address) as client:
            assert len(client.scheduler_info()["workers"]) == 2  # still up, both workers
            # the cluster's scheduler ran the units (one per backbone here), each to completion
            ran = cluster.scheduler.task_prefixes["sweep_unit"].state_counts["memory"]
        assert ran == len(plan_units(backbones, probes)) == 2
    _assert_same(on_cluster, reference)
