"""components/settings.py: embedded defaults under DLVM_HOME, environment overrides,
secrets that never leak, clear errors, and the `dlvm settings` command."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from components.settings import get_settings, mask_url_password, reset_settings

ROOT = Path(__file__).resolve().parents[2]
ACCESS = "AKIA-test-access-7f3e"
SECRET = "s3cret-test-value-91b2"
DB_PASSWORD = "db-pass-5c8d"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No DLVM_* variable from the outside, and a working directory without a .env file."""
    for name in list(os.environ):
        if name.startswith("DLVM_"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    reset_settings()
    yield work
    reset_settings()


def s3_env(monkeypatch, **extra):
    values = {
        "DLVM_ARTIFACTS": "s3://dlvm-bucket/team/artifacts",
        "DLVM_S3_ENDPOINT": "http://127.0.0.1:9000",
        "DLVM_S3_ACCESS_KEY": ACCESS,
        "DLVM_S3_SECRET_KEY": SECRET,
        "DLVM_DATABASE_URL": f"postgresql+psycopg://dlvm:{DB_PASSWORD}@db.internal:5432/dlvm",
        **extra,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    return values


# ------------------------------------------------------------------------------ defaults


def test_defaults_live_under_dlvm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DLVM_HOME", str(tmp_path / "state"))
    s = get_settings()
    home = (tmp_path / "state").resolve()
    assert s.home == home
    assert s.database_url == f"sqlite:///{home}/registry.db"
    assert s.artifacts == (home / "artifacts").as_uri() and s.artifacts.startswith("file:///")
    assert s.dvc_remote == str(home / "dvc-remote")
    assert s.prefect_home == home / "prefect"
    for path in (Path(s.database_url.removeprefix("sqlite:///")), Path(s.artifacts.removeprefix("file://")),
                 Path(s.dvc_remote), s.prefect_home, s.dvc_repo, s.quarantine, s.cache):
        assert path.is_absolute() and path.is_relative_to(home), path
    assert s.s3_endpoint == "" and s.s3_access_key.get_secret_value() == ""
    assert s.s3_region == "us-east-1" and s.device == "auto" and s.num_workers == 0


def test_default_home_is_dot_dlvm_in_the_working_directory(clean_env):
    s = get_settings()
    assert s.home == clean_env.resolve() / ".dlvm"
    assert s.database_url == f"sqlite:///{clean_env.resolve()}/.dlvm/registry.db"


def test_relative_and_user_homes_become_absolute(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("DLVM_HOME", "rel/state")
    reset_settings()
    s = get_settings()
    assert s.home == clean_env.resolve() / "rel" / "state"
    assert Path(s.dvc_remote).is_absolute() and s.prefect_home.is_absolute()

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("DLVM_HOME", "~/dlvm-state")
    reset_settings()
    assert get_settings().home == (tmp_path / "user" / "dlvm-state").resolve()


def test_get_settings_is_cached_until_reset(tmp_path, monkeypatch):
    monkeypatch.setenv("DLVM_HOME", str(tmp_path / "a"))
    first = get_settings()
    monkeypatch.setenv("DLVM_HOME", str(tmp_path / "b"))
    assert get_settings() is first
    reset_settings()
    assert get_settings().home == (tmp_path / "b").resolve()


# ----------------------------------------------------------------------------- overrides


def test_environment_overrides(tmp_path, monkeypatch):
    s3_env(monkeypatch, DLVM_DVC_REMOTE="s3://dlvm-bucket/dvc", DLVM_PREFECT_HOME=str(tmp_path / "ph"),
           DLVM_S3_REGION="eu-central-1", DLVM_DEVICE="cpu", DLVM_NUM_WORKERS="3",
           DLVM_HOME=str(tmp_path / "state"))
    s = get_settings()
    assert s.database_url == f"postgresql+psycopg://dlvm:{DB_PASSWORD}@db.internal:5432/dlvm"
    assert s.artifacts == "s3://dlvm-bucket/team/artifacts"
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert isinstance(s.s3_access_key, SecretStr) and isinstance(s.s3_secret_key, SecretStr)
    assert s.s3_access_key.get_secret_value() == ACCESS
    assert s.s3_secret_key.get_secret_value() == SECRET
    assert s.dvc_remote == "s3://dlvm-bucket/dvc"
    assert s.prefect_home == tmp_path / "ph"
    assert (s.s3_region, s.device, s.num_workers) == ("eu-central-1", "cpu", 3)


def test_explicit_file_artifacts_override(tmp_path, monkeypatch):
    monkeypatch.setenv("DLVM_ARTIFACTS", (tmp_path / "store").as_uri())
    assert get_settings().artifacts == (tmp_path / "store").as_uri()


def test_secrets_never_leak(monkeypatch):
    s3_env(monkeypatch)
    s = get_settings()
    dumped = s.model_dump_json()
    for text in (repr(s), str(s), dumped, repr(s.s3_access_key), str(s.s3_secret_key)):
        assert ACCESS not in text and SECRET not in text and DB_PASSWORD not in text, text
    data = json.loads(dumped)
    assert data["s3_access_key"] == data["s3_secret_key"] == "**********"
    assert data["database_url"] == "postgresql+psycopg://dlvm:***@db.internal:5432/dlvm"
    # The object itself still carries the real values for the code that needs them.
    assert s.model_dump()["database_url"].endswith(f":{DB_PASSWORD}@db.internal:5432/dlvm")


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://u:p%40ss@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("sqlite:////abs/registry.db", "sqlite:////abs/registry.db"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("/plain/dir", "/plain/dir"),
    ("", ""),
])
def test_mask_url_password(url, masked):
    assert mask_url_password(url) == masked


def test_dotenv_file_in_working_directory(clean_env, monkeypatch):
    (clean_env / ".env").write_text("DLVM_DEVICE=cpu\nDLVM_NUM_WORKERS=2\n")
    reset_settings()
    assert (get_settings().device, get_settings().num_workers) == ("cpu", 2)
    monkeypatch.setenv("DLVM_DEVICE", "cuda:1")  # the environment wins over .env
    reset_settings()
    assert get_settings().device == "cuda:1"


def test_compose_dotenv_does_not_break_settings(clean_env):
    """The stack's .env (from .env.example) sits in the same directory as the app's: its
    non-DLVM keys are ignored, its DLVM_S3_* keys are read as secrets."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            lines.append(f"{key}={value or 'dummy-' + key.lower()}")
    (clean_env / ".env").write_text("\n".join(lines) + "\n")
    reset_settings()
    s = get_settings()
    assert s.s3_secret_key.get_secret_value() == "dummy-dlvm_s3_secret_key"
    assert "dummy-dlvm_s3_secret_key" not in s.model_dump_json()
    assert s.artifacts.startswith("file://")


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("value", ["ftp://host/store", "/just/a/path", "S3:/bucket", "gs://bucket/x"])
def test_bad_artifacts_scheme_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("DLVM_ARTIFACTS", value)
    with pytest.raises(ValidationError) as info:
        get_settings()
    message = str(info.value)
    assert "DLVM_ARTIFACTS" in message and "file://" in message and "s3://" in message
    assert repr(value) in message


def test_s3_artifacts_without_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DLVM_ARTIFACTS", "s3://bucket/prefix")
    monkeypatch.setenv("DLVM_S3_SECRET_KEY", SECRET)
    with pytest.raises(ValidationError) as info:
        get_settings()
    message = str(info.value)
    assert "DLVM_S3_ENDPOINT" in message and "DLVM_ARTIFACTS" in message
    assert SECRET not in message


def test_negative_workers_rejected(monkeypatch):
    monkeypatch.setenv("DLVM_NUM_WORKERS", "-1")
    with pytest.raises(ValidationError, match="num_workers"):
        get_settings()


@pytest.mark.parametrize("value", ["ray", "threads", ""])
def test_unknown_task_runner_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("DLVM_TASK_RUNNER", value)
    with pytest.raises(ValidationError) as info:
        get_settings()
    message = str(info.value)
    assert "DLVM_TASK_RUNNER must be one of sequential, dask" in message and repr(value) in message


def test_dask_settings(monkeypatch):
    assert get_settings().task_runner == "sequential" and not get_settings().dask_address
    for key, value in {"DLVM_TASK_RUNNER": " Dask", "DLVM_DASK_ADDRESS": "tcp://10.0.0.5:8786",
                       "DLVM_DASK_WORKERS": "4"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    settings = get_settings()
    assert (settings.task_runner, settings.dask_address, settings.dask_workers) == ("dask", "tcp://10.0.0.5:8786", 4)


@pytest.mark.parametrize("env, expected", [
    ({"DLVM_DASK_ADDRESS": "tcp://10.0.0.5:8786"}, "DLVM_DASK_ADDRESS is set but DLVM_TASK_RUNNER is sequential"),
    ({"DLVM_TASK_RUNNER": "dask", "DLVM_DASK_ADDRESS": "http://10.0.0.5:8786"}, "Dask scheduler address"),
    ({"DLVM_TASK_RUNNER": "dask", "DLVM_DASK_WORKERS": "0"}, "dask_workers"),
])
def test_bad_dask_settings_are_clear_errors(monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=expected):
        get_settings()


def test_io_retry_delays_default_and_override(clean_env, monkeypatch):
    """DLVM_IO_RETRY_DELAYS: one retry per delay, from the environment or .env, also read alone
    (flows/tasks.py reads it at import, before the rest of the settings)."""
    from components.settings import io_retry_delays

    assert io_retry_delays() == get_settings().io_retry_delays == [1.0, 5.0, 15.0]
    (clean_env / ".env").write_text("DLVM_IO_RETRY_DELAYS=2,3\n")
    assert io_retry_delays() == [2.0, 3.0]
    monkeypatch.setenv("DLVM_IO_RETRY_DELAYS", "0.1, 0.1,0")
    reset_settings()
    assert io_retry_delays() == get_settings().io_retry_delays == [0.1, 0.1, 0.0]


def test_label_studio_retry_delays_default_and_override(monkeypatch):
    from components.settings import label_studio_retry_delays

    assert label_studio_retry_delays() == get_settings().label_studio_retry_delays == [2.0, 5.0]
    monkeypatch.setenv("DLVM_LABEL_STUDIO_RETRY_DELAYS", "0.2,0.2")
    reset_settings()
    assert label_studio_retry_delays() == get_settings().label_studio_retry_delays == [0.2, 0.2]


@pytest.mark.parametrize("variable", ["DLVM_IO_RETRY_DELAYS", "DLVM_LABEL_STUDIO_RETRY_DELAYS"])
@pytest.mark.parametrize("value", ["", "1;5", "fast", "-1", "1,99999", ",".join(["1"] * 51)])
def test_bad_retry_delays_are_a_clear_error(monkeypatch, variable, value):
    from components.settings import io_retry_delays, label_studio_retry_delays

    monkeypatch.setenv(variable, value)
    read_alone = io_retry_delays if variable == "DLVM_IO_RETRY_DELAYS" else label_studio_retry_delays
    for read in (read_alone, get_settings):
        with pytest.raises(ValidationError, match=f"{variable} must be"):
            read()


def test_the_io_and_label_studio_tasks_retry_once_per_configured_delay():
    from flows.feedback import LS_RETRIES, LS_RETRY_DELAYS, setup_project
    from flows.tasks import IO_RETRIES, RETRY_DELAYS, store_artifact

    assert IO_RETRIES["retries"] == len(RETRY_DELAYS) and IO_RETRIES["retry_delay_seconds"] == RETRY_DELAYS
    assert (store_artifact.retries, store_artifact.retry_delay_seconds) == (len(RETRY_DELAYS), RETRY_DELAYS)
    assert LS_RETRIES["retries"] == len(LS_RETRY_DELAYS) and LS_RETRIES["retry_delay_seconds"] == LS_RETRY_DELAYS
    assert (setup_project.retries, setup_project.retry_delay_seconds) == (len(LS_RETRY_DELAYS), LS_RETRY_DELAYS)


# ------------------------------------------------------------------------------ the CLI


def invoke_settings(env: dict):
    from typer.testing import CliRunner

    from app.cli import app

    reset_settings()
    return CliRunner().invoke(app, ["settings"], env=env)


def test_cli_settings_prints_json_without_secrets(tmp_path):
    env = {
        "DLVM_HOME": str(tmp_path / "cli-state"),
        "DLVM_ARTIFACTS": "s3://dlvm-bucket/artifacts",
        "DLVM_S3_ENDPOINT": "http://minio:9000",
        "DLVM_S3_ACCESS_KEY": ACCESS,
        "DLVM_S3_SECRET_KEY": SECRET,
        "DLVM_DATABASE_URL": f"postgresql+psycopg://dlvm:{DB_PASSWORD}@postgres:5432/dlvm",
    }
    result = invoke_settings(env)
    assert result.exit_code == 0, result.output
    for secret in (ACCESS, SECRET, DB_PASSWORD):
        assert secret not in result.output
    data = json.loads(result.output)
    assert data["home"] == str((tmp_path / "cli-state").resolve())
    assert data["artifacts"] == "s3://dlvm-bucket/artifacts"
    assert data["s3_endpoint"] == "http://minio:9000"
    assert data["s3_access_key"] == data["s3_secret_key"] == "**********"
    assert data["database_url"] == "postgresql+psycopg://dlvm:***@postgres:5432/dlvm"
    assert data["dvc_remote"] == str((tmp_path / "cli-state" / "dvc-remote").resolve())


def test_cli_settings_defaults(tmp_path):
    result = invoke_settings({"DLVM_HOME": str(tmp_path / "d")})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    home = (tmp_path / "d").resolve()
    assert data["database_url"] == f"sqlite:///{home}/registry.db"
    assert data["artifacts"] == (home / "artifacts").as_uri()
    assert data["prefect_home"] == str(home / "prefect")


def test_cli_settings_bad_configuration_fails(tmp_path):
    result = invoke_settings({"DLVM_HOME": str(tmp_path / "d"), "DLVM_ARTIFACTS": "s3://bucket/x",
                              "DLVM_S3_SECRET_KEY": SECRET})
    assert result.exit_code != 0
    assert "DLVM_S3_ENDPOINT" in str(result.exception) + result.output
    assert SECRET not in str(result.exception) + result.output


def test_exit_after_termination_reaches_the_signal_handler(clean_env, monkeypatch):
    """DLVM_EXIT_AFTER_TERMINATION_S: 15 s unless set; a command's prepare() hands it to the
    handler that ends the command after a SIGTERM (lineage.EXIT_AFTER_TERMINATION_S)."""
    from app.cli import prepare
    from components.orchestration import lineage

    for name, value in {"PREFECT_HOME": str(clean_env / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "DVC_NO_ANALYTICS": "1"}.items():
        monkeypatch.setenv(name, os.environ.get(name, value))  # what prepare() sets, restored afterwards
    monkeypatch.setattr(lineage, "EXIT_AFTER_TERMINATION_S", None)
    monkeypatch.setenv("DLVM_HOME", str(clean_env / "home"))
    assert get_settings().exit_after_termination_s == 15.0
    monkeypatch.setenv("DLVM_EXIT_AFTER_TERMINATION_S", "3")
    reset_settings()
    prepare()
    assert lineage.EXIT_AFTER_TERMINATION_S == 3.0


@pytest.mark.parametrize("value", ["0", "-1", "3601", "soon"])
def test_bad_exit_after_termination_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("DLVM_EXIT_AFTER_TERMINATION_S", value)
    with pytest.raises(ValidationError, match="exit_after_termination_s"):
        get_settings()
