"""The artifact store: content-addressed, verified, never-overwritten files.

Checkpoints, reports, plots and exports go here. Every artifact lives under the key
``{kind}/{sha256}/{name}`` below the store root, so the key itself says what the bytes
must hash to; every read re-hashes and raises ``ArtifactCorrupted`` on a mismatch, and a
write never replaces an existing object (the same content is simply found again).

Two implementations share the ``ArtifactStore`` protocol:

* ``LocalArtifactStore`` - a directory (``file://`` URIs), the embedded default;
* ``S3ArtifactStore`` - a bucket on MinIO or any S3 server (``s3://`` URIs), via the
  ``minio`` SDK.

``open_store(settings)`` picks one from ``settings.artifacts``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from components.settings import Settings

CHUNK = 1 << 20  # 1 MiB: streaming unit for hashing, copying and downloads
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact lives and what its bytes hash to."""

    uri: str  # file:///abs/path/... or s3://bucket/prefix/...
    sha256: str  # hex
    size: int


class ArtifactError(RuntimeError):
    """An artifact could not be stored or read (store unreachable, refused, ...)."""


class ArtifactMissing(ArtifactError):
    """No artifact at the uri."""

    def __init__(self, uri: str, detail: str = ""):
        self.uri = uri
        super().__init__(f"artifact missing: {uri}" + (f" ({detail})" if detail else ""))


class ArtifactCorrupted(ArtifactError):
    """The bytes at the uri do not hash to the expected sha256."""

    def __init__(self, uri: str, expected: str, actual: str, detail: str = ""):
        self.uri, self.expected, self.actual = uri, expected, actual
        super().__init__(
            f"artifact corrupted: {uri}: expected sha256 {expected}, got {actual}"
            + (f" ({detail})" if detail else "")
        )


@runtime_checkable
class ArtifactStore(Protocol):
    """What flows and components use to keep and fetch artifacts."""

    def put_bytes(self, data: bytes, kind: str, name: str) -> StoredArtifact:
        """Store ``data`` at ``{kind}/{sha256}/{name}``; the same content returns the existing one."""
        ...

    def put_file(self, path: Path, kind: str, name: str) -> StoredArtifact:
        """Like ``put_bytes`` for a file, streamed (never read whole into memory)."""
        ...

    def get_bytes(self, uri: str, sha256: str) -> bytes:
        """The artifact's bytes, verified; raises ArtifactMissing / ArtifactCorrupted."""
        ...

    def get_file(self, uri: str, sha256: str, dest: Path) -> Path:
        """Download to ``dest`` (atomically, replacing it), verified; returns ``dest``."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether an object is at ``uri`` (its content is not checked)."""
        ...

    def verify(self, uri: str, sha256: str) -> None:
        """Re-hash the artifact; raises ArtifactMissing / ArtifactCorrupted."""
        ...

    def presigned_url(self, uri: str, expires_s: int = 3600) -> str:
        """A URL anyone can GET the artifact from (the file:// uri for a local store)."""
        ...

    def uri_for(self, kind: str, sha256: str, name: str) -> str:
        """The uri an artifact with this kind, content hash and name has in this store."""
        ...


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class ArtifactUri:
    """A parsed artifact uri. ``path`` is the file path (file://) or object key (s3://)."""

    scheme: str  # "file" | "s3"
    bucket: str  # "" for file://
    path: str
    sha256: str  # the content hash segment of the key
    name: str  # the last segment


def parse_uri(uri: str) -> ArtifactUri:
    """Split a ``file://`` or ``s3://`` artifact uri ending in ``.../{sha256}/{name}``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file uri with a host is not supported: {uri!r}")
        bucket, path = "", urllib.request.url2pathname(parts.path)
        if not os.path.isabs(path):
            raise ValueError(f"file uri must be absolute: {uri!r}")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"s3 uri has no bucket: {uri!r}")
        # s3 uris are written unencoded (like the aws cli and DVC), so take the raw text.
        bucket, path = parts.netloc, uri[len(f"s3://{parts.netloc}/"):]
    else:
        raise ValueError(f"artifact uri must start with file:// or s3://, got {uri!r}")
    segments = path.split("/")
    if len(segments) < 3 or not _SHA256.fullmatch(segments[-2]) or not segments[-1]:
        raise ValueError(f"not an artifact uri (expected .../<kind>/<sha256>/<name>): {uri!r}")
    return ArtifactUri(parts.scheme, bucket, path, segments[-2], segments[-1])


def validate_key(kind: str, name: str) -> None:
    """Reject kinds and names that could escape the store or make an ambiguous key.

    ``kind`` may have ``/``-separated parts (``checkpoints/mae``); ``name`` is one segment.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("artifact kind must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise ValueError("artifact name must be a non-empty string")
    for what, value in (("kind", kind), ("name", name)):
        if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"artifact {what} has a backslash or control character: {value!r}")
    if "/" in name:
        raise ValueError(f"artifact name must not contain '/': {name!r}")
    if name in (".", ".."):
        raise ValueError(f"artifact name must not be '.' or '..': {name!r}")
    for part in kind.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"artifact kind must be '/'-separated non-empty parts without '.' or '..': {kind!r}"
            )


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return sha256


def _hash_stream(stream: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _hash_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return _hash_stream(f)


class _HashingReader:
    """Wraps a binary stream and hashes what is read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        return data


def _fsync_dir(directory: Path) -> None:
    # Makes a new directory entry durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_beside(final: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file in ``final``'s directory (same filesystem, so link/rename is atomic).

    Removed on exit; the caller links or renames it into place before that.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name[:64]}.", suffix=".tmp", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _publish_verified(f, tmp: Path, dest: Path, uri: str, expected: str, actual: str) -> None:
    """Move a fully downloaded temp file to ``dest`` only if its hash is the expected one."""
    if actual != expected:
        raise ArtifactCorrupted(uri, expected, actual)
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, dest)


# ------------------------------------------------------------------------ local store


class LocalArtifactStore:
    """Artifacts as read-only files under a directory: ``root/{kind}/{sha256}/{name}``."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    # keys and uris
    def uri_for(self, kind: str, sha256: str, name: str) -> str:
        validate_key(kind, name)
        return self._final(kind, _check_sha(sha256), name).as_uri()

    def _final(self, kind: str, sha256: str, name: str) -> Path:
        return self.root.joinpath(*kind.split("/"), sha256, name)

    def _path(self, uri: str) -> Path:
        parsed = parse_uri(uri)
        if parsed.scheme != "file":
            raise ValueError(f"{self!r} cannot read {uri!r}")
        path = Path(os.path.normpath(parsed.path))  # no '..' walking out of the root
        if not path.is_relative_to(self.root):
            path = self._relocated(path, uri)
        if len(path.relative_to(self.root).parts) < 3:
            raise ValueError(f"{uri!r} is not inside the artifact store at {self.root}")
        return path

    def _relocated(self, path: Path, uri: str) -> Path:
        """Where an artifact written when the store lived elsewhere (a DLVM_HOME copied or
        moved; the registry keeps the absolute uri) is now: its key, the part of the old path
        after a folder named like this store's root, below this root. The key found in the
        store wins; without one, the uri is read as missing here, not as foreign."""
        parts = path.parts
        keys = [parts[i + 1:] for i, part in enumerate(parts) if part == self.root.name and len(parts) - i > 3]
        if not keys:
            raise ValueError(f"{uri!r} is not inside the artifact store at {self.root}")
        candidates = [self.root.joinpath(*key) for key in keys]
        return next((c for c in candidates if c.exists()), candidates[0])

    # writing
    def put_bytes(self, data: bytes, kind: str, name: str) -> StoredArtifact:
        validate_key(kind, name)
        sha256 = hashlib.sha256(data).hexdigest()
        final = self._final(kind, sha256, name)
        if final.exists():
            return self._existing(final, sha256)
        with _temp_beside(final) as (f, tmp):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            return self._publish(tmp, final, sha256, len(data))

    def put_file(self, path: Path, kind: str, name: str) -> StoredArtifact:
        validate_key(kind, name)
        sha256, _ = _hash_file(path)
        final = self._final(kind, sha256, name)
        if final.exists():
            return self._existing(final, sha256)
        with _temp_beside(final) as (f, tmp), open(path, "rb") as src:
            reader = _HashingReader(src)
            size = 0
            while chunk := reader.read(CHUNK):
                f.write(chunk)
                size += len(chunk)
            # The key was computed in a first pass; the copy must be the same bytes.
            if reader.digest.hexdigest() != sha256:
                raise ArtifactError(f"{path} changed while it was being stored; not stored")
            f.flush()
            os.fsync(f.fileno())
            f.close()
            return self._publish(tmp, final, sha256, size)

    def _publish(self, tmp: Path, final: Path, sha256: str, size: int) -> StoredArtifact:
        os.chmod(tmp, 0o444)  # artifacts are immutable; make accidental writes fail
        try:
            # link() fails if final exists, unlike rename(): no overwrite, even in a race.
            os.link(tmp, final)
        except FileExistsError:
            # A concurrent writer of the same key got there first: fine if its bytes match.
            return self._existing(final, sha256)
        except OSError:
            # Filesystems without hard links: rename, after a (racy) existence check.
            if final.exists():
                return self._existing(final, sha256)
            os.rename(tmp, final)
        _fsync_dir(final.parent)
        return StoredArtifact(final.as_uri(), sha256, size)

    def _existing(self, final: Path, sha256: str) -> StoredArtifact:
        actual, size = _hash_file(final)
        if actual != sha256:
            raise ArtifactCorrupted(
                final.as_uri(), sha256, actual,
                "an object already holds this key with other bytes; it is not overwritten",
            )
        return StoredArtifact(final.as_uri(), sha256, size)

    # reading
    def get_bytes(self, uri: str, sha256: str) -> bytes:
        _check_sha(sha256)
        path = self._path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(uri) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactCorrupted(uri, sha256, actual)
        return data

    def get_file(self, uri: str, sha256: str, dest: Path) -> Path:
        _check_sha(sha256)
        path, dest = self._path(uri), Path(dest)
        try:
            src = open(path, "rb")
        except FileNotFoundError:
            raise ArtifactMissing(uri) from None
        with src, _temp_beside(dest) as (f, tmp):
            reader = _HashingReader(src)
            while chunk := reader.read(CHUNK):
                f.write(chunk)
            _publish_verified(f, tmp, dest, uri, sha256, reader.digest.hexdigest())
        return dest

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def verify(self, uri: str, sha256: str) -> None:
        _check_sha(sha256)
        try:
            actual, _ = _hash_file(self._path(uri))
        except FileNotFoundError:
            raise ArtifactMissing(uri) from None
        if actual != sha256:
            raise ArtifactCorrupted(uri, sha256, actual)

    def presigned_url(self, uri: str, expires_s: int = 3600) -> str:
        self._path(uri)  # only uris of this store
        return uri


# --------------------------------------------------------------------------- S3 store

# S3 error codes meaning "nothing there" (HEAD requests have no body; minio names them).
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
_META_SHA = "sha256"  # stored as x-amz-meta-sha256


class S3ArtifactStore:
    """Artifacts as objects in an S3 bucket: ``s3://bucket/prefix/{kind}/{sha256}/{name}``.

    The sha256 is also kept in the object's metadata, so a repeated put of the same
    content is answered by a HEAD instead of an upload. Reads always re-hash the bytes:
    metadata is a hint, not proof. Failures to reach or be accepted by the server raise
    ``ArtifactError`` naming the endpoint and the uri (callers' Prefect tasks retry).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        retries: int = 3,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
    ):
        import urllib3
        from minio import Minio
        from minio.helpers import check_bucket_name

        split = urllib.parse.urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"S3 endpoint must be an http:// or https:// URL, got {endpoint!r}")
        if split.path not in ("", "/"):
            raise ValueError(f"S3 endpoint must not have a path, got {endpoint!r}")
        check_bucket_name(bucket, True)  # ValueError naming the bucket, before any request
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = f"{split.scheme}://{split.netloc}"
        # minio's default client waits 5 min to connect and retries 5 times; a store
        # that is down should fail in seconds and let the Prefect task retry instead.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self.client = Minio(
            split.netloc,
            access_key=access_key,
            secret_key=secret_key,
            region=region or None,  # a known region spares a GetBucketLocation round trip
            secure=split.scheme == "https",
            http_client=http,
        )
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.endpoint!r}, s3://{self.bucket}/{self.prefix})"

    # keys and uris
    def uri_for(self, kind: str, sha256: str, name: str) -> str:
        validate_key(kind, name)
        return f"s3://{self.bucket}/{self._key(kind, _check_sha(sha256), name)}"

    def _key(self, kind: str, sha256: str, name: str) -> str:
        key = f"{kind}/{sha256}/{name}"
        return f"{self.prefix}/{key}" if self.prefix else key

    def _object(self, uri: str) -> str:
        parsed = parse_uri(uri)
        if parsed.scheme != "s3" or parsed.bucket != self.bucket:
            raise ValueError(f"{self!r} cannot read {uri!r}")
        if self.prefix and not parsed.path.startswith(self.prefix + "/"):
            raise ValueError(f"{uri!r} is not under s3://{self.bucket}/{self.prefix}/")
        return parsed.path

    @contextlib.contextmanager
    def _errors(self, uri: str, action: str) -> Iterator[None]:
        """Turn minio/urllib3 failures into ArtifactMissing or a clear ArtifactError."""
        import urllib3
        from minio.error import (
            InvalidResponseError,
            MinioException,
            S3Error,
            ServerError,
        )

        try:
            yield
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ArtifactMissing(uri, exc.code) from None
            raise ArtifactError(
                f"S3 {action} of {uri} at {self.endpoint} failed: {exc.code}: {exc.message}"
            ) from exc
        except InvalidResponseError as exc:
            # Servers that answer errors as text/xml (rclone) land here instead of S3Error.
            status, body = getattr(exc, "_code", None), getattr(exc, "_body", "") or ""
            match = re.search(r"<Code>([^<]+)</Code>", body)
            code = match.group(1) if match else f"HTTP {status}"
            if code in _MISSING_CODES or (status == 404 and not match):
                raise ArtifactMissing(uri, code) from None
            raise ArtifactError(
                f"S3 {action} of {uri} at {self.endpoint} failed: {code} (HTTP {status})"
            ) from exc
        except (ServerError, MinioException) as exc:
            raise ArtifactError(f"S3 {action} of {uri} at {self.endpoint} failed: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ArtifactError(
                f"S3 endpoint {self.endpoint} unreachable during {action} of {uri}: {exc}"
            ) from exc

    def _ensure_bucket(self, uri: str) -> None:
        if self._bucket_ready:
            return
        # A missing bucket is refused, not created: a typo in DLVM_ARTIFACTS would otherwise
        # scatter artifacts into a new bucket. Creating buckets is `dlvm stack up`'s job
        # (and docker-compose's minio-init), or the operator's.
        with self._errors(uri, "bucket check"):
            exists = self.client.bucket_exists(self.bucket)
        if not exists:
            raise ArtifactError(f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it "
                                "(`dlvm stack up` does) or fix DLVM_ARTIFACTS; dlvm does not create buckets")
        self._bucket_ready = True

    def _stat(self, key: str, uri: str):
        """The object's stat, or None when there is none."""
        try:
            with self._errors(uri, "stat"):
                return self.client.stat_object(self.bucket, key)
        except ArtifactMissing:
            return None

    # writing
    def put_bytes(self, data: bytes, kind: str, name: str) -> StoredArtifact:
        validate_key(kind, name)
        sha256 = hashlib.sha256(data).hexdigest()
        return self._put(io.BytesIO(data), len(data), kind, sha256, name, source="bytes")

    def put_file(self, path: Path, kind: str, name: str) -> StoredArtifact:
        validate_key(kind, name)
        sha256, size = _hash_file(path)
        with open(path, "rb") as f:
            return self._put(f, size, kind, sha256, name, source=str(path))

    def _put(self, stream: BinaryIO, size: int, kind: str, sha256: str, name: str,
             source: str) -> StoredArtifact:
        key = self._key(kind, sha256, name)
        uri = f"s3://{self.bucket}/{key}"
        self._ensure_bucket(uri)
        existing = self._stat(key, uri)
        if existing is not None:
            return self._existing(key, uri, sha256, existing)
        reader = _HashingReader(stream)
        with self._errors(uri, "upload"):
            # Streams in parts (5 MiB and up) for large files; never the whole file in RAM.
            # Between the HEAD above and this PUT a concurrent writer can only have
            # written the same bytes (the key is their hash), so overwriting is harmless.
            self.client.put_object(
                self.bucket, key, reader, size,
                content_type="application/octet-stream", metadata={_META_SHA: sha256},
            )
        if reader.digest.hexdigest() != sha256:
            # The source changed between hashing and uploading: take the bad object back.
            with self._errors(uri, "cleanup"):
                self.client.remove_object(self.bucket, key)
            raise ArtifactError(f"{source} changed while it was being stored; not stored")
        return StoredArtifact(uri, sha256, size)

    def _existing(self, key: str, uri: str, sha256: str, stat) -> StoredArtifact:
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        if meta.get(f"x-amz-meta-{_META_SHA}") == sha256:
            return StoredArtifact(uri, sha256, stat.size)
        # No (or other) recorded hash, e.g. written by another tool: check the bytes.
        actual, size = self._download(key, uri, sink=None)
        if actual != sha256:
            raise ArtifactCorrupted(
                uri, sha256, actual,
                "an object already holds this key with other bytes; it is not overwritten",
            )
        return StoredArtifact(uri, sha256, size)

    # reading
    def _download(self, key: str, uri: str, sink: BinaryIO | None) -> tuple[str, int]:
        """Stream the object through sha256 (and into ``sink``); returns (sha256, size)."""
        digest, size = hashlib.sha256(), 0
        with self._errors(uri, "download"):
            response = self.client.get_object(self.bucket, key)
            try:
                for chunk in response.stream(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if sink is not None:
                        sink.write(chunk)
            finally:
                response.close()
                response.release_conn()
        return digest.hexdigest(), size

    def get_bytes(self, uri: str, sha256: str) -> bytes:
        _check_sha(sha256)
        buffer = io.BytesIO()
        actual, _ = self._download(self._object(uri), uri, buffer)
        if actual != sha256:
            raise ArtifactCorrupted(uri, sha256, actual)
        return buffer.getvalue()

    def get_file(self, uri: str, sha256: str, dest: Path) -> Path:
        _check_sha(sha256)
        key, dest = self._object(uri), Path(dest)
        with _temp_beside(dest) as (f, tmp):
            actual, _ = self._download(key, uri, f)
            _publish_verified(f, tmp, dest, uri, sha256, actual)
        return dest

    def exists(self, uri: str) -> bool:
        return self._stat(self._object(uri), uri) is not None

    def verify(self, uri: str, sha256: str) -> None:
        _check_sha(sha256)
        actual, _ = self._download(self._object(uri), uri, sink=None)
        if actual != sha256:
            raise ArtifactCorrupted(uri, sha256, actual)

    def presigned_url(self, uri: str, expires_s: int = 3600) -> str:
        key = self._object(uri)
        if not 1 <= expires_s <= 7 * 24 * 3600:
            raise ValueError(f"expires_s must be between 1 s and 7 days, got {expires_s}")
        with self._errors(uri, "presign"):
            return self.client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expires_s)
            )


# ---------------------------------------------------------------------------- factory


def open_store(settings: Settings) -> ArtifactStore:
    """The store ``settings.artifacts`` names: a directory (file://) or a bucket (s3://)."""
    location = settings.artifacts
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return LocalArtifactStore(Path(urllib.request.url2pathname(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"DLVM_ARTIFACTS has no bucket: {location!r}")
        return S3ArtifactStore(
            bucket=parts.netloc,
            prefix=parts.path,
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            region=settings.s3_region,
        )
    raise ValueError(f"DLVM_ARTIFACTS must start with file:// or s3://, got {location!r}")
