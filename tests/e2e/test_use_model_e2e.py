"""Issue 17's acceptance on the registry `dlvm demo` filled (tests/e2e_demo.py): `dlvm predict`
on held-back ELPV images (no drift) and on inverted ones (a drift alert, shown by `dlvm
models show`), `dlvm export` with a passing parity check, the exported file run by the
stand-alone snippet, and `dlvm models card elpv-classifier` with the gate's evidence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import dlvm
from PIL import Image

from components.data.elpv import elpv_labels, elpv_root
from components.inference.predict import read_predictions_csv
from components.registry import queries
from components.registry.db import read_session
from components.settings import Settings
from components.storage import open_store

pytestmark = pytest.mark.e2e
MODEL = "elpv-classifier"
SNIPPET = Path(__file__).resolve().parents[2] / "docs/snippets/onnx_predict.py"
N_HELD_BACK = 60


@pytest.fixture(scope="module")
def held_back(demo, tmp_path_factory) -> Path:
    """ELPV images the demo's dataset does not hold, drawn at random."""
    home, env, _ = demo
    taken = {p.name for p in (home / "demo" / "elpv" / "images").iterdir()}
    rest = [r.path for r in elpv_labels() if Path(r.path).name not in taken]
    folder = tmp_path_factory.mktemp("held-back")
    for i in np.random.default_rng(7).choice(len(rest), N_HELD_BACK, replace=False):
        (folder / Path(rest[i]).name).write_bytes((elpv_root() / rest[i]).read_bytes())
    return folder


def model_ref(home: Path) -> str:
    """The production version when the demo's gate promoted one, else the newest."""
    with read_session(Settings(home=home)) as session:
        return MODEL if queries.get_alias_version(session, MODEL, "production") else f"{MODEL}:1"


def test_predict_a_held_back_folder_then_an_inverted_one(demo, demo_env_on_server, held_back, tmp_path):
    home, env = demo[0], demo_env_on_server
    summary_path = tmp_path / "predict.json"
    out = dlvm(env, "predict", str(held_back), "--model", model_ref(home), "--summary", str(summary_path)).stdout
    summary = json.loads(summary_path.read_text())
    assert summary["n_images"] == N_HELD_BACK and summary["n_failed"] == 0 and "no drift" in out
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for path in held_back.iterdir():
        with Image.open(path) as img:
            Image.fromarray(255 - np.asarray(img.convert("L"))).save(inverted / path.name)
    assert "drift alert" in dlvm(env, "predict", str(inverted), "--model", model_ref(home)).stdout
    assert "drift alert" in dlvm(env, "models", "show", MODEL).stdout


def test_export_passes_parity_and_runs_in_plain_onnxruntime(demo, demo_env_on_server, held_back, tmp_path):
    home, env = demo[0], demo_env_on_server
    onnx_file = tmp_path / "model.onnx"
    out = dlvm(env, "export", model_ref(home), "--output", str(onnx_file)).stdout
    assert "passed" in out and onnx_file.stat().st_size > 10_000
    # Same answers as `dlvm predict` on the same images, with dlvm and torch unimportable.
    settings = Settings(home=home)
    with read_session(settings) as session:
        from sqlmodel import col, select

        from components.registry.tables import PredictionBatch
        batch = session.exec(select(PredictionBatch).where(PredictionBatch.source == str(held_back.resolve()))
                             .order_by(col(PredictionBatch.id).desc())).first()
    rows = read_predictions_csv(open_store(settings).get_bytes(batch.predictions_uri, batch.predictions_sha256))[:10]
    script = ("import runpy, sys\nfor name in ('app', 'components', 'flows', 'torch'): sys.modules[name] = None\n"
              f"sys.argv = {['onnx_predict.py', str(onnx_file), *[str(held_back / r['image']) for r in rows]]!r}\n"
              f"runpy.run_path({str(SNIPPET)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(line)["class"] for line in proc.stdout.splitlines()] == [r["class"] for r in rows]


def test_model_card_holds_the_evidence(demo):
    home, env, _ = demo
    card = dlvm(env, "models", "card", MODEL).stdout
    assert card.startswith(f"# Model card: {MODEL}:")
    assert "elpv v1" in card and "## Promotion evidence" in card and "one-sided lower bound" in card
    assert "labels to match" in card or "Label efficiency" in card
    assert "passed" in card  # the export's parity, recorded by the test above
