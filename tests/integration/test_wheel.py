"""dlvm as a user installs it: a wheel built from the repository, installed (not editable)
into a fresh virtual environment and run from outside the checkout, finds everything it
ships (console script, the Label Studio script, the registry migrations, the dashboard's
templates)."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the dlvm wheel; its dependencies come from this test venv's
    site-packages through a path entry (which does not activate the editable install there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, stdin=subprocess.DEVNULL, timeout=600)
    (wheel,) = (tmp / "dist").glob("dlvm-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, stdin=subprocess.DEVNULL, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (Path(purelib) / "dlvm-test-deps.pth").write_text("\n".join(deps) + "\n")
    return venv


def run(venv: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DLVM_", "PYTHONPATH", "LABEL_STUDIO_"))}
    return subprocess.run(list(args), cwd=cwd, env={**clean, "PATH": f"{venv / 'bin'}:{clean['PATH']}", **(env or {})},
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_installed_wheel_runs_its_commands_and_finds_its_files(installed, tmp_path):
    where = run(installed, "python", "-c", "import app, components, flows; print(app.__file__, components.__file__, "
                "flows.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(str(installed) in path and str(ROOT) not in path for path in where.stdout.split()), where.stdout

    for args in (["dlvm", "--help"], ["dlvm", "stack", "--help"]):
        out = run(installed, *args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert "label-studio" in out.stdout  # `dlvm stack --help`'s

    # The shipped shell script runs from the installed package (no Label Studio needed for `env`).
    env = run(installed, "dlvm", "stack", "label-studio", "env", cwd=tmp_path,
              env={"LABEL_STUDIO_DATA_DIR": str(tmp_path / "ls"), "LABEL_STUDIO_PORT": "18080"})
    assert env.returncode == 0, env.stderr
    assert "DLVM_LABEL_STUDIO_URL=http://127.0.0.1:18080" in env.stdout

    # Migrations (alembic.ini + versions) and the dashboard's templates ship too.
    home = {"DLVM_HOME": str(tmp_path / "state")}
    upgraded = run(installed, "dlvm", "db", "upgrade", cwd=tmp_path, env=home)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "state" / "registry.db").is_file()
    page = run(installed, "python", "-c", "from fastapi.testclient import TestClient\n"
               "from app.api.app import create_app\n"
               "r = TestClient(create_app()).get('/')\nprint(r.status_code)", cwd=tmp_path, env=home)
    assert page.returncode == 0 and page.stdout.strip() == "200", page.stderr
