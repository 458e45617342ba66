"""One prediction interface for every model kind that predicts (components/inference/
predictors.py): an anomaly model's score and decision at its threshold and its heat-map
files, a detector's boxes above a minimum score mapped back to the original image, the
classifier's table unchanged, the whole-folder loop shared by all kinds, and a one-line
refusal for kinds that do not predict; the evaluation drawings' shared grid."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from components.anomaly.patchcore import PatchCoreConfig, fit_patchcore
from components.evaluation.figures import figure_png, image_grid
from components.inference.inputs import folder_source
from components.inference.predict import predict_source
from components.inference.predictors import (
    UnsupportedKind,
    heatmap_file,
    predictor_for,
    write_heatmaps,
)
from components.models.backbones import build_backbone
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.detection import CenterNet, DetectorConfig, detector_state
from components.models.resnet import ResNet, ResNetConfig
from components.training.detect import DetectConfig, predict_boxes

SIZE = 32


def striped(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(((np.arange(SIZE) // 4) % 2) * 160 + 40, (n, SIZE, SIZE))
    return np.clip(base + rng.integers(-15, 15, size=(n, SIZE, SIZE)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def anomaly_state() -> dict:
    cfg = ResNetConfig.tiny(img_size=SIZE)
    model = fit_patchcore(build_backbone(cfg, seed=0), cfg, striped(8, 1),
                          PatchCoreConfig(coreset_fraction=0.25, blur_sigma=1.0))
    model.calibrate(striped(10, 2), false_alarm_rate=0.1)
    return load_checkpoint(save_checkpoint(model.state()))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_anomaly_predictions_decide_at_the_threshold_and_write_heat_maps(anomaly_state, tmp_path):
    predictor = predictor_for("anomaly", anomaly_state, "pcb-anomaly:1")
    assert predictor.kind == "anomaly" and predictor.input_size == SIZE
    assert predictor.threshold == anomaly_state["threshold"] and predictor.false_alarm_rate == 0.1
    defective = striped(1, 3)[0].copy()
    defective[10:18, 10:18] = 255
    folder = tmp_path / "line"
    (folder / "shift2").mkdir(parents=True)
    (folder / "good.png").write_bytes(_png(striped(1, 4)[0]))
    (folder / "shift2" / "bad.png").write_bytes(_png(defective))
    (folder / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "heat"
    written = []
    result = predict_source(predictor, folder_source(folder), batch_size=1, progress=False,
                            on_batch=lambda n, i, o: written.extend(write_heatmaps(out_dir, predictor, n, i, o)))
    assert result.names == ["good.png", "shift2/bad.png"] and result.ignored == ["notes.txt"]
    good, bad = result.records
    assert bad["score"] > good["score"]  # the bright square is far from every good patch
    assert bad["anomalous"] and not good["anomalous"]
    for r in result.records:
        assert r["anomalous"] == (r["score"] > predictor.threshold)
    assert result.embeddings is None and result.proba is None  # no drift features for this kind
    assert written == [out_dir / "good.heatmap.png", out_dir / "shift2" / "bad.heatmap.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    rows = list(csv.DictReader(io.StringIO(predictor.table(result.names, result.sha256, result.records, "x").decode())))
    assert [r["decision"] for r in rows] == ["normal", "anomalous"]
    assert float(rows[1]["score"]) == pytest.approx(bad["score"], rel=1e-5) and rows[0]["false_alarm_rate"] == "0.1"
    assert predictor.counts(result.records) == {"anomalous": 1, "normal": 1}


def test_heat_map_files_stay_inside_their_folder(tmp_path):
    assert heatmap_file(tmp_path, "a/b/c.tif") == tmp_path / "a" / "b" / "c.heatmap.png"
    assert heatmap_file(tmp_path, "../../etc/x.png") == tmp_path / "etc" / "x.heatmap.png"
    assert heatmap_file(tmp_path, "/abs/y.png") == tmp_path / "abs" / "y.heatmap.png"


@pytest.fixture(scope="module")
def detector_state_dict() -> dict:
    model = CenterNet(ResNet(ResNetConfig.tiny(64)), DetectorConfig(num_classes=2)).eval()
    decoding = {"max_detections": 20, "score_threshold": 0.01, "nms_iou": 0.6, "report_score_threshold": 0.3}
    return load_checkpoint(save_checkpoint(detector_state(model, ["open", "short"], 64, decoding)))


def test_detector_reports_boxes_above_the_minimum_score_in_original_pixels(detector_state_dict):
    images = striped(2, 5)
    images = np.stack([np.kron(im, np.ones((2, 2), np.uint8)) for im in images])  # 64 px
    everything = predictor_for("detector", detector_state_dict, "pcb-detector:1", min_score=0.0)
    assert everything.input_size == 64 and everything.min_score == 0.0
    default = predictor_for("detector", detector_state_dict, "pcb-detector:1")
    assert default.min_score == 0.3  # the score its evaluation reported precision and recall at
    out = everything.predict(images, [(640, 320), None], 2, "cpu")
    raw = predict_boxes(everything.model, images, DetectConfig(max_detections=20, score_threshold=0.0, nms_iou=0.6))
    first, second = out.records
    assert (first["width"], first["height"]) == (640, 320) and (second["width"], second["height"]) == (64, 64)
    assert len(first["boxes"]) == len(raw[0]["scores"]) > 0
    best = int(np.argmax(raw[0]["scores"]))
    top = first["boxes"][0]  # best first
    assert top["score"] == pytest.approx(float(raw[0]["scores"][best]))
    assert top["class"] == ["open", "short"][raw[0]["labels"][best]]
    x1, y1, x2, y2 = raw[0]["boxes"][best]
    assert (top["x1"], top["y1"], top["x2"], top["y2"]) == pytest.approx((x1 * 10, y1 * 5, x2 * 10, y2 * 5), rel=1e-5)
    # a minimum score keeps exactly the boxes at or above it
    cut = float(np.median(raw[0]["scores"]))
    strict = predictor_for("detector", detector_state_dict, "pcb-detector:1", min_score=cut)
    kept = strict.predict(images[:1], [None], 1, "cpu").records[0]["boxes"]
    assert len(kept) == int((raw[0]["scores"] >= cut).sum()) and all(b["score"] >= cut for b in kept)
    table = list(csv.DictReader(io.StringIO(strict.table(["a.png", "b.png"], ["0" * 64, "1" * 64],
                                                         [{"width": 64, "height": 64, "boxes": kept},
                                                          {"width": 64, "height": 64, "boxes": []}], "x").decode())))
    assert len(table) == len(kept) + 1 and table[-1]["image"] == "b.png" and table[-1]["class"] == ""
    assert sum(strict.counts([{"boxes": kept}]).values()) == len(kept)


def test_kinds_that_do_not_predict_are_refused_in_one_line(anomaly_state):
    with pytest.raises(UnsupportedKind, match=r"^elpv-mae:1 is a backbone: prediction takes a classifier, "
                                              r"an anomaly model or a detector$"):
        predictor_for("backbone", {}, "elpv-mae:1")
    with pytest.raises(UnsupportedKind, match="is a tokenizer"):
        predictor_for("tokenizer", {}, "tok:1")
    with pytest.raises(ValueError, match="--min-score is for detectors; pcb-anomaly:1 is of kind anomaly"):
        predictor_for("anomaly", anomaly_state, "pcb-anomaly:1", min_score=0.5)
    with pytest.raises(ValueError, match="no threshold"):
        predictor_for("anomaly", {**anomaly_state, "threshold": None}, "pcb-anomaly:1")


def test_the_drawing_grid_blanks_every_cell_and_refuses_nothing_to_draw():
    fig, axes = image_grid(5, 4, (3, 3.2))
    assert len(axes) == 8 and not any(ax.axison for ax in axes)
    assert tuple(fig.get_size_inches()) == pytest.approx((12, 6.4))
    assert figure_png(fig).startswith(b"\x89PNG")  # and closes it
    with pytest.raises(ValueError, match="no images to draw"):
        image_grid(0, 4, (3, 3))


def test_decoding_records_the_upright_size_boxes_are_mapped_back_to():
    from components.inference.inputs import decode_image_bytes_sized

    image = Image.fromarray(np.zeros((20, 40), np.uint8))  # 40 wide, 20 high
    assert decode_image_bytes_sized(_png(np.zeros((20, 40), np.uint8)), 16)[1] == (40, 20)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: decoding turns it upright, 20 wide and 40 high
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    pixels, size = decode_image_bytes_sized(buf.getvalue(), 16)
    assert pixels.shape == (16, 16) and size == (20, 40)
