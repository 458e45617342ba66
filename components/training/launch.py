"""Run :func:`pretrain` in this process, or in several under ``torchrun`` (DDP).

The Prefect task calls :func:`pretrain_in_processes`; with ``processes > 1`` it writes the
images, config and initial weights to a scratch directory, starts ``torchrun --standalone``
on this module's ``main`` and reads back what rank 0 wrote. One GPU per process on a GPU
machine, gloo on CPU. The resume checkpoint works the same in both modes, so a killed
multi-process run also resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from components.training.pretrain import PretrainConfig, PretrainResult, pretrain


def pretrain_in_processes(images: np.ndarray, cfg: PretrainConfig, processes: int = 1, progress: bool = True,
                          init_encoder_state: dict | None = None,
                          checkpoint_path: Path | str | None = None) -> PretrainResult:
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if min(cfg.batch_size, len(images)) % processes:
        raise ValueError(f"batch size {min(cfg.batch_size, len(images))} does not split over {processes} processes")
    if processes == 1:
        return pretrain(images, cfg, progress, init_encoder_state, checkpoint_path)
    with tempfile.TemporaryDirectory(prefix="dlvm-torchrun-") as tmp:
        job = Path(tmp)
        np.save(job / "images.npy", images)
        (job / "config.json").write_text(json.dumps(cfg.to_dict()))
        if init_encoder_state is not None:
            torch.save(init_encoder_state, job / "init.pt")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "components.training.launch", str(job), str(checkpoint_path or "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                            os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not (job / "result.pt").exists():
            raise RuntimeError(f"torchrun with {processes} processes failed (exit {done.returncode}); "
                               f"its output is above; rerun to resume from {checkpoint_path or 'the start'}")
        saved = torch.load(job / "result.pt", weights_only=True)
    return PretrainResult(saved["encoder_state"], saved["losses"], saved["seconds"], saved["images_per_s"],
                          saved["resumed_from_step"])


def main(job_dir: str, checkpoint_path: str) -> None:
    """One torchrun process: train, and rank 0 writes the result next to the inputs."""
    job = Path(job_dir)
    cfg = PretrainConfig.from_dict(json.loads((job / "config.json").read_text()))
    init = torch.load(job / "init.pt", weights_only=True) if (job / "init.pt").exists() else None
    result = pretrain(np.load(job / "images.npy"), cfg, True, init, checkpoint_path or None)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"encoder_state": result.encoder_state, "losses": result.losses, "seconds": result.seconds,
                    "images_per_s": result.images_per_s, "resumed_from_step": result.resumed_from_step},
                   job / "result.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
