"""Label Studio's annotation webhooks -> the retrain deployment, debounced.

Label Studio posts one event per annotation action, with the shared secret in the
``X-Dlvm-Webhook-Secret`` header (registered by flows/feedback.py). Events with a wrong
or missing secret are refused with 401. New labels are counted in a small state file (so
a restart of the receiver loses nothing); when ``threshold`` have arrived and the last
start is at least ``min_interval_s`` old, the retrain deployment is started (after the
reply: Label Studio waits only about a second) and the count starts over; a start that
fails gives the count back, so the next event tries again. A burst of a thousand imported annotations starts one run, not a thousand.
"""
from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from fastapi import BackgroundTasks, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

SECRET_HEADER = "X-Dlvm-Webhook-Secret"
logger = logging.getLogger("dlvm.webhook")
LABEL_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"}


def labels_in_event(event: dict) -> int:
    """How many new or changed labels a Label Studio webhook payload carries."""
    if not isinstance(event, dict):
        raise ValueError("webhook payload must be a JSON object")
    action = event.get("action")
    if action not in LABEL_ACTIONS:
        return 0
    annotations = event.get("annotations", event.get("annotation"))
    if isinstance(annotations, dict):
        annotations = [annotations]
    if not isinstance(annotations, list):
        return 1 if action != "ANNOTATIONS_CREATED" else 0
    return sum(1 for a in annotations if not (isinstance(a, dict) and a.get("was_cancelled")))


class RetrainTrigger:
    """Counts new labels and starts a run when enough arrived (state kept in ``state_path``)."""

    def __init__(self, state_path: Path, threshold: int, start: Callable[[], str], min_interval_s: float = 300.0):
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.state_path, self.threshold, self.start, self.min_interval_s = Path(state_path), threshold, start, min_interval_s
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"pending": 0, "last_started": 0.0, "last_run": None}

    def _write(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def add(self, n_labels: int) -> dict:
        """Count ``n_labels``; returns the state, with ``due`` true when a run should start now
        (the count is then taken: call :meth:`start_run` with ``state["taken"]``)."""
        with self._locked() as state:
            state["pending"] = int(state.get("pending", 0)) + int(n_labels)
            now = time.time()
            due = state["pending"] >= self.threshold and now - float(state.get("last_started", 0)) >= self.min_interval_s
            taken = state["pending"] if due else 0
            if due:
                state.update(pending=0, last_started=now)
        return {**state, "due": due, "taken": taken, "threshold": self.threshold}

    def start_run(self, taken: int) -> str | None:
        """Start the run; on failure give the taken labels back so the next event retries."""
        try:
            run_id = self.start()
        except Exception as exc:
            with self._locked() as state:
                state.update(pending=int(state.get("pending", 0)) + taken, last_started=0.0,
                             last_error=f"{type(exc).__name__}: {exc}")
            logger.error("could not start the retrain run: %s: %s", type(exc).__name__, exc)
            return None
        with self._locked() as state:
            state.update(last_run=run_id, last_error=None)
        logger.info("started retrain run %s after %d new labels", run_id, taken)
        return run_id

    @contextmanager
    def _locked(self):
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.state_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several receiver processes may share the file
            state = self._read()
            yield state
            self._write(state)


def create_app(secret: str, trigger: RetrainTrigger) -> FastAPI:
    app = FastAPI(title="dlvm Label Studio webhook", version="1")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/webhooks/label-studio")
    async def receive(request: Request, background: BackgroundTasks,
                      x_dlvm_webhook_secret: str | None = Header(None)) -> dict:
        if not secret:
            raise HTTPException(503, "the receiver has no DLVM_WEBHOOK_SECRET configured: it accepts no events")
        if not x_dlvm_webhook_secret or not hmac.compare_digest(x_dlvm_webhook_secret.encode(), secret.encode()):
            raise HTTPException(401, f"wrong or missing {SECRET_HEADER} header")
        try:
            n = labels_in_event(await request.json())
        except ValueError as exc:
            raise HTTPException(422, f"not a Label Studio webhook payload: {exc}") from exc
        state = await run_in_threadpool(trigger.add, n)
        if state["due"]:
            # Label Studio waits about a second for an answer: start the run after replying.
            background.add_task(trigger.start_run, state["taken"])
        return {"labels": n, "pending": state["pending"], "threshold": state["threshold"],
                "starting_retrain": state["due"]}

    return app
