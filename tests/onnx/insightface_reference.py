#!/usr/bin/env python3
"""What InsightFace itself computes on some images, for tests/insightface_parity.rs.

Runs the `insightface` package (0.7.3, installed by tests/setup.sh into the onnx venv) exactly as the
reference validator's identity component does: `FaceAnalysis` over a model pack (here the two test
models of tests/onnx/make_models.py, laid out as a pack in a temporary root so that FaceAnalysis finds
them through `model_zoo.get_model`, as it finds buffalo_l's), `prepare(ctx_id=-1, det_thresh=0.5,
det_size=(640, 640))`, images read with `cv2.imread` (BGR), `FaceAnalysis.get` (SCRFD detection, then
for every face `face_align.norm_crop` and `ArcFaceONNX.get_feat`), the reference's pad-and-retry when
nothing is found, and its "largest face" rule.

Usage: insightface_reference.py MODEL_DIR REFERENCE_IMAGE IMAGE...
       (MODEL_DIR holds det_10g_test.onnx and w600k_r50_test.onnx)

Prints one JSON object: the versions and the model settings insightface inferred, then per image
(the reference image first): its size, the pad of the retry (0 when the first pass found faces),
every face as FaceAnalysis returns them (NMS order: score descending) with its box and landmarks in
the coordinates insightface reports (padded ones after a retry, as the reference keeps them), score
and normed embedding; which face the reference's rule picks (`bbox[2] * bbox[3]`, the largest) and
which the real-area rule picks; for both, the aligned 112x112 crop as base64 RGB bytes; and the
identity similarity of each pick against the reference image's pick under the same rule (the cosine
of normed embeddings, clamped to [0, 1], as the reference computes it). The area rule is talkheadd's:
the largest real area of the box clipped to the image (after shifting a retry's box back by the pad).

With `--as-rgb` every image is handed to InsightFace in RGB order (what the reference does with video
frames, docs/reference.md weakness 11) instead of cv2.imread's BGR.
"""

import base64
import json
import os
import sys
import tempfile

import cv2
import insightface
import numpy as np
import onnxruntime
from insightface.app import FaceAnalysis
from insightface.utils import face_align

DETECTOR = "det_10g_test.onnx"
RECOGNISER = "w600k_r50_test.onnx"


def load_app(model_dir, root):
    """FaceAnalysis over a pack `parity` in `root` whose files link to the test models."""
    pack = os.path.join(root, "models", "parity")
    os.makedirs(pack)
    for name in (DETECTOR, RECOGNISER):
        src = os.path.join(model_dir, name)
        if not os.path.isfile(src):
            sys.exit(f"{src} is missing: run tests/setup.sh")
        os.symlink(os.path.abspath(src), os.path.join(pack, name))
    # Its progress lines go to stdout: keep stdout for the JSON.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        app = FaceAnalysis(name="parity", root=root, providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    finally:
        sys.stdout = real_stdout
    return app


def faces_with_retry(app, img):
    """The reference's detection: FaceAnalysis.get, and once more on a black-padded copy when it finds
    nothing. Returns (faces, pad, image the faces belong to)."""
    faces = app.get(img)
    if faces:
        return faces, 0, img
    h, w = img.shape[:2]
    pad = max(32, int(0.1 * max(h, w)))
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return app.get(padded), pad, padded


def pick(faces, key):
    if not faces:
        return None
    return max(range(len(faces)), key=lambda i: key(faces[i].bbox))


def reference_key(b):
    return float(b[2]) * float(b[3])  # the reference's sort key (weakness 12)


def visible_area_key(width, height, pad):
    """talkheadd's rule: the real area of the box shifted back by the pad and clipped to the image."""

    def key(b):
        x1, y1, x2, y2 = (min(max(float(v) - pad, 0.0), lim) for v, lim in zip(b, (width, height, width, height)))
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    return key


def crop_b64(img, face, as_rgb):
    # What ArcFaceONNX.get aligns: norm_crop on the image FaceAnalysis was given.
    crop = face_align.norm_crop(img, landmark=face.kps, image_size=112)
    rgb = crop if as_rgb else cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return base64.b64encode(np.ascontiguousarray(rgb).tobytes()).decode()


def main():
    args = sys.argv[1:]
    as_rgb = "--as-rgb" in args
    args = [a for a in args if a != "--as-rgb"]
    if len(args) < 2:
        sys.exit(__doc__)
    model_dir, paths = args[0], args[1:]
    with tempfile.TemporaryDirectory() as root:
        app = load_app(model_dir, root)
        det, rec = app.det_model, app.models["recognition"]
        out = {
            "versions": {
                "insightface": insightface.__version__,
                "opencv": cv2.__version__,
                "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__,
            },
            "detector": {
                "class": type(det).__name__,
                "input_mean": det.input_mean,
                "input_std": det.input_std,
                "input_size": list(det.input_size),
                "det_thresh": det.det_thresh,
                "nms_thresh": det.nms_thresh,
            },
            "recognizer": {
                "class": type(rec).__name__,
                "input_mean": rec.input_mean,
                "input_std": rec.input_std,
                "input_size": list(rec.input_size),
            },
            "as_rgb": as_rgb,
            "images": [],
        }
        refs = {}
        for n, path in enumerate(paths):
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                sys.exit(f"cannot read {path}")
            if as_rgb:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            faces, pad, seen = faces_with_retry(app, img)
            entry = {
                "path": path,
                "width": img.shape[1],
                "height": img.shape[0],
                "pad": pad,
                "faces": [
                    {
                        "bbox": [float(v) for v in f.bbox],
                        "score": float(f.det_score),
                        "kps": [[float(x), float(y)] for x, y in f.kps],
                        "embedding": [float(v) for v in f.normed_embedding],
                    }
                    for f in faces
                ],
            }
            area_key = visible_area_key(img.shape[1], img.shape[0], pad)
            for rule, key in (("reference", reference_key), ("area", area_key)):
                i = pick(faces, key)
                entry[f"chosen_{rule}"] = i
                entry[f"crop_{rule}"] = None if i is None else crop_b64(seen, faces[i], as_rgb)
                emb = None if i is None else faces[i].normed_embedding
                if n == 0:
                    refs[rule] = emb
                ref = refs[rule]
                sim = None
                if ref is not None:
                    sim = 0.0 if emb is None else float(np.clip(np.dot(ref, emb), 0.0, 1.0))
                entry[f"similarity_{rule}"] = sim
            out["images"].append(entry)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
