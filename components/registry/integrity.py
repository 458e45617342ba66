"""Check the registry's promise: no row points at a missing or corrupted artifact, and (deep)
every dataset version's DVC data is exactly what its manifest lists."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlmodel import select

from components.registry import queries
from components.registry.db import session_scope
from components.registry.tables import Dataset, DatasetVersion
from components.settings import Settings
from components.storage import ArtifactError, open_store


def verify_registry(settings: Settings, deep: bool = False, progress=None) -> list[str]:
    """One line per referenced artifact that is missing or does not match its sha256; with
    ``deep``, also one line per dataset version whose DVC data differs from its manifest."""
    with session_scope(settings) as session:
        refs = queries.referenced_artifacts(session)
    store = open_store(settings)
    problems = []
    for ref in refs:
        try:
            store.verify(ref.uri, ref.sha256)
        except (ArtifactError, ValueError) as exc:  # ValueError: a uri this store cannot read
            problems.append(f"{ref.table} {ref.id}: {exc}")
    if deep:
        problems += verify_dataset_data(settings, progress=progress)
    return problems


def verify_dataset_data(settings: Settings, progress=None) -> list[str]:
    """Restore each dataset version from the DVC remote into a scratch workspace (the shared
    one is left alone) and compare its files with the manifest: missing, extra, other bytes."""
    from components.data.access import load_json_artifact
    from components.data.dvc import DvcError, DvcWorkspace

    with session_scope(settings) as session:
        rows = session.exec(select(Dataset.name, DatasetVersion).join(
            DatasetVersion, DatasetVersion.dataset_id == Dataset.id).order_by(Dataset.name, DatasetVersion.version)).all()
    problems: list[str] = []
    settings.home.mkdir(parents=True, exist_ok=True)
    for name, version in rows:
        where = f"dataset_version {version.id} ({name} v{version.version})"
        if progress:
            progress(f"checking the DVC data of {name} v{version.version}")
        try:
            manifest = load_json_artifact(settings, version.manifest_uri, version.manifest_sha256)
        except (ArtifactError, ValueError) as exc:
            problems.append(f"{where}: manifest unreadable: {exc}")
            continue
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=settings.home) as scratch:
            workspace = DvcWorkspace(Path(scratch) / "repo", settings.dvc_remote, settings.s3_endpoint or None,
                                     settings.s3_access_key.get_secret_value() or None,
                                     settings.s3_secret_key.get_secret_value() or None)
            try:
                workspace.init()
                folder = workspace.checkout(version.dvc_file, "data/check")
            except (DvcError, ValueError) as exc:
                problems.append(f"{where}: its DVC data cannot be restored: {str(exc).splitlines()[-1]}")
                continue
            problems += [f"{where}: {p}" for p in compare_with_manifest(folder, manifest)]
    return problems


def compare_with_manifest(folder: Path, manifest: dict) -> list[str]:
    """The differences between the files under ``folder`` and the manifest's images."""
    wanted = {image["path"]: image["sha256"] for image in manifest["images"]}
    found: dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(folder):
        for filename in filenames:
            path = Path(dirpath) / filename
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    out = [f"{path}: in the manifest, not in the DVC data" for path in sorted(set(wanted) - set(found))]
    out += [f"{path}: in the DVC data, not in the manifest" for path in sorted(set(found) - set(wanted))]
    out += [f"{path}: DVC holds sha256 {found[path][:12]}..., the manifest says {wanted[path][:12]}..."
            for path in sorted(set(wanted) & set(found)) if found[path] != wanted[path]]
    return out
