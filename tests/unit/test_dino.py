"""Self-distillation (DINO): shapes, the frozen EMA teacher, centering, no collapse, determinism."""
from __future__ import annotations

import math

import pytest
import torch

from components.models.dino import (
    SelfDistillation,
    sinkhorn_knopp,
    teacher_momentum_at,
    teacher_temp_at,
)
from components.models.vit import VisionTransformer, ViTConfig
from components.training.augment import Augment, augment_batch
from components.training.optim import param_groups


def tiny_cfg() -> ViTConfig:
    return ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg")


def tiny_model(seed: int = 0, **kw) -> SelfDistillation:
    torch.manual_seed(seed)
    return SelfDistillation(tiny_cfg(), **{"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32, **kw})


def views(n: int = 2, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 32, 32, generator=g) for _ in range(n)]


def synthetic_images(n: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 32, 32]: bright/dark stripes at random angles, enough structure to distill."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = torch.rand(n, 1, 1, generator=g) * 3.14
    freq = 0.2 + 0.6 * torch.rand(n, 1, 1, generator=g)
    img = torch.sin(freq * (xx * angle.cos() + yy * angle.sin())) * 100 + 128
    return (img + 10 * torch.randn(n, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)


def optimizer(model: SelfDistillation, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, 0.04), lr=lr)


def test_loss_is_finite_scalar_and_encoder_is_a_plain_vit():
    model = tiny_model()
    loss = model(views(3), teacher_temp=0.04)
    assert loss.shape == () and torch.isfinite(loss)
    assert isinstance(model.encoder, VisionTransformer)
    plain = VisionTransformer(tiny_cfg())
    plain.load_state_dict(model.encoder.state_dict())  # strict: same keys and shapes
    with pytest.raises(ValueError):
        model(views(1), teacher_temp=0.04)


def test_masked_student_runs():
    model = tiny_model(mask_ratio=0.5)
    assert torch.isfinite(model(views(2), teacher_temp=0.04, generator=torch.Generator().manual_seed(0)))


def test_teacher_gets_no_gradient_and_is_not_optimized():
    model = tiny_model()
    teacher = [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    assert teacher and all(not p.requires_grad for p in teacher)
    in_optimizer = {id(p) for g in param_groups(model, 0.04) for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher}
    before = [p.clone() for p in teacher]
    opt = optimizer(model)
    loss = model(views(), teacher_temp=0.04)
    loss.backward()
    assert all(p.grad is None for p in teacher)
    assert model.encoder.patch_embed.proj.weight.grad is not None
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher))  # only update_teacher moves it


def test_update_teacher_is_an_ema_and_momentum_one_is_a_no_op():
    model = tiny_model()
    with torch.no_grad():
        model.encoder.blocks[0].mlp.fc1.weight.add_(1.0)  # student and teacher now differ
    s = model.encoder.blocks[0].mlp.fc1.weight.clone()
    t = model.teacher_encoder.blocks[0].mlp.fc1.weight.clone()
    model.update_teacher(1.0)
    assert torch.equal(model.teacher_encoder.blocks[0].mlp.fc1.weight, t)
    model.update_teacher(0.9)
    torch.testing.assert_close(model.teacher_encoder.blocks[0].mlp.fc1.weight, 0.9 * t + 0.1 * s)
    assert torch.equal(model.encoder.blocks[0].mlp.fc1.weight, s)  # the student is untouched


def test_center_tracks_the_teacher_output_in_training_only():
    model = tiny_model(center_momentum=0.9)
    v = views()
    assert torch.count_nonzero(model.center) == 0
    with torch.no_grad():
        expected = 0.1 * model.teacher_head(model.teacher_encoder.forward_pool(torch.cat(v))).mean(0, keepdim=True)
    model(v, teacher_temp=0.04)
    torch.testing.assert_close(model.center, expected)
    model.eval()
    center = model.center.clone()
    model(v, teacher_temp=0.04)
    assert torch.equal(model.center, center)


def test_schedules():
    assert teacher_temp_at(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temp_at(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temp_at(50, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert teacher_momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert teacher_momentum_at(100, 100, 0.99) == pytest.approx(1.0)


def train_tiny(seed: int, steps: int = 25) -> tuple[list[float], SelfDistillation]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = tiny_model(seed).train()
    opt = optimizer(model, 5e-4)
    images = synthetic_images()
    aug = Augment(rot90=True)
    losses = []
    for step in range(steps):
        v = [augment_batch(images, aug, gen) for _ in range(2)]
        loss = model(v, teacher_temp=0.04, generator=gen)  # a cold teacher: the warm one drifts to flat targets here
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher(teacher_momentum_at(step, steps, 0.99))
        losses.append(loss.item())
    return losses, model


def test_training_does_not_collapse():
    # DINO's loss is not monotone: it starts low (student and teacher agree on one
    # prototype), rises while the center catches up, and only then falls. What must hold is
    # that neither collapse happens: the same flat target for every image (loss = log K)
    # or the same prototype for every image.
    losses, model = train_tiny(0)
    K = model.center.shape[1]
    assert max(losses) < 0.98 * math.log(K) and losses[-1] < 0.95 * math.log(K)
    with torch.no_grad():
        feats = model.teacher_encoder.eval().forward_pool(augment_batch(synthetic_images(seed=1), Augment.none(), torch.Generator()))
        probs = torch.softmax((model.teacher_head(feats) - model.center) / 0.04, dim=-1)
    assert feats.std(dim=0).mean() > 0.05  # images keep distinct features
    assert probs.max(dim=-1).values.mean() > 3 / K  # targets are not flat
    assert probs.argmax(dim=-1).unique().numel() > 2  # nor one prototype for every image


def test_deterministic_on_cpu():
    a, ma = train_tiny(3, steps=4)
    b, mb = train_tiny(3, steps=4)
    assert a == b
    for (k, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(x, y), k


def test_sinkhorn_targets_are_balanced_and_koleo_variant_runs():
    scores = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)) / 0.5
    q = sinkhorn_knopp(scores, iters=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))  # each sample: a distribution
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 2.0), atol=1e-3, rtol=1e-3)  # prototypes used equally
    model = tiny_model(centering="sinkhorn", koleo_weight=0.1)
    loss = model(views(), teacher_temp=0.04)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        tiny_model(centering="median")
