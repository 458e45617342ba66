"""The end-to-end registry: `dlvm demo` on a small ELPV subset with the tiny recipe, run
once per test session (about 2 minutes) and shared by the tests that need a registry
filled by the real pipeline (tests/e2e/test_pipeline_e2e.py, then tests/browser/test_ui_browser.py,
which runs after it and only adds to it)."""
from __future__ import annotations

import shutil

import pytest
from clirun import dlvm, dlvm_env

N_IMAGES = 120


@pytest.fixture(scope="session")
def demo(tmp_path_factory, generic_corpus):
    """(state directory, CLI environment, the demo's stdout)."""
    root = tmp_path_factory.mktemp("e2e")
    # A few generic photos stand in for the generic corpus: the generic baseline's path
    # (ingest + pretraining with the same recipe) runs for real, only smaller.
    generic = root / "generic"
    generic.mkdir()
    for path in sorted((generic_corpus / "train").rglob("*.jpg"))[::400][:40]:
        shutil.copy(path, generic / path.name)
    assert len(list(generic.iterdir())) >= 20, f"generic corpus missing at {generic_corpus}"
    home = root / "state"
    env = dlvm_env(home)  # no PREFECT_API_URL: the embedded Prefect API, as in the README
    out = dlvm(env, "demo", "--limit", str(N_IMAGES), "--recipe", "tiny", "--seeds", "0,1",
               "--fractions", "0.25,1.0", "--generic", str(generic), timeout=900)
    return home, env, out.stdout


@pytest.fixture
def demo_env_on_server(demo, prefect_api) -> dict[str, str]:
    """The demo's CLI environment, with the session's Prefect server: the flows that commands run
    on the demo's registry afterwards report there instead of each command starting the embedded
    API again (about 10 s apiece on 2 busy cores). The demo itself ran on the embedded API (as in
    the README), and its runs stay there: `dlvm runs` and the dashboard read them with ``demo``'s
    own environment."""
    return {**demo[1], "PREFECT_API_URL": prefect_api}
