"""Version dataset directories with DVC (no git), pushing to a local or S3 remote.

Everything goes through the DVC command line of this venv (``python -m dvc``) so the
behaviour is exactly what a user gets from ``dvc`` in a shell. The workspace is a
git-less DVC repo (``dvc init --no-scm``); a dataset version is identified by the text of
its ``.dvc`` file (the directory's ``md5`` with ``.dir``, ``nfiles``, ``size``), which the
registry stores; :meth:`DvcWorkspace.checkout` brings any such version back.
"""
from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

REMOTE_NAME = "storage"


class DvcError(RuntimeError):
    """A dvc command failed; the message has the command and the tail of its output."""

    def __init__(self, cmd: list[str], returncode: int, output: str):
        self.cmd = cmd
        self.returncode = returncode
        self.output = output
        super().__init__(f"`{' '.join(cmd)}` failed with exit code {returncode}:\n{_summary(output)}")


def _summary(output: str, keep: int = 15) -> str:
    """The tail of DVC's output with its per-file transfer errors folded into one line
    (a dead remote prints hundreds of identical ones)."""
    lines = [line for line in output.strip().splitlines() if "dvc.org/support" not in line]
    transfers = [line for line in lines if line.startswith("ERROR: failed to transfer")]
    rest = [line for line in lines if not line.startswith("ERROR: failed to transfer")]
    if transfers:
        cause = transfers[-1].split(" - ", 1)[-1]
        rest.insert(max(0, len(rest) - 1), f"ERROR: {len(transfers)} file transfers failed, e.g.: {cause}")
    return "\n".join(rest[-keep:])


def _exclusive(method):
    """Run a workspace method inside :meth:`DvcWorkspace.exclusive`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.exclusive():
            return method(self, *args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class DvcResult:
    md5: str  # directory hash as DVC writes it, e.g. "3f2c...e1.dir"
    nfiles: int
    size: int  # bytes
    dvc_file_text: str  # the full .dvc file; enough to restore this version


class DvcWorkspace:
    """A git-less DVC repository at ``repo_dir`` with default remote ``storage``."""

    def __init__(self, repo_dir: Path | str, remote_url: str, s3_endpoint: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, timeout_s: float = 3600):
        self.repo_dir = Path(repo_dir).resolve()
        self.remote_url = remote_url if "://" in remote_url else str(Path(remote_url).resolve())
        self.s3_endpoint = s3_endpoint or None
        self.access_key = access_key or None
        self.secret_key = secret_key or None
        self.timeout_s = timeout_s
        self._held = False  # this instance is inside exclusive() (which is re-entrant)

    @classmethod
    def from_settings(cls, settings) -> "DvcWorkspace":
        """The workspace in ``settings.dvc_repo`` with the configured remote and S3 credentials."""
        return cls(settings.dvc_repo, settings.dvc_remote, settings.s3_endpoint or None,
                   settings.s3_access_key.get_secret_value() or None,
                   settings.s3_secret_key.get_secret_value() or None)

    @contextmanager
    def exclusive(self):
        """Hold the workspace for a multi-step operation (check a version out, then read its
        files; stage files, then add them). Flows of other processes share this folder (a
        scheduled feedback round beside a nightly ingest, say) and DVC's own lock covers one
        command only, so dlvm processes take turns here; a waiter gives up after timeout_s."""
        if self._held:  # re-entered by its holder, who releases it on the way out
            yield self
            return
        self.repo_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.repo_dir.parent / f".{self.repo_dir.name}.lock"
        with open(lock_path, "a") as lock_file:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DvcError(["dvc workspace", str(self.repo_dir)], -1,
                                       f"another process held {lock_path} for over {self.timeout_s:.0f} s") from None
                    time.sleep(0.2)
            self._held = True
            try:
                yield self
            finally:
                self._held = False
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # -- commands -------------------------------------------------------------------------
    def run(self, *args: str) -> str:
        """Run ``dvc ARGS`` in the repo; return its combined output, raise DvcError on failure."""
        cmd = [sys.executable, "-m", "dvc", *args]
        # Errors end up in logs and in Prefect's run states: they show the command, never the secret.
        shown = ["dvc", *("***" if self.secret_key and arg == self.secret_key else arg for arg in args)]
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_IGNORE_ISATTY": "1"}
        # One S3 retry per request (botocore's default is 4, each with back-off): with a dead
        # remote, a 400-file push then fails in seconds instead of minutes, and the flow's own
        # retries (incremental: pushed files are skipped) handle what is transient.
        env.setdefault("AWS_MAX_ATTEMPTS", "2")
        try:
            proc = subprocess.run(cmd, cwd=self.repo_dir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise DvcError(shown, -1, f"timed out after {self.timeout_s}s\n{exc.output or ''}") from exc
        if proc.returncode != 0:
            if "NoSuchBucket" in proc.stdout or "bucket does not exist" in proc.stdout.lower():
                bucket = self.remote_url.split("://", 1)[-1].split("/", 1)[0]
                raise DvcError(shown, proc.returncode,
                               f"the DVC remote's bucket {bucket!r} does not exist: create it (`dlvm stack up` "
                               "does) or fix DLVM_DVC_REMOTE; dlvm does not create buckets\n" + proc.stdout)
            raise DvcError(shown, proc.returncode, proc.stdout)
        return proc.stdout

    @_exclusive
    def init(self) -> None:
        """Create the repo if needed and (re)configure the default remote. Idempotent."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        if not (self.repo_dir / ".dvc").is_dir():
            self.run("init", "--no-scm", "-q")
        # DVC keeps hash/index databases in a machine-wide dir (/var/tmp/dvc) by default;
        # keep them inside the repo so a workspace is self-contained (set again when the
        # state directory was moved: the setting is an absolute path).
        site_cache = str(self.repo_dir / ".dvc" / "site-cache")
        local_config = self.repo_dir / ".dvc" / "config.local"
        if site_cache not in (local_config.read_text() if local_config.is_file() else ""):
            self.run("config", "--local", "core.site_cache_dir", site_cache)
        self.run("remote", "add", "--default", "--force", REMOTE_NAME, self.remote_url)
        if self.remote_url.startswith("s3://"):
            if self.s3_endpoint:
                self.run("remote", "modify", REMOTE_NAME, "endpointurl", self.s3_endpoint)
            # A server that stops answering mid-transfer fails the request instead of hanging it.
            self.run("remote", "modify", REMOTE_NAME, "connect_timeout", "10")
            self.run("remote", "modify", REMOTE_NAME, "read_timeout", "60")
            # --local keeps secrets in .dvc/config.local, never in the shareable config; "--"
            # ends the options, so a generated key that starts with "-" is still a value.
            if self.access_key:
                self.run("remote", "modify", "--local", "--", REMOTE_NAME, "access_key_id", self.access_key)
            if self.secret_key:
                self.run("remote", "modify", "--local", "--", REMOTE_NAME, "secret_access_key", self.secret_key)

    @_exclusive
    def add_and_push(self, rel_dir: str) -> DvcResult:
        """Track ``rel_dir`` (relative to the repo) and upload its content to the remote."""
        rel = _check_rel(rel_dir)
        if not (self.repo_dir / rel).is_dir():
            raise FileNotFoundError(f"{self.repo_dir / rel} is not a directory")
        # Not -q (here and in pull): quiet mode also hides DVC's error lines, which say
        # what failed and why (which remote, which file).
        self.run("add", rel)
        dvc_file = self.dvc_file(rel)
        self.run("push", "-r", REMOTE_NAME, str(PurePosixPath(rel).with_name(dvc_file.name)))
        text = dvc_file.read_text()
        return parse_dvc_file(text)

    @_exclusive
    def checkout(self, dvc_file_text: str, rel_dir: str) -> Path:
        """Restore the version described by ``dvc_file_text`` into ``rel_dir`` (fetching from
        the remote as needed); files not in that version are removed. Returns the directory."""
        rel = _check_rel(rel_dir)
        parse_dvc_file(dvc_file_text)  # refuse garbage before touching the workspace
        doc = yaml.safe_load(dvc_file_text)
        name = PurePosixPath(rel).name
        if doc["outs"][0].get("path") != name:
            # The version was added under another directory name; the output path in a
            # .dvc file is relative to it, so point it at the requested directory.
            doc["outs"][0]["path"] = name
            dvc_file_text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        dvc_file = self.dvc_file(rel)
        dvc_file.parent.mkdir(parents=True, exist_ok=True)
        dvc_file.write_text(dvc_file_text)
        # --force: the workspace copy is derived state; overwrite local edits without a prompt.
        self.run("pull", "--force", "-r", REMOTE_NAME, str(PurePosixPath(rel).with_name(dvc_file.name)))
        return self.repo_dir / rel

    def dvc_file(self, rel_dir: str) -> Path:
        rel = PurePosixPath(_check_rel(rel_dir))
        return self.repo_dir / rel.with_name(rel.name + ".dvc")


def parse_dvc_file(text: str) -> DvcResult:
    """Read md5/nfiles/size of the single directory output of a .dvc file."""
    try:
        doc = yaml.safe_load(text)
        out = doc["outs"][0]
        md5 = str(out["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a DVC file with one output: {exc!r}") from exc
    if not md5.endswith(".dir"):
        raise ValueError(f"DVC output {out.get('path')!r} is a file, not a directory")
    return DvcResult(md5=md5, nfiles=int(out.get("nfiles", 0)), size=int(out.get("size", 0)), dvc_file_text=text)


def _check_rel(rel_dir: str) -> str:
    rel = PurePosixPath(str(rel_dir).replace(os.sep, "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0] == ".dvc":
        raise ValueError(f"rel_dir must be a relative path inside the repo, got {rel_dir!r}")
    return rel.as_posix()
