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
