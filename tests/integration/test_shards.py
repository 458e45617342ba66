"""components/data/shards.py: images packed in tar shards with a sha256 index, uploaded to
the S3 artifact store (the loopback rclone server) and streamed back shard by shard,
verified."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from components.data.shards import (
    INDEX_NAME,
    ShardCorrupted,
    pack_shards,
    read_index,
    stream_samples,
    upload_shards,
)
from components.storage import ArtifactCorrupted, S3ArtifactStore, parse_uri


def _images(root, n: int) -> dict[str, bytes]:
    """``n`` distinct small PNGs in two sub-folders; returns relative path -> bytes."""
    rng = np.random.default_rng(0)
    written = {}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
        rel = f"{i % 2}/{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buf.getvalue())
        written[rel] = buf.getvalue()
    (root / "notes.txt").write_text("not an image: left out by the pattern")
    return written


def test_pack_is_indexed_and_reproducible(tmp_path):
    images = _images(tmp_path / "images", 25)
    index = pack_shards(tmp_path / "images", tmp_path / "a", shard_size=10)
    assert [s["members"] for s in index["shards"]] == [10, 10, 5]
    assert sorted(index["members"]) == sorted(images) and json.loads((tmp_path / "a" / INDEX_NAME).read_text()) == index
    for number, shard in enumerate(index["shards"]):
        data = (tmp_path / "a" / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                assert tar.extractfile(info).read() == images[info.name]
                assert index["members"][info.name] == {"shard": number, "size": len(images[info.name]),
                                                       "sha256": hashlib.sha256(images[info.name]).hexdigest()}
    # Same images, same bytes (times and owners are not recorded): stored and versioned once.
    (tmp_path / "images" / "0" / "000.png").touch()
    again = pack_shards(tmp_path / "images", tmp_path / "b", shard_size=10)
    assert again == index
    assert all((tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
               for s in index["shards"])


def test_bad_input_is_a_clear_error(tmp_path):
    _images(tmp_path / "images", 3)
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        pack_shards(tmp_path / "images", tmp_path / "out", shard_size=0)
    with pytest.raises(ValueError, match="no files matching '\\*.jpg'"):
        pack_shards(tmp_path / "images", tmp_path / "out", shard_size=2, pattern="*.jpg")
    with pytest.raises(ValueError, match="not a folder"):
        pack_shards(tmp_path / "missing", tmp_path / "out", shard_size=2)
    with pytest.raises(ValueError, match="not a dlvm shard index"):
        read_index(json.dumps({"format": "webdataset"}))
    with pytest.raises(ValueError, match="not JSON"):
        read_index(b"\x00")


@pytest.mark.s3
def test_shards_stream_from_s3_one_at_a_time_and_verified(tmp_path, s3_server, s3_bucket):
    store = S3ArtifactStore(s3_bucket, "datasets", s3_server.endpoint, s3_server.access_key,
                            s3_server.secret_key, s3_server.region)
    images = _images(tmp_path / "images", 30)
    pack_shards(tmp_path / "images", tmp_path / "packed", shard_size=10)
    stored = upload_shards(store, tmp_path / "packed")
    assert upload_shards(store, tmp_path / "packed") == stored  # content-addressed: found again, not re-sent
    index = read_index(store.get_bytes(stored.uri, stored.sha256))
    assert all(s["uri"].startswith(f"s3://{s3_bucket}/datasets/shards/") for s in index["shards"])

    samples = list(stream_samples(store, stored.uri, stored.sha256))
    assert [s.name for s in samples] == sorted(images) and all(s.data == images[s.name] for s in samples)

    # Streaming, not download-then-read: the third shard is fetched only once the first is read
    # (the second is being prefetched meanwhile), so damage to it shows after 20 good samples.
    stream = stream_samples(store, stored.uri, stored.sha256)
    first = next(stream)
    assert first.name == sorted(images)[0]
    third = s3_server.object_path(s3_bucket, parse_uri(index["shards"][2]["uri"]).path)
    damaged = bytearray(third.read_bytes())
    damaged[700] ^= 0xFF  # same size: the server still serves it
    third.write_bytes(bytes(damaged))
    good = [first]
    with pytest.raises(ArtifactCorrupted, match="shard-00002.tar"):
        for sample in stream:
            good.append(sample)
    assert len(good) == 20

    # An index that disagrees with a shard's members is refused, naming the member.
    wrong = dict(index, members=dict(index["members"], **{first.name: dict(index["members"][first.name],
                                                                         sha256="0" * 64)}))
    bad_index = store.put_bytes(json.dumps(wrong).encode(), kind="shards", name=INDEX_NAME)
    with pytest.raises(ShardCorrupted, match=f"member '{first.name}' hashes to"):
        list(stream_samples(store, bad_index.uri, bad_index.sha256))
    # The index of a packed folder (no URIs) is not a stored shard set.
    local = store.put_file(tmp_path / "packed" / INDEX_NAME, kind="shards", name=INDEX_NAME)
    with pytest.raises(ValueError, match="not of uploaded shards"):
        next(stream_samples(store, local.uri, local.sha256))
