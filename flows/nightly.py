"""Flow `nightly`: version what arrived in the raw-image folder, then sync Label Studio
(new images become tasks, new labels a snapshot, fresh pre-annotations and queue)."""
from __future__ import annotations

from prefect import flow

from components.names import check_dataset
from components.settings import get_settings
from flows.feedback import feedback_flow
from flows.ingest import ingest_flow


@flow(name="nightly", log_prints=True)
def nightly_flow(source: str, dataset: str, queue_size: int = 100) -> dict:
    """Ingest `source` as `dataset` (a new version only when it changed); then one feedback
    round when Label Studio is configured (DLVM_LABEL_STUDIO_URL)."""
    check_dataset(dataset)
    ingest = ingest_flow(source, dataset)
    if not get_settings().label_studio_url:
        print("nightly: DLVM_LABEL_STUDIO_URL is not set: no label sync")
        return {"ingest": ingest, "feedback": None}
    return {"ingest": ingest, "feedback": feedback_flow(dataset, queue_size=queue_size)}
