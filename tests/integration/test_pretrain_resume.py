"""Pretraining survives SIGKILL: killed mid-run and resumed from its checkpoint, it ends with
exactly the weights of an uninterrupted run (CPU, fixed seed; every method, sequential included). Also: resume refuses a
checkpoint written for another config or other images, and two processes under torchrun
(gloo on CPU) train one model."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.models.checkpoint import load_checkpoint
from components.training.launch import pretrain_in_processes
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import demo_dino_pretrain, tiny_pretrain

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 200, 10

# One pretraining process: images, checkpoint path and output path from argv.
WORKER = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from components.training.launch import pretrain_in_processes
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import tiny_cnn_pretrain, tiny_pretrain
method, steps, every = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
init = None
if method.endswith("-resnet"):  # a joint-embedding method on the convolutional family
    cfg = tiny_cnn_pretrain(method.removesuffix("-resnet"), steps=steps, checkpoint_every=every)
elif method == "sequential":  # next-token prediction over a (seeded, untrained) tokenizer's tokens
    import dataclasses
    from components.data.images import Preprocess
    from components.models.tokenizer import TokenizerConfig, VisualTokenizer
    from components.training.recipes import sequential_recipe
    tok = TokenizerConfig(32, channels=(8, 16), levels=(5, 5, 5))
    torch.manual_seed(0)
    init = {f"tokenizer.{k}": v for k, v in VisualTokenizer(tok).state_dict().items()}
    cfg = dataclasses.replace(sequential_recipe("tiny", tok, Preprocess(32)).pretrain, steps=steps,
                              checkpoint_every=every)
else:
    cfg = tiny_pretrain(method=method, steps=steps, checkpoint_every=every)
res = pretrain(np.load(sys.argv[1]), cfg, progress=False, init_encoder_state=init,
               checkpoint_path=sys.argv[2] or None)
torch.save({"state": res.encoder_state, "losses": res.losses, "resumed_from": res.resumed_from_step}, sys.argv[3])
"""


def worker(images: Path, ckpt: str, out: Path, method: str) -> list[str]:
    return [sys.executable, "-c", WORKER, str(images), ckpt, str(out), method, str(STEPS), str(EVERY)]


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npy"
    np.save(path, rng.integers(0, 256, (48, 32, 32), dtype=np.uint8))
    return path


@pytest.mark.parametrize("method", ["mae", "dino", "simclr-resnet", "vicreg", "sequential"])
def test_sigkilled_pretraining_resumes_to_identical_weights(tmp_path, images, method):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reference = tmp_path / "reference.pt"
    subprocess.run(worker(images, "", reference, method), env=env, check=True, cwd=ROOT, timeout=300)

    ckpt, out = tmp_path / "resume.pt", tmp_path / "resumed.pt"
    proc = subprocess.Popen(worker(images, str(ckpt), out, method), env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ckpt.exists() or load_checkpoint(ckpt.read_bytes())["step"] < 3 * EVERY:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not out.exists()
    killed_at = load_checkpoint(ckpt.read_bytes())["step"]
    assert 0 < killed_at < STEPS

    subprocess.run(worker(images, str(ckpt), out, method), env=env, check=True, cwd=ROOT, timeout=300)
    ref, res = torch.load(reference), torch.load(out)
    assert res["resumed_from"] >= killed_at
    assert res["losses"] == ref["losses"]
    assert res["state"].keys() == ref["state"].keys()
    different = [k for k in ref["state"] if not torch.equal(ref["state"][k], res["state"][k])]
    assert not different, f"resumed run differs in {different}"


# The worker, with a marker file touched when step STOP_AT starts (so the test knows the
# loop is running) and no periodic checkpoints: any checkpoint is the one written on the signal.
# Step STOP_AT then waits until the loop has noted the signal: on a loaded machine the test
# process may otherwise be scheduled only after the run has finished all its steps.
STOP_AT = 40
MARKED_WORKER = f"""
import pathlib, signal, sys, time
# Ctrl-C as a terminal-started run sees it: under pytest-xdist the worker inherits SIGINT
# ignored, and a process that ignores SIGINT rightly keeps running after the checkpoint.
signal.signal(signal.SIGINT, signal.default_int_handler)
import components.training.pretrain as P
real_lr = P.cosine_lr
def marking_lr(step, *rest):
    if step == {STOP_AT}:
        pathlib.Path(sys.argv[3] + ".started").touch()
        stop = signal.getsignal(signal.SIGTERM).__self__  # the loop's PendingStop (deferred_signals)
        deadline = time.monotonic() + 120
        while not stop.pending and time.monotonic() < deadline:
            time.sleep(0.01)
    return real_lr(step, *rest)
P.cosine_lr = marking_lr
""" + WORKER


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_termination_signal_checkpoints_between_steps_and_the_rerun_resumes_exactly(tmp_path, images, signum):
    """Issue 16, item 9: SIGTERM (default action here; Prefect's TerminationSignal under the CLI)
    and Ctrl-C stop the loop at the next step boundary, after the resume checkpoint is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    method, never = "simclr-resnet", str(10 ** 6)
    reference, ckpt, out = tmp_path / "reference.pt", tmp_path / "resume.pt", tmp_path / "resumed.pt"
    args = [str(images), str(ckpt), str(out), method, str(STEPS), never]
    proc = subprocess.Popen([sys.executable, "-c", MARKED_WORKER, *args], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    started = Path(str(out) + ".started")
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the run never reached the marked step"
        time.sleep(0.01)
    proc.send_signal(signum)
    rc, stderr = proc.wait(timeout=60), proc.stderr.read()
    assert rc != 0 and not out.exists()
    assert rc == -signal.SIGTERM if signum == signal.SIGTERM else "KeyboardInterrupt" in stderr
    assert "resume checkpoint written" in stderr
    stopped_at = load_checkpoint(ckpt.read_bytes())["step"]
    assert STOP_AT < stopped_at < STEPS  # written on the signal: periodic checkpoints are off

    subprocess.run([sys.executable, "-c", WORKER, str(images), "", str(reference), method, str(STEPS), never],
                   env=env, check=True, cwd=ROOT, timeout=300)

    subprocess.run([sys.executable, "-c", WORKER, *args], env=env, check=True, cwd=ROOT, timeout=300)
    ref, res = torch.load(reference), torch.load(out)
    assert res["resumed_from"] == stopped_at and res["losses"] == ref["losses"]
    assert all(torch.equal(ref["state"][k], res["state"][k]) for k in ref["state"])


def test_resume_refuses_other_config_other_images_and_torn_files(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (24, 32, 32), dtype=np.uint8)
    ckpt = tmp_path / "resume.pt"
    cfg = tiny_pretrain(steps=12, checkpoint_every=4)
    pretrain(imgs, dataclasses.replace(cfg, max_seconds=0.0, steps=12), progress=False, checkpoint_path=ckpt)
    assert not ckpt.exists()  # stopped after one step: nothing to resume from yet
    full = pretrain(imgs, cfg, progress=False, checkpoint_path=ckpt)
    assert ckpt.exists() and load_checkpoint(ckpt.read_bytes())["step"] == 8
    saved = ckpt.read_bytes()

    with pytest.raises(ValueError, match="different config.*lr"):
        pretrain(imgs, dataclasses.replace(cfg, lr=1e-3), progress=False, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="other images"):
        pretrain(imgs[::-1].copy(), cfg, progress=False, checkpoint_path=ckpt)
    ckpt.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(ValueError, match="unreadable"):
        pretrain(imgs, cfg, progress=False, checkpoint_path=ckpt)

    # runtime knobs may change between the crash and the resume
    ckpt.write_bytes(saved)
    again = pretrain(imgs, dataclasses.replace(cfg, checkpoint_every=5, max_seconds=1e9), progress=False,
                     checkpoint_path=ckpt)
    assert again.resumed_from_step == 8 and again.losses == full.losses


def test_two_processes_under_torchrun_train_one_model(images):
    data = np.load(images)
    cfg = tiny_pretrain(steps=30)
    ddp = pretrain_in_processes(data, cfg, processes=2, progress=False)
    single = pretrain(data, cfg, progress=False)
    assert len(ddp.losses) == 30 and np.mean(ddp.losses[-5:]) < np.mean(ddp.losses[:5])
    assert ddp.encoder_state.keys() == single.encoder_state.keys()
    # Same data order and schedule, different augmentation/masking draws per process: close, not equal.
    assert abs(np.mean(ddp.losses[-5:]) - np.mean(single.losses[-5:])) < 0.25
    with pytest.raises(ValueError, match="does not split over 2 processes"):
        pretrain_in_processes(data, tiny_pretrain(steps=2, batch_size=15), processes=2, progress=False)


def test_each_method_has_its_preset_and_unknown_ones_are_named():
    from components.training.recipes import pretrain_config

    assert pretrain_config("demo").method == "mae"
    dino = pretrain_config("demo", method="dino", seed=3, steps=7)
    assert (dino.method, dino.seed, dino.steps, dino.dino_mask_ratio) == ("dino", 3, 7, 0.5)
    assert pretrain_config("tiny", method="dino").vit == tiny_pretrain().vit
    with pytest.raises(ValueError, match="recipe 'demo' has no 'byol' pretraining"):
        pretrain_config("demo", method="byol")
    with pytest.raises(ValueError, match="unknown recipe 'to_dict'"):
        pretrain_config("to_dict")
    with pytest.raises(ValueError, match="pretraining method must be one of mae, dino, simclr, vicreg"):
        PretrainConfig(method="byol")
    cfg = demo_dino_pretrain()
    assert PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_flow_resume_checkpoint_is_keyed_by_data_recipe_and_starting_weights(tmp_path):
    from components.training.resume import resume_path

    cfg = tiny_pretrain()
    same = resume_path(tmp_path, 1, dataclasses.replace(cfg, device="cuda", compile=True, max_seconds=5), None)
    assert resume_path(tmp_path, 1, cfg, None) == same  # runtime knobs do not start a new run
    assert same.parent == tmp_path / "resume"
    others = {resume_path(tmp_path, 2, cfg, None), resume_path(tmp_path, 1, dataclasses.replace(cfg, lr=1e-4), None),
              resume_path(tmp_path, 1, cfg, "ab" * 32)}
    assert same not in others and len(others) == 3
