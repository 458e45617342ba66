"""Run a model exported by `dlvm export` with nothing but onnxruntime, numpy and Pillow
(no dlvm, no torch): the way a line PC runs it.

    pip install onnxruntime numpy pillow
    python onnx_predict.py elpv-classifier-v3.onnx image1.png image2.png ...

Prints one JSON line per image: its class, the class's probability and every class's
probability. The class names and the preprocessing come from the file's metadata.
Decoding is dlvm's (components/data/images.py) for 8-bit grayscale and colour images:
EXIF orientation, luminance, a bicubic resize of the whole image to the model's input
size. (dlvm scales 16-bit images by their own 1st-99th percentile; this snippet does not.)
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_model(path):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["dlvm.classes"])
    height, width = json.loads(meta["dlvm.preprocessing"])["input_size"]
    return session, classes, (width, height)


def decode(path, size):
    """uint8 [H, W]: upright, grayscale, resized whole to the model's input size."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("L")
        if img.size != size:
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)


def main(model_path, image_paths):
    session, classes, size = load_model(model_path)
    images = np.stack([decode(p, size) for p in image_paths])
    probabilities, _embedding = session.run(["probabilities", "embedding"], {"image": images})
    for path, p in zip(image_paths, probabilities):
        top = int(np.argmax(p))
        print(json.dumps({"image": path, "class": classes[top], "confidence": float(p[top]),
                          "probabilities": dict(zip(classes, map(float, p)))}))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python onnx_predict.py MODEL.onnx IMAGE [IMAGE ...]")
    main(sys.argv[1], sys.argv[2:])
