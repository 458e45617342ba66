"""Images packed in fixed-size tar shards with a sha256 index, and samples streamed back
from the artifact store one shard at a time.

One object per image stops scaling in the hundreds of thousands: DVC took 167 s and 383 MB
to version 100 k small PNGs one file each, 15 s packed in 100 shards (docs/BENCHMARKS.md,
docs/SCALING.md). A shard is an uncompressed tar of up to ``shard_size`` files, written
deterministically (members sorted by path, times and owners zeroed), so the same images
give byte-identical shards and a content-addressed store (or DVC) keeps them once. The
index names every shard (with its sha256) and every member (its shard, size and sha256);
a reader verifies both: the store re-hashes each shard it hands out, and each member is
hashed again as it is read.

Layout of a packed directory: ``shard-00000.tar``, ``shard-00001.tar``, ... and
``index.json``. In the store: each shard under ``shards/<sha256>/shard-NNNNN.tar`` and the
index (with the shards' URIs added) under ``shards/<sha256>/index.json``; the index's URI
and sha256 are what a dataset version records.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from components.storage import ArtifactError, ArtifactStore, StoredArtifact

INDEX_FORMAT = "dlvm-shards/1"
INDEX_NAME = "index.json"
SHARD_KIND = "shards"


class Sample(NamedTuple):
    """One member of a shard: its path relative to the packed folder, and its bytes."""

    name: str
    data: bytes


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_shards(src: Path, dest: Path, shard_size: int, pattern: str = "*.png") -> dict:
    """Pack the files under ``src`` matching ``pattern`` (any depth, sorted by relative path)
    into ``dest/shard-NNNNN.tar`` of ``shard_size`` files each, and write ``dest/index.json``.
    Returns the index."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ValueError(f"not a folder: {src}")
    files = sorted((p for p in src.rglob(pattern) if p.is_file()), key=lambda p: p.relative_to(src).as_posix())
    if not files:
        raise ValueError(f"no files matching {pattern!r} under {src}")
    dest.mkdir(parents=True, exist_ok=True)
    shards, members = [], {}
    for number, start in enumerate(range(0, len(files), shard_size)):
        name = f"shard-{number:05d}.tar"
        part = files[start:start + shard_size]
        with tarfile.open(dest / name, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in part:
                data = path.read_bytes()
                rel = path.relative_to(src).as_posix()
                info = tarfile.TarInfo(rel)  # mtime, uid, gid 0 and no owner names: reproducible bytes
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                members[rel] = {"shard": number, "size": len(data), "sha256": _sha256(data)}
        shard_bytes = (dest / name).read_bytes()
        shards.append({"name": name, "members": len(part), "size": len(shard_bytes), "sha256": _sha256(shard_bytes)})
    index = {"format": INDEX_FORMAT, "shard_size": shard_size, "shards": shards, "members": members}
    (dest / INDEX_NAME).write_text(json.dumps(index, sort_keys=True))
    return index


def read_index(data: bytes | str) -> dict:
    """A shard index from its JSON; a clear error when it is not one."""
    try:
        index = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"shard index is not JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"not a dlvm shard index (format {found!r}, expected {INDEX_FORMAT!r})")
    counted = sum(s["members"] for s in index["shards"])
    if counted != len(index["members"]):
        raise ValueError(f"shard index lists {len(index['members'])} members but its shards hold {counted}")
    return index


def upload_shards(store: ArtifactStore, packed: Path) -> StoredArtifact:
    """Put a packed folder's shards into the store, then its index with their URIs; returns
    the stored index (the reference to keep). Shards already there are found, not re-sent."""
    packed = Path(packed)
    index = read_index((packed / INDEX_NAME).read_bytes())
    for shard in index["shards"]:
        stored = store.put_file(packed / shard["name"], kind=SHARD_KIND, name=shard["name"])
        if stored.sha256 != shard["sha256"]:
            raise ValueError(f"{packed / shard['name']} changed since it was packed "
                             f"(sha256 {stored.sha256}, index says {shard['sha256']}): pack again")
        shard["uri"] = stored.uri
    return store.put_bytes(json.dumps(index, sort_keys=True).encode(), kind=SHARD_KIND, name=INDEX_NAME)


def stream_samples(store: ArtifactStore, index_uri: str, index_sha256: str) -> Iterator[Sample]:
    """Every member of the stored shards, shard after shard in index order, each verified
    against the index. At most two shards are in memory (the next one is fetched while this
    one is read), so a dataset far larger than memory or disk streams."""
    index = read_index(store.get_bytes(index_uri, index_sha256))
    shards = index["shards"]
    if any("uri" not in s for s in shards):
        raise ValueError(f"{index_uri} is the index of a packed folder, not of uploaded shards (upload_shards)")

    def fetch(shard: dict) -> bytes:
        return store.get_bytes(shard["uri"], shard["sha256"])  # the store re-hashes the whole shard

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
        pending = pool.submit(fetch, shards[0]) if shards else None
        for number, shard in enumerate(shards):
            data = pending.result()
            if number + 1 < len(shards):
                pending = pool.submit(fetch, shards[number + 1])
            yield from _verified_members(data, number, shard, index["members"])


class ShardCorrupted(ArtifactError):
    """A shard's members disagree with the index (the shard itself hashed right)."""


def _verified_members(data: bytes, number: int, shard: dict, members: dict) -> Iterator[Sample]:
    seen = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            expected = members.get(info.name)
            if not info.isfile() or expected is None or expected["shard"] != number:
                raise ShardCorrupted(f"{shard['uri']}: member {info.name!r} is not in the index as part of shard {number}")
            member = tar.extractfile(info).read()
            if _sha256(member) != expected["sha256"]:
                raise ShardCorrupted(f"{shard['uri']}: member {info.name!r} hashes to {_sha256(member)}, "
                                     f"the index says {expected['sha256']}")
            seen += 1
            yield Sample(info.name, member)
    if seen != shard["members"]:
        raise ShardCorrupted(f"{shard['uri']}: {seen} members, the index says {shard['members']}")
