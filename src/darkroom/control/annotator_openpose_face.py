"""OpenPose face (`facenet.pth`) for openpose_face, openpose_faceonly and openpose_full: 70 landmarks per face,
found in a square box the body keypoints (nose, eyes, ears) place around the head.

OpenPose's face keypoint network (Simon et al.'s convolutional pose machine, as in CMU OpenPose `models/face`): the
VGG-19 front end of the hand network and six stages of 7×7 convolutions predict 71 heatmaps (70 landmarks, then the
background) at 1/8 of a square input. As the ControlNet annotators run it (annotator/openpose/face.py, the box rule
"faceDetect"): the box is centred on the nose, its half side the larger of 3 × the nose–eye distance and 1.5 × the
nose–ear distance (each the larger of |dx|, |dy|), clipped at the top/left and dropped under 20 px; the BGR crop is
resized to 384 × 384 (area when shrinking, Lanczos when enlarging), scaled to [-0.5, 0.5), and the last stage's maps
are resized bilinearly (corners aligned) to the crop; each landmark is its map's maximum when that is above 0.05.
Faces are drawn as white dots (`openpose.draw_face`).
Checkpoint keys are caffe layer names, as the hand file's: "conv1_1.weight" … "conv5_3_CPM", "conv6_1_CPM",
"conv6_2_CPM", "Mconv1_stage2" … "Mconv7_stage6".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotator_openpose import conv_stack, load_caffe_named, resize_maps
from .annotator_openpose_hand import VGG_FRONT
from .annotator_openpose_hand import flat_points

FACE_INPUT = 384  # the side the crop is resized to
FACE_THRESHOLD = 0.05
N_LANDMARKS = 70
N_MAPS = N_LANDMARKS + 1  # the last map is the background
MIN_BOX = 20
#: Body-18 keypoints (0-based) that size the face box, and the multiple of their distance to the nose it reaches.
FACE_REACH = ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5))  # right eye, left eye, right ear, left ear


class FacePoseNet(nn.Module):
    """(B, 3, H, W) in [-0.5, 0.5] BGR → 71 face heatmaps (B, 71, H/8, W/8): 70 landmarks, then the background."""

    def __init__(self) -> None:
        super().__init__()
        linear = {"conv6_2_CPM"} | {f"Mconv7_stage{t}" for t in range(2, 7)}
        self.model1_0 = conv_stack(VGG_FRONT, linear)
        self.model1_1 = conv_stack((("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, N_MAPS, 1)), linear)
        for stage in range(2, 7):
            self.add_module(f"model{stage}", conv_stack(_refinement(stage), linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model1_0(x)  # (B, 128, H/8, W/8)
        maps = self.model1_1(feats)
        for stage in range(2, 7):  # each refines the maps from them and the features: (B, 199, …) → (B, 71, …)
            maps = self.get_submodule(f"model{stage}")(torch.cat([maps, feats], dim=1))
        return maps


def _refinement(stage: int) -> tuple[tuple[str, int, int, int], ...]:
    """The caffe layers (name, in, out, kernel) of one refinement stage: five 7×7, then two 1×1 convolutions."""
    sizes = [(N_MAPS + 128, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, N_MAPS, 1)]
    return tuple((f"Mconv{i}_stage{stage}", cin, cout, k) for i, (cin, cout, k) in enumerate(sizes, start=1))


def load_face_model(path: Path) -> FacePoseNet:
    """facenet.pth → FacePoseNet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = FacePoseNet()
    return load_caffe_named(net, path, "OpenPose face (facenet.pth)")


Point = tuple[float, float]


def face_box(body: Sequence[Point | None], width: int, height: int) -> tuple[int, int, int] | None:
    """The face box (x, y, side) in pixels of one body-18 skeleton on a width × height picture (None: no nose, no
    eye or ear, or a box under 20 px)."""
    nose = body[0]
    marks = [(body[i], reach) for i, reach in FACE_REACH if body[i] is not None]
    if nose is None or not marks:
        return None
    half = max(reach * max(abs(p[0] - nose[0]), abs(p[1] - nose[1])) for p, reach in marks)
    x, y = max(nose[0] - half, 0.0), max(nose[1] - half, 0.0)
    # The annotators clip at the right/bottom only when the half side passes the edge, so a box may still reach
    # past it; the crop is then cut short by the picture.
    side = min(2 * half if x + half <= width else width - x, 2 * half if y + half <= height else height - y)
    return (int(x), int(y), int(side)) if side >= MIN_BOX else None


def landmark_peaks(heatmaps: np.ndarray, threshold: float = FACE_THRESHOLD) -> list[Point | None]:
    """Per map of (C, H, W): the (x, y) of its maximum when above `threshold` (None otherwise, or on row/column 0,
    which the annotators read as missing)."""
    out: list[Point | None] = []
    for heat in heatmaps:
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        found = heat[row, col] > threshold and row > 0 and col > 0
        out.append((float(col), float(row)) if found else None)
    return out


@torch.no_grad()
def face_keypoints(net: FacePoseNet, crop_bgr: np.ndarray, *, size: int | None = None) -> list[Point | None]:
    """70 landmarks (x, y) in crop pixels of a BGR uint8 crop (None: not found), the crop seen at size × size."""
    import torch.nn.functional as F

    size = size or FACE_INPUT
    h, w = crop_bgr.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(resize_maps(crop_bgr, size, size))).float().permute(2, 0, 1)[None]
    param = next(net.parameters())
    maps = net((x / 256.0 - 0.5).to(param.device, param.dtype)).float()
    maps = F.interpolate(maps, (h, w), mode="bilinear", align_corners=True)  # (1, 71, h, w)
    return landmark_peaks(maps[0, :N_LANDMARKS].cpu().numpy())


def detect_face(net: FacePoseNet, bgr: np.ndarray, body: Sequence[Point | None], *,
                size: int | None = None) -> list[Point | None] | None:
    """The 70 landmarks of one body's face in image pixels (None: no face box)."""
    height, width = bgr.shape[:2]
    box = face_box(body, width, height)
    if box is None:
        return None
    x, y, side = box
    points = face_keypoints(net, bgr[y : y + side, x : x + side], size=size)
    return [None if p is None else (p[0] + x, p[1] + y) for p in points]


def add_faces(pose: dict[str, Any], net: FacePoseNet, bgr: np.ndarray, bodies: Sequence[Sequence[Point | None]],
              **kw: Any) -> dict[str, Any]:
    """Fill each person's face_keypoints_2d in an OpenPose JSON made from `bodies` (pixels)."""
    h, w = bgr.shape[:2]
    for person, body in zip(pose["people"], bodies):
        person["face_keypoints_2d"] = flat_points(detect_face(net, bgr, body, **kw), w, h)
    return pose


def without_bodies(pose: dict[str, Any]) -> dict[str, Any]:
    """The OpenPose JSON with every person's body keypoints dropped (openpose_faceonly draws faces alone)."""
    return {**pose, "people": [{**person, "pose_keypoints_2d": None} for person in pose["people"]]}
