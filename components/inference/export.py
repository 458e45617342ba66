"""Export a classifier to ONNX (and optionally TorchScript) with its preprocessing, and
check that the exported file predicts what the torch model predicts.

The exported graph takes what a plain image library gives after decoding and resizing:
``image``, uint8 ``[N, H, W]`` grayscale at the model's input size. Inside the graph:
uint8 -> float, the platform's gray-level normalization, one channel, the classifier's
forward pass and softmax, averaged over the classifier's test-time views (flips, quarter
turns) when it has them, as dlvm's own prediction does. Outputs: ``probabilities`` float32 ``[N, C]`` and ``embedding``
float32 ``[N, D]`` (the pooled features, for drift monitoring on the line). Decoding and
resizing stay outside (they differ per image library); the ONNX metadata says exactly
how dlvm does them (``dlvm.preprocessing``), and docs/snippets/onnx_predict.py does the same
with Pillow.
"""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import torch
from torch import nn

from components.inference.inputs import model_input_size
from components.inference.predict import per_class_report, predict_arrays
from components.models.vit import PIXEL_MEAN, PIXEL_STD, normalize_uint8
from components.training.adapt import Classifier, pooled_views

OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it
# The parity check's tolerance: float32 kernels differ in summation order, not more.
PARITY_MAX_ABS_DIFF = 1e-4
PARITY_MIN_TOP1_AGREEMENT = 0.999
INPUT_NAME, OUTPUT_NAMES = "image", ("probabilities", "embedding")


class ExportedClassifier(nn.Module):
    """uint8 images ``[N, H, W]`` -> (probabilities ``[N, C]``, pooled features ``[N, D]``):
    the same normalization and forward pass as dlvm's own prediction
    (components.training.adapt.predict_with_features), test-time views included."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_views(self.classifier.encoder, normalize_uint8(images), self.classifier.tta)  # [V, N, D]
        # [V, N, D] as it is (the head acts on the last axis): reshaping by pooled.shape would bake the
        # traced batch size into the graph wherever the tracer cannot follow a shape (a concatenation)
        logits = self.classifier.logits_from_pooled(pooled)
        return torch.softmax(logits.float(), dim=-1).mean(0), pooled.float().mean(0)


def preprocessing(classifier: Classifier) -> dict:
    """How an image becomes the graph's input, as dlvm does it (components/data/images.py)."""
    size = model_input_size(classifier)
    return {"input_size": [size, size], "dtype": "uint8", "layout": "N,H,W",
            "color": "grayscale: 8-bit as is; RGB/RGBA/P/LA by luminance (ITU-R 601-2, Pillow convert('L')); "
                     "16-bit by its own 1st-99th percentile",
            "resize": "whole image to input_size, aspect not kept, Pillow bicubic with reducing_gap=3.0; "
                      "EXIF orientation applied first",
            "in_graph": f"x / 255, (x - {PIXEL_MEAN}) / {PIXEL_STD}, 1 channel, softmax"
                        + (f", averaged over the {classifier.tta} views" if classifier.tta != "none" else "")}


def export_onnx(classifier: Classifier, model_ref: str, opset: int = OPSET) -> bytes:
    """The ONNX file (bytes) of ``classifier`` with a dynamic batch axis and dlvm metadata."""
    import onnx

    size = model_input_size(classifier)
    module = ExportedClassifier(classifier.cpu()).eval()
    example = torch.zeros((2, size, size), dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: the batch axis is checked below
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}})
    model = onnx.load_from_string(buf.getvalue())
    meta = {"dlvm.model": model_ref, "dlvm.classes": json.dumps(list(classifier.classes)),
            "dlvm.preprocessing": json.dumps(preprocessing(classifier))}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "dlvm"
    model.doc_string = f"{model_ref}: uint8 [N,{size},{size}] grayscale -> probabilities over " \
                       f"{', '.join(classifier.classes)}"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_torchscript(classifier: Classifier) -> bytes:
    size = model_input_size(classifier)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ExportedClassifier(classifier.cpu()).eval(),
                                 torch.zeros((2, size, size), dtype=torch.uint8))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def onnx_session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # predictable on shared cores; the parity check is not a benchmark
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    probs, embs = [], []
    for i in range(0, len(images), batch_size):
        p, e = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])})
        probs.append(p)
        embs.append(e)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(embs)


def run_torchscript(data: bytes, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    probs, embs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            p, e = module(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
            probs.append(p.numpy())
            embs.append(e.numpy())
    return np.concatenate(probs), np.concatenate(embs)


def parity(reference_proba: np.ndarray, exported_proba: np.ndarray) -> dict:
    """The parity verdict: max |difference| of probabilities and top-1 agreement."""
    if reference_proba.shape != exported_proba.shape or len(reference_proba) == 0:
        raise ValueError(f"parity needs two non-empty probability arrays of one shape, got "
                         f"{reference_proba.shape} and {exported_proba.shape}")
    diff = float(np.abs(reference_proba.astype(np.float64) - exported_proba).max())
    agreement = float((reference_proba.argmax(1) == exported_proba.argmax(1)).mean())
    return {"n_images": int(len(reference_proba)), "max_abs_diff": diff, "top1_agreement": agreement,
            "max_abs_diff_allowed": PARITY_MAX_ABS_DIFF, "top1_agreement_required": PARITY_MIN_TOP1_AGREEMENT,
            "passed": bool(diff <= PARITY_MAX_ABS_DIFF and agreement >= PARITY_MIN_TOP1_AGREEMENT)}


def check_export(classifier: Classifier, kind: str, data: bytes, images: np.ndarray,
                 labels: np.ndarray | None = None) -> dict:
    """Parity of the exported file (run by onnxruntime, or TorchScript) against the torch
    model on ``images`` (the test split); with ``labels``, the exported model's per-class recall."""
    torch_proba, _ = predict_arrays(classifier, images, device="cpu")
    if kind == "onnx":
        import onnxruntime as ort
        exported, _ = run_onnx(onnx_session(data), images)
        runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    elif kind == "torchscript":
        exported, _ = run_torchscript(data, images)
        runtime = f"torch.jit {torch.__version__}"
    else:
        raise ValueError(f"unknown export kind {kind!r}")
    out = {"parity": {**parity(torch_proba, exported), "runtime": runtime, "against": f"torch {torch.__version__}"}}
    if labels is not None:
        out["test_split"] = per_class_report(labels, exported, list(classifier.classes))
    return out
