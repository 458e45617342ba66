"""Inference pieces without services: decoding what the line sends (bad files reported,
never fatal), folder inputs, the ONNX export of a tiny classifier and its parity verdict."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from components.inference.export import (
    check_export,
    export_onnx,
    onnx_session,
    parity,
    run_onnx,
)
from components.inference.inputs import (
    UnreadableImage,
    decode_image_bytes,
    folder_source,
    iter_batches,
)
from components.inference.predict import (
    predict_arrays,
    prediction_rows,
    predictions_csv,
    read_predictions_csv,
)
from components.models.vit import ViTConfig
from components.training.adapt import Classifier


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_takes_gray_colour_and_16_bit_and_names_what_it_refuses():
    gray = np.tile(np.arange(40, dtype=np.uint8), (40, 1))
    assert decode_image_bytes(_png(gray), 16).shape == (16, 16)
    assert decode_image_bytes(_png(np.stack([gray] * 3, -1)), 16).dtype == np.uint8
    assert decode_image_bytes(_png((gray.astype(np.uint16) * 1000)), 16).max() > 200
    cases = {b"": "empty_file", b"hello, not an image": "not_an_image", _png(gray)[:60]: "truncated",
             _png(np.zeros((8, 8), np.uint8)): "too_small"}
    for data, reason in cases.items():
        with pytest.raises(UnreadableImage) as err:
            decode_image_bytes(data, 16)
        assert err.value.reason == reason or (reason == "truncated" and err.value.reason == "corrupt")


def test_folder_source_and_batches_report_bad_files_and_go_on(tmp_path):
    good = np.full((32, 32), 100, np.uint8)
    for name in ("a.png", "sub/b.png", ".hidden/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png(good))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "README.md").write_text("notes")
    source = folder_source(tmp_path)
    assert [i.name for i in source.items] == ["a.png", "broken.png", "sub/b.png"] and source.ignored == ["README.md"]
    batches = list(iter_batches(source.items, 16, batch_size=2))
    assert [b.names for b in batches] == [["a.png"], ["sub/b.png"]]
    assert [f["name"] for b in batches for f in b.failures] == ["broken.png"]
    with pytest.raises(NotADirectoryError):
        folder_source(tmp_path / "missing")


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    clf = Classifier(ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2), 3,
                     classes=["good", "crack", "dark"]).eval()
    with torch.no_grad():
        clf.head.weight.mul_(20)  # confident enough that the top-1 is not a coin flip
    return clf


@pytest.mark.parametrize("tta", ["none", "dihedral"])
def test_onnx_export_matches_torch_and_says_so(classifier, tta):
    """With test-time augmentation the graph averages over the same views dlvm's prediction does."""
    torch.set_num_threads(1)
    classifier.tta = tta
    images = np.random.default_rng(0).integers(0, 256, (30, 16, 16), dtype=np.uint8)
    data = export_onnx(classifier, "tiny:1")
    proba, emb = run_onnx(onnx_session(data), images)
    torch_proba, torch_emb = predict_arrays(classifier, images, device="cpu")
    assert np.abs(proba - torch_proba).max() < 1e-5 and np.abs(emb - torch_emb).max() < 1e-4
    checks = check_export(classifier, "onnx", data, images, labels=np.arange(30) % 3)
    assert checks["parity"]["passed"] and checks["test_split"]["n"] == 30
    assert set(checks["test_split"]["per_class"]) == {"good", "crack", "dark"}
    meta = onnx_session(data).get_modelmeta().custom_metadata_map
    assert meta["dlvm.model"] == "tiny:1" and '"crack"' in meta["dlvm.classes"]
    assert ("averaged over the dihedral views" in meta["dlvm.preprocessing"]) == (tta == "dihedral")
    classifier.tta = "none"


def test_parity_fails_on_a_different_model():
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert parity(a, a.astype(np.float32))["passed"]
    verdict = parity(a, a[::-1])
    assert not verdict["passed"] and verdict["top1_agreement"] == 0.0


def test_prediction_csv_round_trips(classifier):
    images = np.zeros((2, 16, 16), np.uint8)
    proba, _ = predict_arrays(classifier, images, device="cpu")
    rows = prediction_rows(["x.png", "y.png"], ["0" * 64, "1" * 64], proba, classifier.classes, "abc")
    back = read_predictions_csv(predictions_csv(rows, classifier.classes))
    assert [r["embedding_id"] for r in back] == ["abc:0", "abc:1"] and back[0]["class"] == rows[0]["class"]
    assert abs(back[1]["probabilities"]["dark"] - rows[1]["probabilities"]["dark"]) < 1e-6
