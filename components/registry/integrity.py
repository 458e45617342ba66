"""Check the registry's promise: no row points at a missing or corrupted artifact."""
from __future__ import annotations

from components.registry import queries
from components.registry.db import session_scope
from components.settings import Settings
from components.storage import ArtifactError, open_store


def verify_registry(settings: Settings) -> list[str]:
    """One line per referenced artifact that is missing or does not match its sha256."""
    with session_scope(settings) as session:
        refs = queries.referenced_artifacts(session)
    store = open_store(settings)
    problems = []
    for ref in refs:
        try:
            store.verify(ref.uri, ref.sha256)
        except ArtifactError as exc:
            problems.append(f"{ref.table} {ref.id}: {exc}")
    return problems
