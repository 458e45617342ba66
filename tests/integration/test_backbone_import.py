"""`dlvm backbone import`: published generic ViT weights (timm names in .safetensors, Hugging
Face names in .pth) become a registered backbone that computes the same features as the
source; bad files end in one clear line and register nothing; `--alias baseline` and
`dlvm backbone baseline` move the alias through a recorded promotion event."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from clirun import dlvm, dlvm_env
from safetensors.torch import save_file
from sqlmodel import func, select

from components.models.checkpoint import load_checkpoint
from components.models.vit import VisionTransformer, ViTConfig
from components.registry import queries, views, writes
from components.registry.db import ensure_schema, session_scope
from components.registry.promotion import baseline_refs
from components.registry.tables import ModelVersion, PromotionEvent
from components.settings import Settings
from components.storage import open_store

# A small RGB ViT at the size we import to (no position-table resize), with a 10-class head
# that the import must drop.
SOURCE = ViTConfig(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3)
HF_NAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def source_model(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(SOURCE, num_classes=10)
    with torch.no_grad():  # not the init values: every tensor must really come from the file
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def hf_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face ViTForImageClassification names (q/k/v split)."""
    s = model.state_dict()
    hf = {"vit.embeddings.cls_token": s["cls_token"], "vit.embeddings.position_embeddings": s["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
          "vit.layernorm.weight": s["norm.weight"], "vit.layernorm.bias": s["norm.bias"],
          "vit.pooler.dense.weight": torch.zeros(48, 48), "vit.pooler.dense.bias": torch.zeros(48),
          "classifier.weight": s["head.weight"], "classifier.bias": s["head.bias"]}
    for i in range(SOURCE.depth):
        for ours, theirs in HF_NAMES.items():
            for kind in ("weight", "bias"):
                hf[f"vit.encoder.layer.{i}.{theirs}.{kind}"] = s[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            for part, t in zip(("query", "key", "value"), s[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                hf[f"vit.encoder.layer.{i}.attention.attention.{part}.{kind}"] = t
    return {k: v.clone().contiguous() for k, v in hf.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("backbone-import")
    timm_model, hf_model = source_model(1), source_model(2)
    timm_file, hf_file = root / "vit_tiny_timm.safetensors", root / "vit_hf.pth"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(timm_file))
    torch.save(hf_state(hf_model), hf_file)
    home = root / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api)
    settings = Settings(home=home)
    ensure_schema(settings)  # so that the two commands below can run side by side
    with ThreadPoolExecutor(2) as pool:
        timm_run = pool.submit(dlvm, env, "backbone", "import", str(timm_file), "--name", "generic-vit",
                               "--img-size", "32", "--heads", "3", "--alias", "baseline",
                               "--summary", str(root / "timm.json"))
        hf_run = pool.submit(dlvm, env, "backbone", "import", str(hf_file), "--name", "hf-vit",
                             "--img-size", "32", "--heads", "3")
        timm_out, hf_out = timm_run.result(), hf_run.result()
    return dict(root=root, env=env, settings=settings, timm=(timm_model, timm_file, timm_out),
                hf=(hf_model, hf_file, hf_out), summary=json.loads((root / "timm.json").read_text()))


def registered_features(settings: Settings, ref_name: str, x: torch.Tensor) -> tuple[torch.Tensor, ModelVersion]:
    with session_scope(settings) as session:
        version = queries.latest_model_version(session, ref_name)
    checkpoint = load_checkpoint(open_store(settings).get_bytes(version.artifact_uri, version.sha256))
    assert checkpoint["kind"] == "backbone"
    model = VisionTransformer(ViTConfig.from_dict(checkpoint["vit_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        return model.eval().forward_features(x), version


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("which, name", [("timm", "generic-vit"), ("hf", "hf-vit")])
def test_imported_backbone_gives_the_source_models_features(world, which, name):
    source, path, out = world[which]
    assert f"registered {name} v1 from {path.name}" in out.stdout
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    features, version = registered_features(world["settings"], name, x)
    with torch.no_grad():  # a gray image is the same image in R, G and B: summed kernels see the same
        expected = source.forward_features(x.repeat(1, 3, 1, 1))
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)
    assert version.dataset_version_id is None and version.label_snapshot_id is None and version.run_id
    source_params = version.params["source"]
    assert source_params["file"] == path.name and source_params["sha256"] == sha256(path)
    report = version.params["load_report"]
    assert "patch_embed.proj.weight: summed 3 input channels to 1" in report["adapted"]
    dropped = {"timm": {"head.weight", "head.bias"},
               "hf": {"classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"}}[which]
    assert set(report["dropped"]) == dropped and "blocks.1.attn.qkv.weight" in report["loaded"]
    assert version.params["vit_config"]["patch_size"] == 8  # read off the file


def test_alias_baseline_is_a_recorded_promotion_event(world):
    with session_scope(world["settings"]) as session:
        detail = views.model_detail(session, "generic-vit")
        assert detail["kind"] == "backbone" and detail["aliases"] == {"baseline": 1}
        (event,) = detail["promotions"]
        assert event["alias"] == "baseline" and event["decision"] == "promoted" and event["new_version"] == 1
        assert event["evidence"]["designation"] == "generic baseline"
        assert event["evidence"]["source"]["sha256"] == sha256(world["timm"][1])
        assert views.model_detail(session, "hf-vit")["aliases"] == {}
        assert baseline_refs(session) == ["generic-vit:1"]  # what `evaluate` adds when no backbone is named
    assert world["summary"]["baseline_event_id"] == event["id"]

    out = dlvm(world["env"], "backbone", "baseline", "hf-vit:1", "--reason", "HF checkpoint as reference")
    assert "hf-vit:1 -> baseline" in out.stdout
    with session_scope(world["settings"]) as session:
        assert baseline_refs(session) == ["generic-vit:1", "hf-vit:1"]
        (event,) = views.model_detail(session, "hf-vit")["promotions"]
        assert event["reason"] == "HF checkpoint as reference" and event["evidence"]["ref"] == "hf-vit:1"


def count_rows(settings: Settings) -> tuple[int, int]:
    with session_scope(settings) as session:
        return (session.exec(select(func.count()).select_from(ModelVersion)).one(),
                session.exec(select(func.count()).select_from(PromotionEvent)).one())


def test_bad_files_fail_in_one_line_and_register_nothing(world):
    root, env, settings = world["root"], world["env"], world["settings"]
    junk = root / "junk.safetensors"
    junk.write_bytes(b"these are not weights" * 10)
    cases = [
        # a width-48, 2-block file imported as ViT-Ti (192 wide, 12 blocks)
        ([str(world["timm"][1]), "--arch", "tiny"],
         "shape mismatch in vit_tiny_timm.safetensors: cls_token: file (1, 1, 48) vs model (1, 1, 192)"),
        ([str(junk), "--arch", "tiny"], "cannot read junk.safetensors as safetensors"),
        ([str(root / "missing.pth"), "--arch", "tiny"], "missing.pth does not exist"),
    ]
    before = count_rows(settings)
    with ThreadPoolExecutor(len(cases)) as pool:
        outs = list(pool.map(lambda args: dlvm(env, "backbone", "import", *args, "--name", "broken",
                                               "--alias", "baseline", check=False), [args for args, _ in cases]))
    for (args, message), out in zip(cases, outs):
        assert out.returncode == 1, out.stdout + out.stderr
        errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], out.stdout
        assert "Traceback" not in out.stdout
    assert count_rows(settings) == before
    with session_scope(settings) as session:
        with pytest.raises(queries.NotFound):
            queries.get_model(session, "broken")


def test_designating_baselines_moves_the_alias_and_rolls_back_like_a_promotion(dlvm_home):
    from components.registry.promotion import (
        PromotionError,
        designate_baseline,
        rollback,
    )

    with session_scope(dlvm_home) as session:
        writes.get_or_create_model(session, "generic-mae", kind="backbone")
        writes.get_or_create_model(session, "x-classifier", kind="classifier")
        v1, v2 = (writes.add_model_version(session, "generic-mae", artifact_uri=f"file:///v{i}", sha256="0" * 64)
                  for i in (1, 2))
        clf = writes.add_model_version(session, "x-classifier", artifact_uri="file:///c", sha256="0" * 64)
        designate_baseline(session, v1.id, actor="pipeline", evidence={"source": "/data/generic"})
        designate_baseline(session, v2.id, actor="pipeline")
        assert baseline_refs(session) == ["generic-mae:2"]
        with pytest.raises(PromotionError, match="already holds"):
            designate_baseline(session, v2.id, actor="pipeline")
        with pytest.raises(PromotionError, match="only backbones"):
            designate_baseline(session, clf.id, actor="cli")
        rollback(session, "generic-mae", "baseline", actor="cli", reason="v2 was trained on the wrong folder")
        assert baseline_refs(session) == ["generic-mae:1"]
        decisions = [e["decision"] for e in views.model_detail(session, "generic-mae")["promotions"]]
        assert decisions == ["rollback", "promoted", "promoted"]
