"""The artifact store, both implementations through the same tests.

The S3 store runs against a real, signature-checking S3 server (``rclone serve s3`` on
loopback, see tests/s3server.py); tampering happens on disk (local) or by writing the
object directly with a plain minio client (S3), as an outsider would.
"""
from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from s3server import S3Server, s3_bucket, s3_server  # noqa: F401  (fixtures)

from components.settings import Settings
from components.storage import (
    ArtifactCorrupted,
    ArtifactError,
    ArtifactMissing,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    StoredArtifact,
    open_store,
    parse_uri,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    """A store under test plus an outsider's access to the bytes behind it."""

    store: ArtifactStore
    disk_path: Callable[[str], Path]  # where the bytes of a uri lie on disk
    overwrite: Callable[[str, bytes], None]  # replace an object's bytes behind the store's back
    delete: Callable[[str], None]


def _local_backend(root: Path) -> Backend:
    store = LocalArtifactStore(root)

    def disk_path(uri: str) -> Path:
        return Path(parse_uri(uri).path)

    def overwrite(uri: str, data: bytes) -> None:
        path = disk_path(uri)
        path.chmod(0o644)
        path.write_bytes(data)

    return Backend(store, disk_path, overwrite, lambda uri: disk_path(uri).unlink())


def _s3_backend(server: S3Server, bucket: str, prefix: str = "art") -> Backend:
    store = S3ArtifactStore(bucket, prefix, server.endpoint, server.access_key,
                            server.secret_key, server.region)
    outsider = server.client()

    def disk_path(uri: str) -> Path:
        return server.object_path(bucket, parse_uri(uri).path)

    def overwrite(uri: str, data: bytes) -> None:
        outsider.put_object(bucket, parse_uri(uri).path, io.BytesIO(data), len(data))

    def delete(uri: str) -> None:
        outsider.remove_object(bucket, parse_uri(uri).path)

    return Backend(store, disk_path, overwrite, delete)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path / "artifacts")
    server = request.getfixturevalue("s3_server")
    # The bucket exists beforehand (dlvm never creates buckets: a missing one is refused,
    # tested on its own below).
    return _s3_backend(server, request.getfixturevalue("s3_bucket"))


# ------------------------------------------------------------------------- round trips


def test_bytes_roundtrip(backend: Backend):
    store = backend.store
    data = b"checkpoint \x00\xff bytes"
    art = store.put_bytes(data, "checkpoints/mae", "encoder.pt")
    assert isinstance(art, StoredArtifact)
    assert art.sha256 == sha(data) and art.size == len(data)
    assert art.uri.endswith(f"/checkpoints/mae/{sha(data)}/encoder.pt")
    assert art.uri == store.uri_for("checkpoints/mae", sha(data), "encoder.pt")
    assert art.uri.startswith("file:///" if isinstance(store, LocalArtifactStore) else "s3://")
    assert store.exists(art.uri)
    assert store.get_bytes(art.uri, art.sha256) == data
    store.verify(art.uri, art.sha256)
    assert backend.disk_path(art.uri).read_bytes() == data


def test_file_roundtrip_streams_multipart(backend: Backend, tmp_path):
    # 6 MiB: above the 5 MiB part size, so the S3 store uploads in parts.
    data = os.urandom(6 * 1024 * 1024 + 123)
    src = tmp_path / "src" / "big.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    art = backend.store.put_file(src, "exports", "big model.bin")
    assert (art.sha256, art.size) == (sha(data), len(data))

    dest_dir = tmp_path / "dest"
    dest = backend.store.get_file(art.uri, art.sha256, dest_dir / "copy.bin")
    assert dest == dest_dir / "copy.bin"
    assert dest.read_bytes() == data
    assert os.listdir(dest_dir) == ["copy.bin"]  # no temp files left behind
    # get_file replaces an existing destination atomically.
    dest.write_bytes(b"stale")
    backend.store.get_file(art.uri, art.sha256, dest)
    assert dest.read_bytes() == data


def test_empty_artifact(backend: Backend):
    art = backend.store.put_bytes(b"", "reports", "empty.md")
    assert art.size == 0 and art.sha256 == sha(b"")
    assert backend.store.get_bytes(art.uri, art.sha256) == b""


# --------------------------------------------------------------- immutability, idempotence


def test_same_content_put_is_idempotent_and_not_rewritten(backend: Backend, tmp_path):
    data = b"the same report"
    first = backend.store.put_bytes(data, "reports", "r.md")
    before = backend.disk_path(first.uri).stat()
    time.sleep(0.01)
    assert backend.store.put_bytes(data, "reports", "r.md") == first
    src = tmp_path / "r.md"
    src.write_bytes(data)
    assert backend.store.put_file(src, "reports", "r.md") == first
    after = backend.disk_path(first.uri).stat()
    # Same file, not rewritten: neither replaced (inode) nor written to (mtime).
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_existing_object_with_other_bytes_is_never_overwritten(backend: Backend, tmp_path):
    data = b"original"
    art = backend.store.put_bytes(data, "plots", "curve.png")
    backend.overwrite(art.uri, b"tampered")
    with pytest.raises(ArtifactCorrupted) as err:
        backend.store.put_bytes(data, "plots", "curve.png")
    assert art.uri in str(err.value) and art.sha256 in str(err.value)
    src = tmp_path / "curve.png"
    src.write_bytes(data)
    with pytest.raises(ArtifactCorrupted):
        backend.store.put_file(src, "plots", "curve.png")
    assert backend.disk_path(art.uri).read_bytes() == b"tampered"  # left for inspection


def test_same_bytes_under_another_name_or_kind_is_another_artifact(backend: Backend):
    a = backend.store.put_bytes(b"x", "reports", "a.md")
    b = backend.store.put_bytes(b"x", "reports", "b.md")
    c = backend.store.put_bytes(b"x", "plots", "a.md")
    assert len({a.uri, b.uri, c.uri}) == 3
    assert backend.store.get_bytes(b.uri, b.sha256) == b"x"


def test_local_artifacts_are_read_only_and_atomic_under_concurrency(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    data = os.urandom(256 * 1024)
    results, errors = [], []

    def put():
        try:
            results.append(store.put_bytes(data, "checkpoints", "w.pt"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    path = Path(parse_uri(results[0].uri).path)
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    assert os.listdir(path.parent) == ["w.pt"]  # temp files cleaned up
    assert path.read_bytes() == data


# -------------------------------------------------------------- corruption and absence


def test_corrupted_artifact_is_detected_on_every_read(backend: Backend, tmp_path):
    data = b"weights v1"
    art = backend.store.put_bytes(data, "checkpoints", "w.pt")
    backend.overwrite(art.uri, b"weights v2")
    for read in (
        lambda: backend.store.get_bytes(art.uri, art.sha256),
        lambda: backend.store.verify(art.uri, art.sha256),
        lambda: backend.store.get_file(art.uri, art.sha256, tmp_path / "out" / "w.pt"),
    ):
        with pytest.raises(ArtifactCorrupted) as err:
            read()
        message = str(err.value)
        assert art.uri in message and art.sha256 in message and sha(b"weights v2") in message
    assert not (tmp_path / "out" / "w.pt").exists()
    assert os.listdir(tmp_path / "out") == []


def test_corrupted_get_file_keeps_existing_destination(backend: Backend, tmp_path):
    art = backend.store.put_bytes(b"good", "checkpoints", "w.pt")
    backend.overwrite(art.uri, b"bad!")
    dest = tmp_path / "w.pt"
    dest.write_bytes(b"previous good copy")
    with pytest.raises(ArtifactCorrupted):
        backend.store.get_file(art.uri, art.sha256, dest)
    assert dest.read_bytes() == b"previous good copy"


def test_wrong_expected_hash_is_corruption(backend: Backend):
    art = backend.store.put_bytes(b"a", "reports", "a.md")
    with pytest.raises(ArtifactCorrupted):
        backend.store.get_bytes(art.uri, sha(b"b"))
    with pytest.raises(ValueError, match="sha256"):
        backend.store.get_bytes(art.uri, "not-a-hash")


def test_missing_artifact(backend: Backend, tmp_path):
    uri = backend.store.uri_for("checkpoints", sha(b"never stored"), "w.pt")
    assert not backend.store.exists(uri)
    for read in (
        lambda: backend.store.get_bytes(uri, sha(b"never stored")),
        lambda: backend.store.verify(uri, sha(b"never stored")),
        lambda: backend.store.get_file(uri, sha(b"never stored"), tmp_path / "w.pt"),
    ):
        with pytest.raises(ArtifactMissing) as err:
            read()
        assert uri in str(err.value)
    assert not (tmp_path / "w.pt").exists()

    art = backend.store.put_bytes(b"soon gone", "checkpoints", "w.pt")
    backend.delete(art.uri)
    assert not backend.store.exists(art.uri)
    with pytest.raises(ArtifactMissing, match=art.uri):
        backend.store.get_bytes(art.uri, art.sha256)


@pytest.mark.s3
def test_s3_missing_bucket_is_missing(s3_server: S3Server):
    store = S3ArtifactStore("no-such-bucket-here", "", s3_server.endpoint,
                            s3_server.access_key, s3_server.secret_key)
    uri = store.uri_for("x", sha(b"x"), "x")
    assert not store.exists(uri)
    with pytest.raises(ArtifactMissing, match=uri):
        store.get_bytes(uri, sha(b"x"))


@pytest.mark.s3
def test_s3_object_written_by_another_tool_is_adopted_only_if_its_bytes_match(
    s3_server: S3Server, s3_bucket: str
):
    backend = _s3_backend(s3_server, s3_bucket, prefix="")
    data = b"pushed by some other tool, no sha256 metadata"
    uri = backend.store.uri_for("exports", sha(data), "e.bin")
    backend.overwrite(uri, data)
    assert backend.store.put_bytes(data, "exports", "e.bin") == StoredArtifact(uri, sha(data), len(data))
    # Metadata is a hint only: a lying x-amz-meta-sha256 does not fool a read.
    s3_server.client().put_object(s3_bucket, parse_uri(uri).path, io.BytesIO(b"evil"), 4,
                                  metadata={"sha256": sha(data)})
    with pytest.raises(ArtifactCorrupted):
        backend.store.get_bytes(uri, sha(data))


# --------------------------------------------------------------------- names and uris


@pytest.mark.parametrize(
    "kind, name",
    [
        ("", "a"),
        ("reports", ""),
        ("../escape", "a"),
        ("reports/..", "a"),
        ("/abs", "a"),
        ("reports/", "a"),
        ("a//b", "a"),
        ("reports", "sub/a"),
        ("reports", ".."),
        ("reports", "."),
        ("reports", "a\\b"),
        ("reports", "a\nb"),
    ],
)
def test_bad_kind_or_name_is_rejected(backend: Backend, kind, name):
    with pytest.raises(ValueError, match="artifact (kind|name)"):
        backend.store.put_bytes(b"x", kind, name)
    with pytest.raises(ValueError, match="artifact (kind|name)"):
        backend.store.uri_for(kind, sha(b"x"), name)


def test_uris_outside_the_store_are_rejected(backend: Backend, tmp_path):
    good = backend.store.put_bytes(b"x", "reports", "a.md")
    if isinstance(backend.store, LocalArtifactStore):
        root = backend.store.root
        others = [
            (tmp_path / "elsewhere" / "reports" / sha(b"x") / "a.md").as_uri(),
            f"{root.as_uri()}/../elsewhere/reports/{sha(b'x')}/a.md",
            f"s3://bucket/reports/{sha(b'x')}/a.md",
        ]
    else:
        others = [
            good.uri.replace(f"s3://{backend.store.bucket}/", "s3://other-bucket/"),
            good.uri.replace("/art/", "/not-the-prefix/"),
            (tmp_path / "reports" / sha(b"x") / "a.md").as_uri(),
        ]
    for uri in others + ["http://host/x", f"file:///reports/{sha(b'x')[:10]}/a.md"]:
        with pytest.raises(ValueError):
            backend.store.get_bytes(uri, sha(b"x"))


def test_parse_uri():
    h = sha(b"x")
    p = parse_uri(f"s3://bkt/pre/fix/reports/{h}/my report.md")
    assert (p.scheme, p.bucket, p.path, p.sha256, p.name) == (
        "s3", "bkt", f"pre/fix/reports/{h}/my report.md", h, "my report.md")
    local = Path("/data/store/reports") / h / "my report.md"
    p = parse_uri(local.as_uri())
    assert (p.scheme, p.bucket, p.path, p.name) == ("file", "", str(local), "my report.md")
    for bad in ["", "reports/x", "s3:///k/h/n", f"s3://b/{h}/n", "s3://b/k/nothex/n",
                f"s3://b/k/{h}/", "file://host/x/{h}/n", "ftp://x/k/{h}/n"]:
        with pytest.raises(ValueError):
            parse_uri(bad)


# ---------------------------------------------------------------------- presigned URLs


def test_presigned_url_is_fetchable(backend: Backend):
    data = b"a report to share"
    art = backend.store.put_bytes(data, "reports", "share me.md")
    url = backend.store.presigned_url(art.uri, expires_s=60)
    if isinstance(backend.store, LocalArtifactStore):
        assert url == art.uri
    else:
        assert url.startswith(backend.store.endpoint + "/") and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data


@pytest.mark.s3
def test_tampered_or_expired_presigned_url_is_refused(s3_server: S3Server, s3_bucket: str):
    store = _s3_backend(s3_server, s3_bucket).store
    secret = store.put_bytes(b"secret", "reports", "a.md")
    other = store.put_bytes(b"other", "reports", "b.md")
    url = store.presigned_url(other.uri, expires_s=60)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    tampered = [
        url.replace(signature, flipped),  # forged signature
        url.replace(f"/{other.sha256}/b.md", f"/{secret.sha256}/a.md"),  # another object
        url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"),  # longer validity
    ]
    for bad in tampered:
        assert bad != url
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 403
    short = store.presigned_url(other.uri, expires_s=2)
    with urllib.request.urlopen(short, timeout=10) as response:  # valid while fresh
        assert response.read() == b"other"
    time.sleep(3.1)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(short, timeout=10)
    # AWS answers 403, rclone 400; both AccessDenied.
    assert err.value.code in (400, 403) and b"AccessDenied" in err.value.read()
    with pytest.raises(ValueError):
        store.presigned_url(other.uri, expires_s=0)


# ------------------------------------------------------------------- refused / unreachable


@pytest.mark.s3
def test_wrong_secret_key_is_a_clear_error_not_missing(s3_server: S3Server, s3_bucket: str):
    good = _s3_backend(s3_server, s3_bucket).store
    art = good.put_bytes(b"x", "reports", "a.md")
    bad = S3ArtifactStore(s3_bucket, "art", s3_server.endpoint, s3_server.access_key,
                          "not-the-secret", s3_server.region)
    for call in (
        lambda: bad.put_bytes(b"y", "reports", "a.md"),
        lambda: bad.get_bytes(art.uri, art.sha256),
        lambda: bad.exists(art.uri),
        lambda: bad.verify(art.uri, art.sha256),
    ):
        with pytest.raises(ArtifactError) as err:
            call()
        assert not isinstance(err.value, (ArtifactMissing, ArtifactCorrupted))
        assert s3_server.endpoint in str(err.value)
        assert "SignatureDoesNotMatch" in str(err.value) or "AccessDenied" in str(err.value)
    with pytest.raises(ArtifactError, match=art.uri.replace("/", ".")):
        bad.get_bytes(art.uri, art.sha256)


def test_unreachable_endpoint_fails_fast_with_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    store = S3ArtifactStore("bkt", "p", endpoint, "ak", "sk", retries=0, connect_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(ArtifactError, match=f"{endpoint}.*s3://bkt/p/reports/") as err:
        store.put_bytes(b"x", "reports", "a.md")
    assert not isinstance(err.value, ArtifactMissing)
    with pytest.raises(ArtifactError, match=endpoint):
        store.get_bytes(store.uri_for("reports", sha(b"x"), "a.md"), sha(b"x"))
    assert time.monotonic() - start < 10


def test_bad_endpoint_or_bucket_is_rejected_up_front():
    for endpoint in ("127.0.0.1:9000", "ftp://host", "http://host/path"):
        with pytest.raises(ValueError, match="endpoint"):
            S3ArtifactStore("bkt", "", endpoint, "ak", "sk")
    with pytest.raises(ValueError, match="bucket"):
        S3ArtifactStore("Bad_Bucket", "", "http://127.0.0.1:9000", "ak", "sk")


# ------------------------------------------------------------------------- open_store


def test_open_store_defaults_to_a_local_directory(tmp_path):
    store = open_store(Settings(home=tmp_path, artifacts=""))
    assert isinstance(store, LocalArtifactStore)
    assert store.root == (tmp_path / "artifacts").resolve()
    art = store.put_bytes(b"x", "reports", "a.md")
    assert Path(parse_uri(art.uri).path).is_relative_to(tmp_path / "artifacts")


@pytest.mark.s3
def test_open_store_s3_refuses_a_missing_bucket(tmp_path, s3_server: S3Server, s3_bucket: str):
    """A typo in DLVM_ARTIFACTS must not create a bucket (issue 16, item 8): creating buckets
    is `dlvm stack up`'s or the operator's job."""
    bucket = s3_bucket + "-typo"
    settings = Settings(
        home=tmp_path, artifacts=f"s3://{bucket}/dlvm/artifacts", s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key,
        s3_region=s3_server.region,
    )
    store = open_store(settings)
    assert isinstance(store, S3ArtifactStore) and isinstance(store, ArtifactStore)
    with pytest.raises(ArtifactError, match=f"bucket '{bucket}' does not exist"):
        store.put_bytes(b"x", "reports", "a.md")
    assert not s3_server.client().bucket_exists(bucket)
    settings = settings.model_copy(update={"artifacts": f"s3://{s3_bucket}/dlvm/artifacts"})
    art = open_store(settings).put_bytes(b"x", "reports", "a.md")
    assert art.uri == f"s3://{s3_bucket}/dlvm/artifacts/reports/{sha(b'x')}/a.md"


@pytest.mark.s3
def test_a_dvc_remote_on_a_missing_bucket_is_a_clear_error(tmp_path, s3_server: S3Server, s3_bucket: str):
    from components.data.dvc import DvcError, DvcWorkspace

    workspace = DvcWorkspace(tmp_path / "repo", f"s3://{s3_bucket}-typo/dvc", s3_server.endpoint,
                             s3_server.access_key, s3_server.secret_key)
    workspace.init()
    (tmp_path / "repo" / "data" / "d").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "d" / "a.txt").write_text("a")
    with pytest.raises(DvcError, match="bucket .* does not exist"):
        workspace.add_and_push("data/d")
    assert not s3_server.client().bucket_exists(f"{s3_bucket}-typo")
