"""DWPose whole-body detection (`yolox_l.onnx` + `dw-ll_ucoco_384.onnx`) → OpenPose body, hands and face.

Yang et al., "Effective Whole-body Pose Estimation with Two-stages Distillation" (ICCV 2023 workshop): a YOLOX-L
person detector, then an RTMPose-L whole-body model (133 COCO-WholeBody keypoints) on each person. Both ship as ONNX
files (huggingface.co/yzd-v/DWPose) and run here with onnxruntime, as in the A1111 ControlNet extension and
comfyui_controlnet_aux: the RGB picture letterboxed to 640 × 640 (grey 114 padding), YOLOX's grid outputs decoded
(strides 8/16/32), class-aware NMS (IoU 0.45, score 0.1), people kept above 0.3; each box grown 1.25×, widened to
3:4 and warped to 288 × 384, ImageNet-normalised; the SimCC x/y outputs' argmax / 2 mapped back to the picture.
The 133 points become OpenPose's body-18 (a neck between the shoulders, reordered), 21-point hands and 68 face
points (+ the two eyes, making OpenPose's 70); points scored below 0.3 are missing. Drawn by `openpose`'s renderer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .annotators import NETWORKS, AnnotatorFileError, AnnotatorUnavailableError, pad_to_multiple
from .openpose import Person, draw_body, draw_face, draw_hand

DET_SIZE = (640, 640)  # YOLOX input (h, w)
DET_PAD = 114
STRIDES = (8, 16, 32)
NMS_IOU = 0.45
DET_SCORE = 0.1  # NMS candidates
PERSON_SCORE = 0.3  # people kept
PERSON_CLASS = 0
POSE_SIZE = (288, 384)  # RTMPose input (w, h)
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
N_WHOLEBODY = 133
KEYPOINT_SCORE = 0.3
#: OpenPose body-18 slot ← COCO-WholeBody index, once the neck is inserted at 17 (slots 0, 5, 11 keep their own).
OPENPOSE_FROM_MMPOSE = {1: 17, 2: 6, 3: 8, 4: 10, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16, 12: 13, 13: 15, 14: 2, 15: 1,
                        16: 4, 17: 3}
PIP_HINT = "pip install onnxruntime (CPU) or onnxruntime-gpu, or pip install 'darkroom[dwpose]'"

# ---------------------------------------------------------------------------------------------------------------
# sessions


class OnnxNetwork:
    """An onnxruntime session that the annotator LRU can hold (its `to`/`eval` pick the execution provider)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.session: Any = None

    def to(self, device: Any) -> OnnxNetwork:
        """Open the session on CUDA when asked for and onnxruntime has it, else on the CPU."""
        ort = _onnxruntime()
        providers = ["CPUExecutionProvider"]
        if str(getattr(device, "type", device)) == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
            raise AnnotatorFileError(f"cannot read ONNX network {self.path}: {e}") from e
        return self

    def eval(self) -> OnnxNetwork:
        """Nothing to switch (ONNX graphs are inference-only)."""
        return self

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs for one float32 input."""
        return self.session.run(None, {self.session.get_inputs()[0].name: x.astype(np.float32)})


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise AnnotatorUnavailableError(
            f"preprocessor 'dw_openpose_full' runs its ONNX networks with onnxruntime, which is not installed: "
            f"{PIP_HINT}") from None
    return onnxruntime


# ---------------------------------------------------------------------------------------------------------------
# YOLOX person detection


def letterbox(rgb: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 → (3, h, w) float32 (0..255) scaled to fit at the top left, grey elsewhere; and the scale."""
    import cv2

    h, w = rgb.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nh, nw = int(h * r), int(w * r)
    out = np.full((size[0], size[1], 3), DET_PAD, np.uint8)
    out[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), r


def decode_yolox(pred: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX rows (N, 5 + C: dx, dy, log w, log h, objectness, class scores) → boxes (N, 4 xyxy in the
    letterboxed picture's pixels) and class scores (N, C) = objectness × class score."""
    grids, strides = [], []
    for s in STRIDES:
        ys, xs = np.mgrid[0 : size[0] // s, 0 : size[1] // s]
        grids.append(np.stack([xs.ravel(), ys.ravel()], 1))  # row-major cells, x fastest
        strides.append(np.full((xs.size, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    if pred.shape[0] != len(grid):
        raise AnnotatorFileError(f"the detector gave {pred.shape[0]} rows, YOLOX at {size} has {len(grid)}")
    centre = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], 1)
    return boxes, pred[:, 4:5] * pred[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression (YOLOX's +1-pixel areas): indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def detect_people(detector: OnnxNetwork, rgb: np.ndarray) -> np.ndarray | None:
    """Person boxes (P, 4 xyxy, image pixels); None when the detector found nothing of any class."""
    x, ratio = letterbox(rgb)
    out = detector(x[None])[0]
    if out.ndim != 3 or out.shape[-1] < 6:
        raise AnnotatorFileError(f"{detector.path} is not a YOLOX detector (output shape {out.shape})")
    boxes, scores = decode_yolox(out[0].astype(np.float64))
    boxes = boxes / ratio
    found = False
    people = np.zeros((0, 4))
    for c in range(scores.shape[1]):  # class-aware NMS; only people are kept
        valid = scores[:, c] > DET_SCORE
        if not valid.any():
            continue
        found = True
        if c == PERSON_CLASS:
            b, s = boxes[valid], scores[valid, c]
            keep = [i for i in nms(b, s) if s[i] > PERSON_SCORE]
            people = b[keep]
    return people if found else None


# ---------------------------------------------------------------------------------------------------------------
# RTMPose whole-body


def box_center_scale(box: np.ndarray, aspect: float = POSE_SIZE[0] / POSE_SIZE[1],
                     padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box → centre (x, y) and crop size (w, h): grown by `padding`, then extended to w/h = `aspect`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def crop_matrix(center: np.ndarray, scale: np.ndarray, size: tuple[int, int] = POSE_SIZE) -> np.ndarray:
    """The 2×3 affine map from picture to crop: the scale (w, h) box around `center` onto size (w, h)."""
    k = size[0] / scale[0]  # scale has the crop's aspect, so one factor fits both axes
    return np.array([[k, 0.0, size[0] / 2 - k * center[0]], [0.0, k, size[1] / 2 - k * center[1]]])


def crop_person(rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pose model's input for one box: (3, 384, 288) float32 normalised, and the crop's centre and size."""
    import cv2

    center, scale = box_center_scale(box)
    crop = cv2.warpAffine(rgb, crop_matrix(center, scale), POSE_SIZE, flags=cv2.INTER_LINEAR)  # (384, 288, 3)
    x = (crop.astype(np.float64) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32), center, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """SimCC (N, K, Wx), (N, K, Wy) → crop locations (N, K, 2) = argmax / split (-1 where the score ≤ 0) and scores
    (N, K) = the smaller of the two maxima."""
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float64)
    vals = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float64)
    locs[vals <= 0] = -1
    return locs / split, vals


def estimate_pose(model: OnnxNetwork, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """133 whole-body keypoints (133, 2, picture pixels) and their scores (133,) for one person box."""
    x, center, scale = crop_person(rgb, box)
    outs = model(x[None])
    if len(outs) != 2 or outs[0].ndim != 3 or outs[0].shape[1] != N_WHOLEBODY:
        raise AnnotatorFileError(f"{model.path} is not a whole-body RTMPose model (outputs "
                                 f"{[tuple(o.shape) for o in outs]}, expected SimCC x and y for 133 keypoints)")
    locs, vals = decode_simcc(outs[0], outs[1])
    return locs[0] / np.array(POSE_SIZE) * scale + center - scale / 2, vals[0]


# ---------------------------------------------------------------------------------------------------------------
# COCO-WholeBody → OpenPose


def to_openpose(points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(133, 2) points and (133,) scores → (134, 3) x, y, score: the neck inserted at 17 (mean of the shoulders,
    score 1 when both shoulders score above 0.3, else 0) and the body reordered to OpenPose's 18."""
    info = np.concatenate([points, scores[:, None]], 1)
    neck = info[[5, 6]].mean(0)
    neck[2] = float(info[5, 2] > KEYPOINT_SCORE and info[6, 2] > KEYPOINT_SCORE)
    info = np.insert(info, 17, neck, axis=0)
    out = info.copy()
    for dst, src in OPENPOSE_FROM_MMPOSE.items():
        out[dst] = info[src]
    return out


def _part(rows: np.ndarray) -> list[tuple[float, float] | None] | None:
    pts = [(float(x), float(y)) if s >= KEYPOINT_SCORE else None for x, y, s in rows]
    return None if all(p is None for p in pts) else pts


def to_person(info: np.ndarray) -> Person:
    """(134, 3) OpenPose-ordered rows → a Person in pixels: body 18, left hand 92:113, right hand 113:134, face
    24:92 plus the right and left eyes (OpenPose's 70 face points); feet are dropped."""
    body = _part(info[:18]) or [None] * 18
    face = _part(info[24:92])
    if face is not None:
        face += [body[14], body[15]]
    return Person(body=body, left_hand=_part(info[92:113]), right_hand=_part(info[113:134]), face=face)


def detect_people_poses(detector: OnnxNetwork, model: OnnxNetwork, rgb: np.ndarray) -> list[Person]:
    """An RGB uint8 picture → its people (pixel keypoints). With a detection but no person box, the whole picture is
    the box (as the extension)."""
    boxes = detect_people(detector, rgb)
    if boxes is None:
        return []
    h, w = rgb.shape[:2]
    if len(boxes) == 0:
        boxes = np.array([[0.0, 0.0, w, h]])
    return [to_person(to_openpose(*estimate_pose(model, rgb, box))) for box in boxes]


def pose_json(people: list[Person], width: int, height: int) -> dict[str, Any]:
    """People → OpenPose JSON normalised to the canvas; points outside the canvas are written as missing."""

    def flat(points: list[tuple[float, float] | None] | None) -> list[float] | None:
        if points is None:
            return None
        out: list[float] = []
        for p in points:
            inside = p is not None and 0 <= p[0] <= width and 0 <= p[1] <= height
            out += [p[0] / width, p[1] / height, 1.0] if inside else [0.0, 0.0, 0.0]
        return out

    return {"people": [{"pose_keypoints_2d": flat(p.body), "face_keypoints_2d": flat(p.face),
                        "hand_left_keypoints_2d": flat(p.left_hand), "hand_right_keypoints_2d": flat(p.right_hand)}
                       for p in people], "canvas_width": int(width), "canvas_height": int(height)}


def draw_people(people: list[Person], height: int, width: int) -> np.ndarray:
    """Body, hands and face of each person on black, (H, W, 3) uint8, in pixels (off-canvas points clipped)."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for p in people:
        draw_body(canvas, p.body)
        for hand in (p.left_hand, p.right_hand):
            if hand:
                draw_hand(canvas, hand)
        if p.face:
            draw_face(canvas, p.face)
    return canvas


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """`dw_openpose_full`: body, hands and face on black, (H, W, 3) uint8 at the processor resolution."""
    from .preprocess import resize_short_side

    _onnxruntime()
    img = resize_short_side(image, resolution)
    padded, unpad = pad_to_multiple(img, 64)  # the extension detects on the 64-padded picture, then crops
    detector = NETWORKS.get(files[0], device, OnnxNetwork)
    model = NETWORKS.get(files[1], device, OnnxNetwork)
    people = detect_people_poses(detector, model, padded)
    return unpad(draw_people(people, *padded.shape[:2]))
