"""OpenPose hands (`hand_pose_model.pth`) for `openpose_hand`: 21 keypoints per hand, found in boxes the body
keypoints place at each wrist.

Simon et al., "Hand Keypoint Detection in Single Images using Multiview Bootstrapping" (CVPR 2017): a VGG-19 front
end and six stages of 7×7 convolutions predict 22 heatmaps (21 joints + background) at 1/8 of a square crop. As the
ControlNet annotators run it (pytorch-openpose's hand.py, boxes from OpenPose's handDetector.cpp): the box is
centred a third of the forearm beyond the wrist, 1.5 × max(forearm, 0.9 × upper arm) wide, clipped to the picture
and dropped under 20 px; the crop is blurred (σ 0.8) and seen at 0.5, 1, 1.5 and 2 × 368 px; the averaged heatmaps
(at 128 × 128) are smoothed, and each joint is the maximum of the strongest connected region above 0.05.
Checkpoint keys are caffe layer names: "conv1_1.weight" … "conv5_3_CPM", "conv6_1_CPM", "conv6_2_CPM",
"Mconv1_stage2" … "Mconv7_stage6".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotator_openpose import PAD_VALUE, STRIDE, conv_stack, load_caffe_named, resize_maps

HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
HAND_BOXSIZE = 368
HAND_THRESHOLD = 0.05
HEATMAP_SIZE = 128
N_JOINTS = 21

#: The VGG-19 front end of the hand and face networks (caffe layer name, in, out, kernel; pools by name).
VGG_FRONT = (
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), "pool1_stage1",
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), "pool2_stage1",
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
    "pool3_stage1",
    ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3),
)


class HandPoseNet(nn.Module):
    """(B, 3, H, W) in [-0.5, 0.5] BGR → 22 hand heatmaps (B, 22, H/8, W/8)."""

    def __init__(self) -> None:
        super().__init__()
        no_relu = {"conv6_2_CPM"} | {f"Mconv7_stage{t}" for t in range(2, 7)}
        self.model1_0 = conv_stack(VGG_FRONT, no_relu)
        self.model1_1 = conv_stack((("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, 22, 1)), no_relu)
        for t in range(2, 7):
            layers = ((f"Mconv1_stage{t}", 128 + 22, 128, 7),
                      *((f"Mconv{i}_stage{t}", 128, 128, 7) for i in (2, 3, 4, 5)),
                      (f"Mconv6_stage{t}", 128, 128, 1), (f"Mconv7_stage{t}", 128, 22, 1))
            setattr(self, f"model{t}", conv_stack(layers, no_relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model1_0(x)  # (B, 128, H/8, W/8)
        out = self.model1_1(feats)
        for t in range(2, 7):
            out = getattr(self, f"model{t}")(torch.cat([out, feats], dim=1))  # (B, 150, …) → (B, 22, …)
        return out


def load_hand_model(path: Path) -> HandPoseNet:
    """hand_pose_model.pth → HandPoseNet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):
        net = HandPoseNet()
    return load_caffe_named(net, path, "OpenPose hand (hand_pose_model.pth)")


Point = tuple[float, float]


def hand_boxes(body: Sequence[Point | None], width: int, height: int) -> list[tuple[int, int, int, bool]]:
    """Square boxes (x, y, side, is_left) around the hands of one body-18 skeleton in pixels (OpenPose's rule)."""
    arms = ((5, 6, 7, True), (2, 3, 4, False))  # (shoulder, elbow, wrist, left?) 0-based
    out = []
    for s, e, w, is_left in arms:
        if body[s] is None or body[e] is None or body[w] is None:
            continue
        (x1, y1), (x2, y2), (x3, y3) = body[s], body[e], body[w]
        x = x3 + 0.33 * (x3 - x2)  # a third of the forearm beyond the wrist
        y = y3 + 0.33 * (y3 - y2)
        side = 1.5 * max(math.hypot(x3 - x2, y3 - y2), 0.9 * math.hypot(x2 - x1, y2 - y1))
        x, y = max(x - side / 2, 0.0), max(y - side / 2, 0.0)
        side = min(side if x + side <= width else width - x, side if y + side <= height else height - y)
        if side >= 20:
            out.append((int(x), int(y), int(side), is_left))
    return out


@torch.no_grad()
def hand_keypoints(net: HandPoseNet, crop_bgr: np.ndarray, *, scales: Sequence[float] | None = None,
                   boxsize: int | None = None) -> list[Point | None]:
    """21 joints (x, y) in crop pixels of a square BGR crop (None: not found)."""
    import cv2
    from scipy.ndimage import gaussian_filter, label

    scales, boxsize = scales or HAND_SCALES, boxsize or HAND_BOXSIZE
    h, w = crop_bgr.shape[:2]
    img = cv2.GaussianBlur(crop_bgr, (0, 0), 0.8)
    heat_avg = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE, 22), np.float32)
    param = next(net.parameters())
    for scale in scales:
        size = int(scale * boxsize)
        x = resize_maps(img, size, size)
        pb, pr = -x.shape[0] % STRIDE, -x.shape[1] % STRIDE
        x = np.pad(x, [[0, pb], [0, pr], [0, 0]], constant_values=PAD_VALUE)
        t = torch.from_numpy(np.ascontiguousarray(x)).float().permute(2, 0, 1)[None] / 256.0 - 0.5
        m = net(t.to(param.device, param.dtype))[0].float().permute(1, 2, 0).cpu().numpy()
        m = resize_maps(m, m.shape[1] * STRIDE, m.shape[0] * STRIDE)[:size, :size]
        heat_avg += resize_maps(m, HEATMAP_SIZE, HEATMAP_SIZE) / len(scales)
    out: list[Point | None] = []
    for joint in range(N_JOINTS):
        raw = heat_avg[:, :, joint].copy()
        regions, n = label(gaussian_filter(raw, sigma=3) > HAND_THRESHOLD, structure=np.ones((3, 3)))
        if n == 0:
            out.append(None)
            continue
        best = 1 + int(np.argmax([raw[regions == i].sum() for i in range(1, n + 1)]))  # the strongest region
        raw[regions != best] = 0
        row, col = np.unravel_index(int(np.argmax(raw)), raw.shape)
        px, py = int(col * w / HEATMAP_SIZE), int(row * h / HEATMAP_SIZE)
        out.append(None if px == 0 or py == 0 else (float(px), float(py)))  # the reference's "0 = missing"
    return out


def detect_hands(net: HandPoseNet, bgr: np.ndarray, body: Sequence[Point | None], *,
                 scales: Sequence[float] | None = None, boxsize: int | None = None
                 ) -> tuple[list[Point | None] | None, list[Point | None] | None]:
    """(left, right) hands of one body in image pixels (None: no box for that hand)."""
    height, width = bgr.shape[:2]
    hands: dict[bool, list[Point | None]] = {}
    for x, y, side, is_left in hand_boxes(body, width, height):
        joints = hand_keypoints(net, bgr[y : y + side, x : x + side], scales=scales, boxsize=boxsize)
        hands[is_left] = [None if p is None else (p[0] + x, p[1] + y) for p in joints]
    return hands.get(True), hands.get(False)


def flat_points(points: Sequence[Point | None] | None, width: int, height: int) -> list[float] | None:
    """Points → OpenPose's flat [x, y, c, …] normalised to the canvas (missing: 0, 0, 0)."""
    if points is None:
        return None
    out: list[float] = []
    for p in points:
        out += [0.0, 0.0, 0.0] if p is None else [p[0] / width, p[1] / height, 1.0]
    return out


def add_hands(pose: dict[str, Any], net: HandPoseNet, bgr: np.ndarray, bodies: Sequence[Sequence[Point | None]],
              **kw: Any) -> dict[str, Any]:
    """Fill each person's hand_left/right_keypoints_2d in an OpenPose JSON made from `bodies` (pixels)."""
    h, w = bgr.shape[:2]
    for person, body in zip(pose["people"], bodies):
        left, right = detect_hands(net, bgr, body, **kw)
        person["hand_left_keypoints_2d"] = flat_points(left, w, h)
        person["hand_right_keypoints_2d"] = flat_points(right, w, h)
    return pose
