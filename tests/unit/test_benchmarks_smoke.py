"""Smoke test of benchmarks/pretrain_throughput.py: it runs the real pretraining loop, and its
FLOP counter agrees with a count done by hand (so a broken counter cannot inflate MFU)."""
from __future__ import annotations

import json

import pytest

from benchmarks.pretrain_throughput import main


def mae_flops(img: int, patch: int, dim: int, depth: int, dec_dim: int, dec_depth: int, batch: int,
              mask_ratio: float = 0.75) -> float:
    """Forward + backward FLOPs of an MAE step, from the shapes (multiply-add = 2 FLOPs).

    Backward costs twice the forward, except the patch embedding, whose input (the image)
    needs no gradient: only its weight gradient, once the forward.
    """
    n = (img // patch) ** 2
    enc_tokens = round(n * (1 - mask_ratio)) + 1  # visible patches + cls
    dec_tokens = n + 1

    def block(tokens: int, d: int) -> float:  # qkv, proj, mlp (ratio 4) + attention QK^T and AV
        return 2 * tokens * 12 * d * d + 4 * tokens * tokens * d

    patch_embed = 2 * n * patch * patch * dim
    rest = (depth * block(enc_tokens, dim) + 2 * enc_tokens * dim * dec_dim
            + dec_depth * block(dec_tokens, dec_dim) + 2 * dec_tokens * dec_dim * patch * patch)
    return batch * (2 * patch_embed + 3 * rest)


def test_pretrain_throughput_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = main(["--device", "cpu", "--models", "ti", "--img-sizes", "32", "--batch-size", "8",
                   "--warmup", "1", "--steps", "2", "--threads", "1", "--no-progress", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    (row,) = rows
    assert (row["model"], row["img_px"], row["patch"], row["batch"], row["device"]) == ("ViT-Ti", 32, 8, 8, "cpu")
    assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["loader_ms"] > 0
    assert row["mfu"] is None  # no accelerator peak on CPU unless --peak-tflops is given

    expected = mae_flops(32, 8, dim=192, depth=12, dec_dim=128, dec_depth=2, batch=8)
    assert row["flops_per_step"] == pytest.approx(expected, rel=0.02)
    # and the crude rule: about 6 x encoder parameters x visible tokens per image (ViT-Ti: 5.5 M)
    assert 0.5 < row["flops_per_step"] / (6 * 5.5e6 * 5 * 8) < 2


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        main(["--device", "cuda"])


def test_pretrain_throughput_pairs_methods_with_families_and_times_a_bare_loop(tmp_path):
    result = main(["--device", "cpu", "--models", "rn-tiny,ti", "--methods", "simclr,mae", "--img-sizes", "32",
                   "--batch-size", "8", "--warmup", "1", "--steps", "2", "--threads", "1", "--no-progress"])
    pairs = [(r["method"], r["model"]) for r in result["rows"]]
    assert pairs == [("simclr", "ResNet-tiny"), ("simclr", "ViT-Ti"), ("mae", "ViT-Ti")]  # no MAE on a ResNet
    for row in result["rows"]:
        assert row["bare_step_ms"] > 0 and row["vs_bare"] == pytest.approx(row["step_ms"] / row["bare_step_ms"])
        assert row["threads"] == 1 and row["flops_per_step"] > 0


def test_label_export_scale_smoke(tmp_path):
    from benchmarks.label_export_scale import main as export_scale

    result = export_scale(["--tasks", "300", "--images", "20", "--json", str(tmp_path / "r.json")])
    assert result["labeled"] == 20 and result["issues"] == {"unknown_image": 280}
    assert json.loads((tmp_path / "r.json").read_text())["tasks"] == 300
