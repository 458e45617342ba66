"""Ingest a folder of raw images: scan + validate, manifest, quarantine, staging.

The scan walks ``src`` recursively in sorted order (hidden files and directories, i.e.
names starting with ``.``, are skipped), validates every file with
:func:`components.data.validate.validate_image`, and finds exact duplicates by content
hash: the first copy in sorted path order is kept, later copies are reported as
``duplicate`` of it. The manifest is plain sorted JSON-able data whose ``content_hash``
depends only on the (path, sha256) pairs, so an unchanged folder always gets the same
hash.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from components.data.files import write_atomically
from components.data.validate import ImageLimits, sha256_file, validate_image

MANIFEST_FORMAT = "dlvm-manifest/1"


@dataclass(frozen=True)
class ImageRecord:
    """One accepted image; ``path`` is relative to the scanned folder, POSIX style."""

    path: str
    sha256: str
    size: int
    width: int
    height: int
    mode: str
    bit_depth: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BadFile:
    """One rejected file; ``reason`` is a short code (see validate.REASONS)."""

    path: str
    reason: str
    detail: str
    duplicate_of: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IngestScan:
    root: Path  # the scanned folder (absolute)
    good: list[ImageRecord] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # left out by the include/exclude patterns, not read
    hidden: list[str] = field(default_factory=list)  # names starting with '.': not part of the dataset

    def bad_by_reason(self) -> dict[str, list[BadFile]]:
        out: dict[str, list[BadFile]] = {}
        for b in self.bad:
            out.setdefault(b.reason, []).append(b)
        return out


def iter_files(src: Path) -> list[str]:
    """Relative POSIX paths of all non-hidden files under ``src``, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        # Pruning in place stops os.walk from descending into hidden directories.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(src)
        for name in filenames:
            if name.startswith("."):
                continue
            out.append((rel_dir / name).as_posix())
    return sorted(out)


def matches_pattern(rel: str, pattern: str) -> bool:
    """Whether the relative POSIX path ``rel`` matches a glob ``pattern`` (case-insensitive).

    A pattern without ``/`` matches the file name or any folder name on the path
    (``*.png``, ``masks``); one with ``/`` matches the whole path or a leading folder of it
    (``train/masks``, ``*/ground_truth/*.png``). ``*`` also crosses ``/``."""
    rel, pattern = rel.lower(), pattern.strip().strip("/").lower()
    parts = rel.split("/")
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in parts)
    return any(fnmatch.fnmatchcase("/".join(parts[:k]), pattern) for k in range(1, len(parts) + 1))


def select_files(files: list[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(taken, excluded): a file is taken when it matches an include pattern (any file when
    there are none) and no exclude pattern."""
    taken, excluded = [], []
    for rel in files:
        wanted = (not include or any(matches_pattern(rel, p) for p in include)) \
            and not any(matches_pattern(rel, p) for p in exclude)
        (taken if wanted else excluded).append(rel)
    return taken, excluded


def folder_counts(scan: IngestScan) -> list[dict]:
    """Per folder holding files (relative, ``.`` for the top): images taken, files quarantined,
    files left out by the patterns; sorted by folder."""
    counts: dict[str, dict] = {}

    def row(rel: str) -> dict:
        folder = rel.rsplit("/", 1)[0] if "/" in rel else "."
        return counts.setdefault(folder, {"folder": folder, "taken": 0, "quarantined": 0, "excluded": 0})

    for r in scan.good:
        row(r.path)["taken"] += 1
    for b in scan.bad:
        row(b.path)["quarantined"] += 1
    for rel in scan.excluded:
        row(rel)["excluded"] += 1
    return [counts[k] for k in sorted(counts)]


def hidden_entries(src: Path) -> list[str]:
    """Relative paths of the hidden files and folders (names starting with '.') that the scan
    skips, so that the user hears about them (``..name.png`` is hidden too)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        out += [(rel_dir / n).as_posix() for n in sorted(dirnames + filenames) if n.startswith(".")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(out)


def scan_folder(src: Path | str, limits: ImageLimits | None = None, progress: bool = True,
                include: Sequence[str] = (), exclude: Sequence[str] = ()) -> IngestScan:
    """Validate every file under ``src`` (those the include/exclude patterns select, see
    :func:`select_files`) and split them into good images and bad files."""
    src = Path(src).resolve()
    if not src.is_dir():
        raise NotADirectoryError(f"not a directory: {src}")
    limits = limits or ImageLimits()
    taken, excluded = select_files(iter_files(src), include, exclude)
    scan = IngestScan(root=src, excluded=excluded, hidden=hidden_entries(src))
    first_by_hash: dict[str, str] = {}
    for rel in tqdm(taken, desc=f"validating {src.name}", unit="img", disable=not progress):
        if (src / rel).is_symlink() and not (src / rel).resolve().is_relative_to(src):
            # A link out of the folder would version a file the user did not put there.
            scan.bad.append(BadFile(rel, "link_outside", f"symbolic link to {os.readlink(src / rel)}, "
                                                         "outside the ingested folder"))
            continue
        check = validate_image(src / rel, limits)
        if not check.ok:
            scan.bad.append(BadFile(rel, check.reason, check.detail))
            continue
        # Files are visited in sorted path order, so the kept copy is the first one.
        kept = first_by_hash.setdefault(check.sha256, rel)
        if kept != rel:
            scan.bad.append(BadFile(rel, "duplicate", f"same content as {kept}", duplicate_of=kept))
            continue
        scan.good.append(ImageRecord(rel, check.sha256, check.size, check.width, check.height,
                                     check.mode, check.bit_depth))
    return scan


def content_hash(pairs: list[tuple[str, str]]) -> str:
    """sha256 over sorted (path, sha256) pairs; identifies a dataset's content."""
    h = hashlib.sha256()
    for path, sha in sorted(pairs):
        h.update(f"{path}\t{sha}\n".encode())
    return h.hexdigest()


def build_manifest(scan: IngestScan, dataset: str = "") -> dict:
    """JSON-able, sorted description of the good images of a scan."""
    images = sorted((r.to_dict() for r in scan.good), key=lambda r: r["path"])
    return {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "content_hash": content_hash([(r["path"], r["sha256"]) for r in images]),
        "n_images": len(images),
        "n_bytes": sum(r["size"] for r in images),
        "images": images,
        # Quarantined exact copies -> the kept path: labels given to a copy belong to the
        # kept image (not part of content_hash: the versioned content is the images).
        "duplicates": {b.path: b.duplicate_of for b in sorted(scan.bad, key=lambda b: b.path)
                       if b.reason == "duplicate" and b.duplicate_of},
    }


def manifest_json_bytes(manifest: dict) -> bytes:
    """Deterministic serialisation of a manifest (same manifest -> same bytes)."""
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def quarantine(scan: IngestScan, src: Path | str | None, dest_dir: Path | str) -> list[BadFile]:
    """Copy every bad file from ``src`` (default: the scanned folder) to ``dest_dir`` under
    its relative path and write ``dest_dir/REASONS.json``; returns the bad files.

    Empty files are copied too, so the quarantine shows exactly what arrived.
    """
    src = Path(src).resolve() if src is not None else scan.root
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for b in scan.bad:
        target = dest_dir / b.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _atomic_copy(src / b.path, target)
        except OSError:
            # A file we could not read cannot be copied; REASONS.json still lists it.
            pass
    reasons = [b.to_dict() for b in sorted(scan.bad, key=lambda b: b.path)]
    write_atomically(dest_dir / "REASONS.json", (json.dumps(reasons, indent=1) + "\n").encode())
    return list(scan.bad)


def unchanged_quarantine(scan: IngestScan, src: Path | str | None, dataset_dir: Path | str) -> Path | None:
    """The newest quarantine folder under ``dataset_dir`` when it already holds exactly these
    bad files (same reasons, same bytes): a re-ingest of an unchanged folder reuses it
    instead of adding another copy of the same files."""
    src = Path(src).resolve() if src is not None else scan.root
    folders = sorted((p for p in Path(dataset_dir).glob("*") if (p / "REASONS.json").is_file()), reverse=True)
    if not folders:
        return None
    latest = folders[0]
    reasons = [b.to_dict() for b in sorted(scan.bad, key=lambda b: b.path)]
    try:
        if json.loads((latest / "REASONS.json").read_text()) != reasons:
            return None
        for b in scan.bad:
            kept, source = latest / b.path, src / b.path
            if source.is_file() and (not kept.is_file() or sha256_file(kept) != sha256_file(source)):
                return None
    except (OSError, ValueError):
        return None
    return latest


class SourceChanged(ValueError):
    """A file's bytes changed between the scan (which hashed them) and staging."""


def stage_into_workspace(scan: IngestScan, src: Path | str | None, workspace_dir: Path | str,
                         root: Path | str | None = None) -> dict[str, int]:
    """Make ``workspace_dir`` hold exactly the scan's good images (read from ``src``,
    default: the scanned folder) at their relative paths.

    New or changed files are copied (each one atomically: temp file + rename) and hashed
    while they are copied: a file whose bytes are no longer the ones the scan hashed raises
    :class:`SourceChanged` and is not staged, so a version is never recorded with one hash
    and other bytes. Unchanged ones (same sha256) are left alone, anything else in the
    directory is deleted. Since this deletes, ``workspace_dir`` must resolve strictly inside
    ``root`` when one is given (the flows pass the workspace's data folder), and never
    contain the source. Returns counts: copied, unchanged, removed.
    """
    src = Path(src).resolve() if src is not None else scan.root
    workspace_dir = Path(workspace_dir).resolve()
    if root is not None:
        base = Path(root).resolve()
        if workspace_dir == base or not workspace_dir.is_relative_to(base):
            raise ValueError(f"refusing to stage into {workspace_dir}: it is not strictly inside {base}")
    if (workspace_dir / ".dvc").exists():
        raise ValueError(f"{workspace_dir} is a DVC repository root; stage into a sub-directory of it")
    if workspace_dir == src or src.is_relative_to(workspace_dir):
        raise ValueError(f"workspace {workspace_dir} contains the source folder {src}")
    workspace_dir.mkdir(parents=True, exist_ok=True)

    wanted = {r.path: r for r in scan.good}
    copied = unchanged = removed = 0
    for rel, rec in sorted(wanted.items()):
        target = workspace_dir / rel
        if target.is_file() and not target.is_symlink() and target.stat().st_size == rec.size \
                and sha256_file(target) == rec.sha256:
            unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_copy(src / rel, target, expect_sha256=rec.sha256)
        copied += 1

    # Remove everything not wanted (hidden files included: the workspace is ours), then
    # empty directories, deepest first.
    for dirpath, dirnames, filenames in os.walk(workspace_dir, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if p.relative_to(workspace_dir).as_posix() not in wanted:
                p.unlink()
                removed += 1
        for name in dirnames:
            d = Path(dirpath) / name
            if d.is_symlink():
                d.unlink()
            elif not any(d.iterdir()):
                d.rmdir()
    return {"copied": copied, "unchanged": unchanged, "removed": removed}


def _atomic_copy(src: Path, dest: Path, expect_sha256: str | None = None) -> None:
    # A short temp name: a source name near the file system's 255-byte limit must not
    # overflow it with a prefix and suffix.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".stage-", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(1 << 20):
                digest.update(block)
                fout.write(block)
        if expect_sha256 is not None and digest.hexdigest() != expect_sha256:
            raise SourceChanged(f"{src} changed after it was validated (sha256 {expect_sha256[:12]}... then, "
                                f"{digest.hexdigest()[:12]}... now): nothing was versioned; ingest again "
                                "once the folder is no longer being written")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; staged data is meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

