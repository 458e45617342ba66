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

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# Fields that hold URLs; a password in one (e.g. postgresql+psycopg://user:PASSWORD@host/db,
# as docker-compose.yml sets DLVM_DATABASE_URL) is masked in JSON dumps and in repr.
URL_FIELDS = ("database_url", "artifacts", "s3_endpoint", "dvc_remote")


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


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error would otherwise print every input value,
    # S3 keys and database passwords included.
    model_config = SettingsConfigDict(env_prefix="DLVM_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    home: Path = Field(Path(".dlvm"), description="state directory for the embedded defaults")
    database_url: str = Field("", description="SQLAlchemy URL of the registry; default SQLite in home")
    artifacts: str = Field("", description="artifact store: file:///dir or s3://bucket/prefix; default home/artifacts")
    s3_endpoint: str = Field("", description="S3/MinIO endpoint URL, e.g. http://127.0.0.1:9000")
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key")
    s3_region: str = Field("us-east-1", description="S3 region")
    dvc_remote: str = Field("", description="DVC remote URL (directory or s3://bucket/prefix); default home/dvc-remote")
    prefect_home: Path | None = Field(None, description="PREFECT_HOME for the embedded Prefect API; default home/prefect")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:N")
    num_workers: int = Field(0, ge=0, description="data-loading worker processes")

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
        if not (self.artifacts.startswith("file://") or self.artifacts.startswith("s3://")):
            raise ValueError(f"DLVM_ARTIFACTS must start with file:// or s3://, "
                             f"got {mask_url_password(self.artifacts)!r}")
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
