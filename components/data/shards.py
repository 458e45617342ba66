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
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from tqdm.auto import tqdm

from components.data.files import write_atomically
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
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ValueError(f"not a folder: {src}")
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"no files matching {pattern!r} under {src}")
    return pack_files(src, [(rel, None) for rel in files], dest, shard_size)


def pack_files(src: Path, files: list[tuple[str, str | None]], dest: Path, shard_size: int,
               progress: bool = False) -> dict:
    """Pack ``src/rel`` for each ``(rel, sha256)`` of ``files`` into shards in ``dest`` (sorted
    by ``rel``; ``shard_size`` files a shard) and write ``dest/index.json``; returns the index.

    A file whose bytes do not hash to its given sha256 (it changed since it was validated)
    stops packing with a ValueError; ``None`` takes the file as it is. Each shard is written
    to a temporary name and renamed, and a shard already there with the right bytes is left
    alone, so packing a folder again rewrites only the shards that changed."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    src, dest = Path(src), Path(dest)
    files = sorted(files)
    dest.mkdir(parents=True, exist_ok=True)
    shards, members = [], {}
    bar = tqdm(total=len(files), desc=f"packing {len(files)} files into shards", unit="img", disable=not progress)
    for number, start in enumerate(range(0, len(files), shard_size)):
        name = f"shard-{number:05d}.tar"
        part = files[start:start + shard_size]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, expected in part:
                data = (src / rel).read_bytes()
                digest = _sha256(data)
                if expected is not None and digest != expected:
                    raise ValueError(f"{src / rel} changed since it was validated "
                                     f"(sha256 {digest[:12]}, expected {expected[:12]}): ingest again")
                info = tarfile.TarInfo(rel)  # mtime, uid, gid 0 and no owner names: reproducible bytes
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                members[rel] = {"shard": number, "size": len(data), "sha256": digest}
            bar.update(len(part))
        shard_bytes = buf.getvalue()
        shard_sha = _sha256(shard_bytes)
        target = dest / name
        if not (target.is_file() and target.stat().st_size == len(shard_bytes) and _sha256_file(target) == shard_sha):
            write_atomically(target, shard_bytes)
        shards.append({"name": name, "members": len(part), "size": len(shard_bytes), "sha256": shard_sha})
    bar.close()
    index = {"format": INDEX_FORMAT, "shard_size": shard_size, "shards": shards, "members": members}
    write_atomically(dest / INDEX_NAME, index_bytes(index))
    return index


def index_bytes(index: dict) -> bytes:
    """The bytes an index is written as (its sha256 is what a manifest records)."""
    return json.dumps(index, sort_keys=True).encode()


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- a dataset version kept as shards in the DVC workspace ---------------------------------
# Past a threshold of files (DLVM_SHARD_THRESHOLD) ingest versions a folder as shards + index
# instead of one file per image; the manifest still lists every image (path, sha256, ...), so
# its content hash, the label snapshots and the decode cache are the same either way, and it
# says which layout holds the files under "layout". Readers go through PackedFolder.

LAYOUT_SHARDS = "shards"


def shard_layout(manifest: dict) -> dict | None:
    """The manifest's shard layout ({"kind": "shards", "index_sha256", ...}), or None when its
    images are stored one file each."""
    layout = manifest.get("layout")
    if isinstance(layout, dict) and layout.get("kind") == LAYOUT_SHARDS:
        return layout
    return None


def stage_shards(src: Path, files: list[tuple[str, str]], workspace_dir: Path, shard_size: int,
                 progress: bool = True) -> dict:
    """Make ``workspace_dir`` hold exactly the shards and index of ``files`` ((rel, sha256), read
    from ``src``, each checked against its sha256); returns the layout a manifest records."""
    src, workspace_dir = Path(src).resolve(), Path(workspace_dir).resolve()
    if (workspace_dir / ".dvc").exists():
        raise ValueError(f"{workspace_dir} is a DVC repository root; stage into a sub-directory of it")
    if workspace_dir == src or src.is_relative_to(workspace_dir):
        raise ValueError(f"workspace {workspace_dir} contains the source folder {src}")
    index = pack_files(src, files, workspace_dir, shard_size, progress=progress)
    wanted = {INDEX_NAME, *(s["name"] for s in index["shards"])}
    # Anything else (an earlier per-file version, more shards of a bigger one) goes.
    for path in sorted(workspace_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(workspace_dir).as_posix()
        if path.is_symlink() or (path.is_file() and rel not in wanted):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return {"kind": LAYOUT_SHARDS, "format": INDEX_FORMAT, "shard_size": shard_size,
            "n_shards": len(index["shards"]), "index_sha256": _sha256(index_bytes(index))}


class PackedFolder:
    """Members of a packed folder (shards + index.json) read by name, every shard and member
    verified against the index, and the index against ``index_sha256`` when given.

    One shard is held in memory at a time: reading members in index order (sorted by name,
    as manifests list them) opens each shard once."""

    def __init__(self, folder: Path | str, index_sha256: str | None = None):
        self.folder = Path(folder)
        path = self.folder / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no shard index ({INDEX_NAME})")
        data = path.read_bytes()
        if index_sha256 is not None and _sha256(data) != index_sha256:
            raise ShardCorrupted(f"{path} hashes to {_sha256(data)}, the dataset version says {index_sha256}")
        self.index = read_index(data)
        self._number: int | None = None
        self._members: dict[str, bytes] = {}

    def names(self) -> list[str]:
        return sorted(self.index["members"])

    def read(self, name: str) -> bytes:
        entry = self.index["members"].get(name)
        if entry is None:
            raise KeyError(f"{name} is not in the shards of {self.folder}")
        if entry["shard"] != self._number:
            self._load(entry["shard"])
        return self._members[name]

    def _load(self, number: int) -> None:
        shard = dict(self.index["shards"][number])
        path = self.folder / shard["name"]
        data = path.read_bytes()
        if _sha256(data) != shard["sha256"]:
            raise ShardCorrupted(f"{path} hashes to {_sha256(data)}, the index says {shard['sha256']}")
        shard.setdefault("uri", str(path))
        self._members = dict(_verified_members(data, number, shard, self.index["members"]))
        self._number = number

    def extract(self, dest: Path | str, progress: bool = True) -> int:
        """Write every member to ``dest/name`` (each atomically); returns how many."""
        dest = Path(dest)
        names = self.names()
        for name in tqdm(names, desc=f"extracting {self.folder.name}", unit="img", disable=not progress):
            parts = PurePosixPath(name).parts
            if not parts or name.startswith("/") or ".." in parts:
                raise ShardCorrupted(f"{self.folder}: member name {name!r} would land outside {dest}")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, self.read(name))
        return len(names)
