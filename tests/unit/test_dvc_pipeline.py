"""dvc.yaml as a pipeline DVC can reason about: each stage declares the code it runs (kept
equal to its flow's import closure), and `dvc status` on a real DVC repository marks
exactly the stages whose inputs or code changed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from import_graph import closure, modules

ROOT = Path(__file__).resolve().parents[2]
STAGE_FLOWS = {"ingest": "flows.ingest", "labels": "flows.labels", "pretrain": "flows.pretrain",
               "evaluate": "flows.evaluate", "adapt": "flows.adapt", "promote": "flows.promote"}
DVC = Path(sys.executable).parent / "dvc"


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_of(flow: str) -> set[str]:
    """app/cli.py (every stage's command) and the files of every module ``flow`` imports, transitively."""
    files = modules()
    return {"app/cli.py"} | {str(files[m].relative_to(ROOT)) for m in closure(flow)}


def test_every_stage_declares_exactly_the_code_it_runs():
    for name, flow in STAGE_FLOWS.items():
        declared = {d for d in stages()[name]["deps"] if d.endswith(".py")}
        expected = code_of(flow)
        assert declared == expected, (
            f"dvc.yaml stage {name!r}: missing {sorted(expected - declared)}, not imported {sorted(declared - expected)}")


def dvc(repo: Path, *args: str) -> str:
    done = subprocess.run([str(DVC), *args], cwd=repo, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin",
                                                         "HOME": str(repo)})
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stderr}"
    return done.stdout


def stale(repo: Path) -> set[str]:
    return {name.split(":")[-1] for name in json.loads(dvc(repo, "status", "--json") or "{}")}


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    """A DVC repository holding dvc.yaml, params.yaml, the code and the inputs, with every
    stage recorded as done (dvc commit writes dvc.lock without running the commands)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for floor in ("app", "flows", "components"):
        shutil.copytree(ROOT / floor, repo / floor, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    source = repo / params["data"]["source"]
    source.mkdir(parents=True)
    (source / "cell.png").write_bytes(b"an image")
    (repo / params["labels"]["export"]).write_text("[]")
    (repo / "outputs").mkdir()
    for name in STAGE_FLOWS:
        (repo / "outputs" / f"{name}.json").write_text("{}")
    dvc(repo, "init", "--no-scm", "-q")
    dvc(repo, "commit", "--force", "-q")
    assert stale(repo) == set()
    return repo


def touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def test_dvc_reruns_exactly_what_is_stale(pipeline_repo):
    repo = pipeline_repo
    touch(repo / "components/training/augment.py")  # a training module
    assert stale(repo) == {"pretrain", "evaluate", "adapt", "promote"}

    dvc(repo, "commit", "--force", "-q")
    touch(repo / "components/evaluation/gate.py")  # the promotion gate only
    assert stale(repo) == {"promote"}

    dvc(repo, "commit", "--force", "-q")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / params["data"]["source"] / "new.png").write_bytes(b"another image")  # new raw images
    assert stale(repo) == {"ingest"}

    dvc(repo, "commit", "--force", "-q")
    params["pretrain"]["recipe"] = "tiny"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert stale(repo) == {"pretrain", "evaluate", "adapt"}
