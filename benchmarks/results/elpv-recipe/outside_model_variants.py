"""The two input/target variants measured before they were built into the product (2026-11-30): STD=1 standardizes each image (outside the model, by patching the normalization adapt and augment use; now ResNetConfig.input_norm="image"), SORD=T trains on soft ordinal targets (softmax of -(k - y)^2 / T over the ordered classes). Usage: STD=1 [SORD=0.5] python benchmarks/results/elpv-recipe/outside_model_variants.py <elpv_recipe arguments>"""
import os, sys, types
import torch
import torch.nn.functional as F
import components  # noqa
import components.training.adapt as A
import components.training.augment as G
from components.models.vit import normalize_uint8 as base

if os.environ.get("STD"):
    def per_image(images):
        x = images if images.dim() == 4 else images.unsqueeze(1)
        x = x.float() / 255.0
        m = x.mean(dim=(2, 3), keepdim=True); s = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return (x - m) / s
    A.normalize_uint8 = per_image
    G.normalize_uint8 = per_image

if os.environ.get("SORD"):
    t = float(os.environ["SORD"])
    def ce(logits, target, weight=None, label_smoothing=0.0, **kw):
        if target.dtype != torch.long:
            return F.cross_entropy(logits, target, weight=weight, **kw)
        k = logits.shape[1]
        levels = torch.arange(k, device=logits.device).float()
        d = (levels[None, :] - target[:, None].float()) ** 2
        q = torch.softmax(-d / t, dim=1)
        return -(q * F.log_softmax(logits, dim=1)).sum(1).mean()
    fake = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("_")})
    fake.cross_entropy = ce
    A.F = fake

from benchmarks.elpv_recipe import main
main(sys.argv[1:])
