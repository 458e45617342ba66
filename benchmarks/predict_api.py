"""Latency of the prediction endpoint, `POST /api/models/{name}/predict`, on CPU.

    .venv/bin/python -m benchmarks.predict_api                  # the docs/BENCHMARKS.md run
    .venv/bin/python -m benchmarks.predict_api --requests 50    # a quick look

Registers a classifier of the demo recipe's shape (ViT-Ti/8 at 64 px, 4 classes; random
weights: latency does not depend on their values) in a fresh SQLite registry, puts it in
production, starts `dlvm ui` (one worker) and sends one ELPV cell (300x300 8-bit PNG, decoded
and resized by the server) per request from one client with a keep-alive connection,
measuring each round trip. The first request (model load) is reported apart; p50/p99 are
over the rest. Thread settings are recorded with the numbers.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from components.data.elpv import elpv_labels, elpv_root
from components.models.checkpoint import save_checkpoint
from components.models.vit import ViTConfig
from components.registry import writes
from components.registry.db import session_scope
from components.registry.promotion import record_promotion
from components.settings import Settings
from components.storage import open_store

MODEL = "bench-classifier"
CLASSES = ["functional", "possibly_defective", "likely_defective", "defective"]


def register_classifier(settings: Settings, vit: ViTConfig) -> None:
    """A random-weight classifier of ``vit``'s shape as MODEL v1, in production."""
    import torch

    from components.training.adapt import Classifier
    torch.manual_seed(0)
    clf = Classifier(vit, len(CLASSES), classes=CLASSES)
    data = save_checkpoint({"kind": "classifier", "vit_config": vit.to_dict(), "classes": CLASSES,
                            "classifier": clf.state()})
    stored = open_store(settings).put_bytes(data, "checkpoints", f"{MODEL}.pt")
    with session_scope(settings) as session:
        writes.get_or_create_model(session, MODEL, kind="classifier")
        version = writes.add_model_version(session, model_name=MODEL, params={"img_size": vit.img_size},
                                           artifact_uri=stored.uri, sha256=stored.sha256)
        record_promotion(session, model_name=MODEL, alias="production", decision="promoted",
                         candidate_version_id=version.id, evidence={"benchmark": True}, actor="benchmark")


def measure(url: str, image: bytes, n: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        conn.request("POST", f"/api/models/{MODEL}/predict", body=image,
                     headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        body = response.read()
        times.append(time.perf_counter() - t0)
        if response.status != 200:
            raise RuntimeError(f"predict answered {response.status}: {body[:300]!r}")
    conn.close()
    rest = np.asarray(times[1:]) * 1000
    return {"first_ms": round(times[0] * 1000, 1), "n": n, "p50_ms": round(float(np.percentile(rest, 50)), 2),
            "p90_ms": round(float(np.percentile(rest, 90)), 2), "p99_ms": round(float(np.percentile(rest, 99)), 2),
            "mean_ms": round(float(rest.mean()), 2), "answer": json.loads(body)}


def main(argv: list[str] | None = None) -> dict:
    from components.stack.services import ui_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/predict-api/results.json")
    args = parser.parse_args(argv)
    vit = ViTConfig.tiny(img_size=64, patch_size=8)
    image = (elpv_root() / elpv_labels()[0].path).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "state")
        register_classifier(settings, vit)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DLVM_")}, "DLVM_HOME": str(settings.home)}
        with ui_server(env, Path(tmp) / "ui.log") as server:
            result = measure(server.url, image, args.requests)
    from components.training.adapt import Classifier
    n_params = sum(p.numel() for p in Classifier(vit, len(CLASSES)).parameters())
    out = {"endpoint": f"POST /api/models/{MODEL}/predict",
           "model": f"ViT-Ti/8, 64 px, {len(CLASSES)} classes ({n_params / 1e6:.1f} M parameters)",
           "image": f"ELPV {elpv_labels()[0].path}, {len(image):,} bytes PNG 300x300 8-bit",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
           "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
                       "torch": "default (one thread per core)", "server": "dlvm ui, 1 worker"},
           **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
