"""Shared fixtures and the test kinds (tests/unit, integration, e2e, browser; one marker each): a fresh dlvm state directory per test, the loopback S3 server
(tests/s3server.py) and a throw-away PostgreSQL database."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

# Before anything imports Prefect (its settings are read once): the embedded API server that
# in-process flow calls start can take well over Prefect's default 20 s on a busy 2-core
# machine running two test workers; the CLI sets the same for its own processes.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402
from e2e_demo import demo, demo_env_on_server  # noqa: F401, E402  (fixtures)
from s3server import S3Server, s3_bucket, s3_server  # noqa: F401, E402  (fixtures)

# ../shared/data next to the checkout (the project's data shelf), or where DLVM_TEST_GENERIC_CORPUS says.
GENERIC_CORPUS_PLACES = tuple(Path(p) for p in (os.environ.get("DLVM_TEST_GENERIC_CORPUS", "/nonexistent"),
                                                Path(__file__).resolve().parents[2] / "shared/data/generic-imagenette",
                                                "/work/shared/data/generic-imagenette"))
DEEPPCB_PLACES = tuple(Path(p) for p in (os.environ.get("DLVM_TEST_DEEPPCB", "/nonexistent"),
                                         Path(__file__).resolve().parents[2] / "shared/data/pcb-deeppcb",
                                         "/work/shared/data/pcb-deeppcb"))
POSTGRES_ADMIN_URL = os.environ.get("DLVM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


KINDS = ("unit", "integration", "e2e", "browser")
# The order the suite hands work to its two workers (`make test`: --dist loadfile
# --no-loadscope-reorder): the long files first, the many short unit files last, so neither
# worker is left running one long file while the other is idle.
RUN_ORDER = {"e2e": 0, "browser": 1, "integration": 2, "unit": 3}
# Files that share an expensive session fixture run on one worker as one work unit, so the
# fixture is built once instead of once per worker:
# - the `demo` registry (tests/e2e_demo.py, two minutes to build);
# - the Label Studio server (`label_studio_server`: its first start migrates a fresh database,
#   40-60 s of CPU on a busy 2-core machine). The two files already share it when the suite runs
#   in one process; each works in a project and state directory of its own.
DEMO_FILES = ("tests/e2e/test_pipeline_e2e.py", "tests/e2e/test_use_model_e2e.py", "tests/browser/test_ui_browser.py")
LABEL_STUDIO_FILES = ("tests/integration/test_detection_label_studio.py",
                      "tests/integration/test_feedback_label_studio.py")
SHARED_UNITS = {**{path: "demo registry" for path in DEMO_FILES},
                **{path: "label studio server" for path in LABEL_STUDIO_FILES}}


def pytest_collection_modifyitems(items):
    """Each test carries its kind's marker (its folder), so `-m unit` and friends select by kind;
    the long kinds run first (a stable sort: files keep their order within a kind)."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)
    items.sort(key=lambda item: RUN_ORDER.get(item.path.parent.name, len(RUN_ORDER)))


def pytest_xdist_make_scheduler(config, log):
    """Under --dist loadfile, one work unit per test file, except the files of SHARED_UNITS: one unit each."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixturesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_UNITS.get(path, path)

    return SharedFixturesTogether(config, log)


@pytest.fixture
def dlvm_home(tmp_path, monkeypatch):
    """A settings environment of its own: embedded defaults under tmp_path/state."""
    from components.settings import get_settings, reset_settings

    home = tmp_path / "state"
    monkeypatch.setenv("DLVM_HOME", str(home))
    for var in ("DLVM_DATABASE_URL", "DLVM_ARTIFACTS", "DLVM_DVC_REMOTE", "DLVM_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    reset_settings()
    yield get_settings()
    reset_settings()


@pytest.fixture(scope="session")
def generic_corpus() -> Path:
    """The generic natural-image corpus (labels.csv + train/ + val/)."""
    found = [p for p in GENERIC_CORPUS_PLACES if (p / "labels.csv").is_file()]
    if not found:
        pytest.fail(f"generic corpus not found at any of {[str(p) for p in GENERIC_CORPUS_PLACES]}")
    return found[0]


@pytest.fixture(scope="session")
def deeppcb() -> Path:
    """The DeepPCB set (images/ + boxes.csv) on the data shelf next to the checkout."""
    found = [p for p in DEEPPCB_PLACES if (p / "boxes.csv").is_file() and (p / "images").is_dir()]
    if not found:
        pytest.fail(f"DeepPCB not found at any of {[str(p) for p in DEEPPCB_PLACES]}")
    return found[0]


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this test session; yields its SQLAlchemy URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"dlvm_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    from components.registry.db import dispose_engines
    dispose_engines()
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server on loopback for the session; yields its API URL. CLI tests
    point PREFECT_API_URL at it instead of paying Prefect's ephemeral start per command."""
    from components.stack.services import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    """A real Label Studio server on loopback, installed and started by components/stack/label_studio.sh
    (its own venv, first use about a minute), serving local files from anywhere under /."""
    from components.stack.services import label_studio

    with label_studio(tmp_path_factory.mktemp("label-studio")) as server:
        yield server
