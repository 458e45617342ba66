"""One typed settings object for the whole platform.

Every value can be set through the environment with the ``DLVM_`` prefix (or a ``.env``
file). With nothing set, everything lives in a project-local state directory
(``DLVM_HOME``, default ``./.dlvm``) and no service is needed: a SQLite registry, a
local-directory artifact store, a local-directory DVC remote and Prefect's ephemeral API.
"""
from __future__ import annotations

import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Fields that hold URLs; a password in one (e.g. postgresql+psycopg://user:PASSWORD@host/db,
# as docker-compose.yml sets DLVM_DATABASE_URL) is masked in JSON dumps and in repr.
URL_FIELDS = ("database_url", "artifacts", "s3_endpoint", "dvc_remote", "label_studio_url")


TASK_RUNNERS = ("sequential", "dask")
DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return url
    if not has_password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


# hide_input_in_errors: a validation error would otherwise print every input value,
# S3 keys and database passwords included.
SETTINGS_CONFIG = SettingsConfigDict(env_prefix="DLVM_", env_file=".env", extra="ignore", hide_input_in_errors=True)


class RetrySettings(BaseSettings):
    """The settings flows read when they are imported: Prefect fixes a task's retry policy when
    the task is defined, before a command has read (and checked) the rest. :class:`Settings`
    includes them, so they are validated and listed with the others."""
    model_config = SETTINGS_CONFIG

    io_retry_delays: Annotated[list[float], NoDecode] = Field(
        [1.0, 5.0, 15.0], description="seconds before each retry of an I/O task whose failure is transient "
                                      "(artifact store, DVC remote), comma-separated: one value per retry "
                                      "(tests that stop a server mid-transfer set short ones)")
    label_studio_retry_delays: Annotated[list[float], NoDecode] = Field(
        [2.0, 5.0], description="seconds before each retry of a Label Studio call (a server restarting or "
                                "briefly overloaded), comma-separated: one value per retry")

    @field_validator("io_retry_delays", "label_studio_retry_delays", mode="before")
    @classmethod
    def _comma_separated_delays(cls, value, info):
        if isinstance(value, str):
            try:
                value = [float(part) for part in value.split(",")]
            except ValueError:
                raise ValueError(f"DLVM_{info.field_name.upper()} must be comma-separated seconds such as 1,5,15, "
                                 f"got {value!r}") from None
        return value

    @field_validator("io_retry_delays", "label_studio_retry_delays", mode="after")
    @classmethod
    def _sane_delays(cls, delays: list[float], info) -> list[float]:
        # Prefect takes at most 50 delays; an hour between two tries is no longer a retry.
        if not 1 <= len(delays) <= 50 or not all(0 <= d <= 3600 for d in delays):
            raise ValueError(f"DLVM_{info.field_name.upper()} must be 1 to 50 values between 0 and 3600 s, "
                             f"got {delays}")
        return delays


def io_retry_delays() -> list[float]:
    """DLVM_IO_RETRY_DELAYS (environment or .env), read without the rest of the settings."""
    return RetrySettings().io_retry_delays


def label_studio_retry_delays() -> list[float]:
    """DLVM_LABEL_STUDIO_RETRY_DELAYS (environment or .env), read without the rest of the settings."""
    return RetrySettings().label_studio_retry_delays


class Settings(RetrySettings):
    model_config = SETTINGS_CONFIG

    home: Path = Field(Path(".dlvm"), description="state directory for the embedded defaults")
    database_url: str = Field("", description="SQLAlchemy URL of the registry; default SQLite in home")
    artifacts: str = Field("", description="artifact store: file:///dir or s3://bucket/prefix; default home/artifacts")
    s3_endpoint: str = Field("", description="S3/MinIO endpoint URL, e.g. http://127.0.0.1:9000")
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key")
    s3_region: str = Field("us-east-1", description="S3 region")
    dvc_remote: str = Field("", description="DVC remote URL (directory or s3://bucket/prefix); default home/dvc-remote")
    prefect_home: Path | None = Field(None, description="PREFECT_HOME for the embedded Prefect API; default home/prefect")
    label_studio_url: str = Field("", description="Label Studio server, e.g. http://127.0.0.1:8080; empty = not used")
    label_studio_token: SecretStr = Field(SecretStr(""), description="Label Studio API token (legacy token or personal access token)")
    label_studio_images: Literal["local-files", "presigned"] = Field(
        "local-files", description="how tasks show images: Label Studio's local-files serving of the DVC workspace "
                                   "(embedded default), or presigned URLs from the S3 artifact store")
    label_studio_files_root: Path | None = Field(
        None, description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT as seen by dlvm; default: home")
    label_studio_url_expiry_s: int = Field(7 * 86400, ge=600, le=7 * 86400,
                                           description="lifetime of presigned image URLs (S3 allows at most 7 days)")
    webhook_secret: SecretStr = Field(SecretStr(""), description="shared secret Label Studio sends to dlvm's webhook")
    retrain_after_labels: int = Field(50, ge=1, description="new labels that start the retrain deployment")
    retrain_deployment: str = Field("retrain/retrain", description="Prefect deployment started by new labels")
    api_token: SecretStr = Field(SecretStr(""), description="bearer token for writes through the API/UI "
                                 "(promote, rollback); empty = writes disabled")
    api_read_token: SecretStr = Field(SecretStr(""), description="bearer token for reads through the API/UI; "
                                      "empty = reads are open (the write token also reads)")
    prefect_ui_url: str = Field("", description="Prefect UI address for links from the dashboard; default: "
                                "PREFECT_API_URL without /api (none for the embedded API)")
    alert_stale_days: float = Field(30.0, gt=0, description="a production model older than this is stale")
    alert_metric_drop: float = Field(0.02, ge=0, description="production this far below a former production "
                                     "version's accuracy raises an alert")
    predict_max_bytes: int = Field(10_000_000, ge=1024, description="largest image body the prediction endpoint "
                                                                    "accepts (bytes); larger ones get 413")
    shard_threshold: int = Field(20_000, ge=1, description="ingest versions a folder of more images than this as "
                                 "tar shards + index instead of one file per image (docs/SCALING.md)")
    shard_size: int = Field(1_000, ge=1, description="images per shard when ingest packs shards")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:N")
    num_workers: int = Field(0, ge=0, description="data-loading worker processes")
    task_runner: Literal["sequential", "dask"] = Field(
        "sequential", description="where the evaluation sweep's units run: sequential (one after another in the "
                                  "flow's process) or dask (a Dask cluster: DLVM_DASK_ADDRESS, else a local one)")
    dask_address: str = Field("", description="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; "
                                              "empty: a LocalCluster of worker processes per sweep")
    dask_workers: int | None = Field(None, ge=1, description="worker processes of that LocalCluster; "
                                                             "default: Dask's choice (one per CPU core)")
    exit_after_termination_s: float = Field(
        15.0, gt=0, le=3600, description="after a termination signal (SIGTERM, Ctrl-C) has marked a command's run "
                                         "failed, the command ends within this many seconds even when Prefect cannot "
                                         "report the crash (tests that stop a command set a short one)")

    @field_validator("task_runner", mode="before")
    @classmethod
    def _known_task_runner(cls, value):
        # Say which variable and which values: pydantic's literal error names neither.
        if isinstance(value, str) and value.strip().lower() in TASK_RUNNERS:
            return value.strip().lower()
        raise ValueError(f"DLVM_TASK_RUNNER must be one of {', '.join(TASK_RUNNERS)}, got {value!r}")

    @field_validator("dask_address", mode="after")
    @classmethod
    def _dask_scheduler_address(cls, address: str) -> str:
        address = address.strip()
        scheme = address.split("://", 1)[0] if "://" in address else "tcp"
        if address and (scheme not in DASK_SCHEMES or any(c.isspace() for c in address)):
            raise ValueError(f"DLVM_DASK_ADDRESS must be a Dask scheduler address such as tcp://host:8786 "
                             f"(schemes {', '.join(DASK_SCHEMES)}), got {address!r}")
        return address

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'registry.db'}"
        if not self.artifacts:
            self.artifacts = (self.home / "artifacts").as_uri()
        if not self.dvc_remote:
            self.dvc_remote = str(self.home / "dvc-remote")
        if self.prefect_home is None:
            self.prefect_home = self.home / "prefect"
        if self.label_studio_files_root is None:
            self.label_studio_files_root = self.home
        self.label_studio_files_root = self.label_studio_files_root.expanduser().resolve()
        if self.label_studio_images == "presigned" and not self.artifacts.startswith("s3://"):
            raise ValueError("DLVM_LABEL_STUDIO_IMAGES=presigned needs the S3 artifact store (DLVM_ARTIFACTS=s3://...)")
        if not (self.artifacts.startswith("file://") or self.artifacts.startswith("s3://")):
            raise ValueError(f"DLVM_ARTIFACTS must start with file:// or s3://, "
                             f"got {mask_url_password(self.artifacts)!r}")
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(f"DLVM_DASK_ADDRESS is set but DLVM_TASK_RUNNER is {self.task_runner}: "
                             f"set DLVM_TASK_RUNNER=dask to use that cluster")
        if self.artifacts.startswith("s3://") and not self.s3_endpoint:
            raise ValueError("DLVM_ARTIFACTS is an s3:// URL but DLVM_S3_ENDPOINT is not set")
        return self

    @field_serializer(*URL_FIELDS, when_used="json")
    def _mask_url(self, url: str) -> str:
        return mask_url_password(url)

    def __repr_args__(self):
        for name, value in super().__repr_args__():
            if name in URL_FIELDS and isinstance(value, str):
                value = mask_url_password(value)
            yield name, value

    # Paths of the embedded state, all under home.
    @property
    def dvc_repo(self) -> Path:
        """The DVC workspace (a git-less DVC repo) holding checked-out dataset versions."""
        return self.home / "dvc-repo"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def cache(self) -> Path:
        """Derived, rebuildable data (decoded image tensors)."""
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
