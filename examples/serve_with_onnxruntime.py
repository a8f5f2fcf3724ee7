"""Serve a fine-tuned model with onnxruntime alone: no finetune import needed at inference.

    python examples/serve_with_onnxruntime.py runs/demo/model.onnx IMAGE [IMAGE ...]

The class names and preprocessing travel in the file's metadata.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def preprocess(path: str, meta: dict) -> np.ndarray:
    size = int(meta.get("input_size", 224))
    resize = int(meta.get("resize", round(size * 256 / 224)))
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = round((w - size) / 2), round((h - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255
    x = (x - np.array(meta.get("mean", [0.485, 0.456, 0.406]), dtype=np.float32)) / np.array(
        meta.get("std", [0.229, 0.224, 0.225]), dtype=np.float32
    )
    return x.transpose(2, 0, 1)[None]


def _decode(value: str):
    """finetune writes non-string metadata values as JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(model_path: str, images: list[str]) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = {k: _decode(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    classes = meta.get("classes")
    name = session.get_inputs()[0].name
    for path in images:
        logits = session.run(None, {name: preprocess(path, meta)})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        label = classes[best] if classes else f"class {best}"
        print(f"{path}: {label} ({probs[best]:.1%})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
