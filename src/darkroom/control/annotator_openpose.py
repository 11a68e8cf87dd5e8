"""OpenPose body detection (`body_pose_model.pth`) → keypoints, limbs, people → OpenPose JSON → stick figure.

Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields" (CVPR 2017): CMU's two-branch,
six-stage network on a VGG-19 front end predicts 19 keypoint heatmaps (18 COCO parts + background) and 38 part
affinity fields (PAFs, an x/y pair per limb) at 1/8 of the input. Peaks of the smoothed heatmaps are keypoint
candidates; a limb joins two candidates when the PAF along the segment between them points the same way; limbs are
then grouped into people. This follows pytorch-openpose as the ControlNet annotators (A1111 extension,
comfyui_controlnet_aux) run it: BGR input scaled so its height is 0.5 × 368 px, one scale by default (several may be
averaged), the same thresholds. The checkpoint stores each layer by its caffe name ("conv1_1.weight",
"Mconv7_stage6_L2.bias"). People come out in OpenPose's JSON format and are drawn by `openpose.render_pose`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .annotators import NETWORKS, load_exact, pad_to_multiple, read_weights
from .openpose import BODY_LIMBS

#: Body-18 limbs the PAFs describe (1-based keypoints): the 17 drawn ones, then right/left shoulder to ear.
LIMB_SEQ = BODY_LIMBS + ((3, 17), (6, 18))
#: The PAF channels (x, y) of each limb in LIMB_SEQ.
PAF_INDEX = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
             (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
N_PARTS = 18
BOXSIZE = 368  # the network's training height; the input is scaled to scale × BOXSIZE
SCALES = (0.5,)  # the annotators' choice (pytorch-openpose used 0.5, 1, 1.5, 2)
STRIDE = 8
PAD_VALUE = 128
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
MID_POINTS = 10

# ---------------------------------------------------------------------------------------------------------------
# the network

_Layer = tuple[str, int, int, int] | str  # (caffe name, in, out, kernel) or a 2×2 max-pool's name
_VGG: tuple[_Layer, ...] = (
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), "pool1_stage1",
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), "pool2_stage1",
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
    "pool3_stage1",
    ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3),
)
_OUT = {1: 38, 2: 19}  # branch L1: PAFs, branch L2: heatmaps


def _stage_layers(stage: int, branch: int) -> tuple[_Layer, ...]:
    out = _OUT[branch]
    if stage == 1:
        return tuple((f"conv5_{i}_CPM_L{branch}", 128, 128, 3) for i in (1, 2, 3)) + (
            (f"conv5_4_CPM_L{branch}", 128, 512, 1), (f"conv5_5_CPM_L{branch}", 512, out, 1))
    return ((f"Mconv1_stage{stage}_L{branch}", 128 + 38 + 19, 128, 7),
            *((f"Mconv{i}_stage{stage}_L{branch}", 128, 128, 7) for i in (2, 3, 4, 5)),
            (f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, out, 1))


def conv_stack(layers: Sequence[_Layer], no_relu: set[str]) -> nn.Sequential:
    """Caffe-named convolutions (padding k // 2), each followed by "relu_<name>" unless listed, and 2×2 pools."""
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    for layer in layers:
        if isinstance(layer, str):
            mods[layer] = nn.MaxPool2d(kernel_size=2, stride=2)
            continue
        name, cin, cout, k = layer
        mods[name] = nn.Conv2d(cin, cout, k, padding=k // 2)
        if name not in no_relu:
            mods[f"relu_{name}"] = nn.ReLU()
    return nn.Sequential(mods)


class BodyPoseNet(nn.Module):
    """CMU's body-18 network: (B, 3, H, W) in [-0.5, 0.5] BGR → PAFs (B, 38, H/8, W/8), heatmaps (B, 19, H/8, W/8)."""

    def __init__(self) -> None:
        super().__init__()
        # Every branch's last convolution is linear except stage 6's heatmap branch: the reference list names
        # Mconv7_stage6_L1 twice and never Mconv7_stage6_L2, so released results have a ReLU there; so do we.
        no_relu = {f"conv5_5_CPM_L{b}" for b in (1, 2)} | {f"Mconv7_stage{t}_L{b}" for t in range(2, 6)
                                                          for b in (1, 2)} | {"Mconv7_stage6_L1"}
        self.model0 = conv_stack(_VGG, no_relu)
        for t in range(1, 7):
            for b in (1, 2):
                setattr(self, f"model{t}_{b}", conv_stack(_stage_layers(t, b), no_relu))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model0(x)  # (B, 128, H/8, W/8)
        pafs, heat = self.model1_1(feats), self.model1_2(feats)
        for t in range(2, 7):
            h = torch.cat([pafs, heat, feats], dim=1)  # (B, 185, H/8, W/8)
            pafs, heat = getattr(self, f"model{t}_1")(h), getattr(self, f"model{t}_2")(h)
        return pafs, heat


def checkpoint_key(module_key: str) -> str:
    """Our parameter name → the file's ("model0.conv1_1.weight" → "conv1_1.weight")."""
    return module_key.split(".", 1)[1]


def load_caffe_named(net: nn.Module, path: Path, network: str) -> Any:
    """Fill a meta-device network from a file keyed by caffe layer names (AnnotatorFileError naming `network` when
    the file is another network's)."""
    ours = {checkpoint_key(k): k for k in net.state_dict()}
    sd = {ours.get(k, k): v for k, v in read_weights(path).items()}
    return load_exact(net, sd, path, network, assign=True)


def load_body_model(path: Path) -> BodyPoseNet:
    """body_pose_model.pth → BodyPoseNet (AnnotatorFileError when the file is another network)."""
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        net = BodyPoseNet()
    return load_caffe_named(net, path, "OpenPose body (body_pose_model.pth)")


# ---------------------------------------------------------------------------------------------------------------
# heatmaps and PAFs at image size


def resize_maps(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """pytorch-openpose's resize: area when shrinking, Lanczos when enlarging; maps channel by channel."""
    import cv2

    h, w = x.shape[:2]
    interp = cv2.INTER_AREA if (height + width) / (h + w) < 1 else cv2.INTER_LANCZOS4
    if x.ndim == 2 or x.shape[2] in (1, 3):
        return cv2.resize(x, (width, height), interpolation=interp)
    return np.stack([cv2.resize(np.ascontiguousarray(x[:, :, c]), (width, height), interpolation=interp)
                     for c in range(x.shape[2])], axis=2)


@torch.no_grad()
def body_maps(net: BodyPoseNet, bgr: np.ndarray, *, scales: Sequence[float] | None = None,
              boxsize: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (H, W, 19) and PAFs (H, W, 38) of a BGR uint8 image, averaged over the scales (None: SCALES,
    BOXSIZE), on the network's device."""
    scales, boxsize = scales or SCALES, boxsize or BOXSIZE
    h, w = bgr.shape[:2]
    heat_avg = np.zeros((h, w, 19), np.float32)
    paf_avg = np.zeros((h, w, 38), np.float32)
    for scale in scales:
        k = scale * boxsize / h
        img = resize_maps(bgr, max(1, int(w * k)), max(1, int(h * k)))
        ih, iw = img.shape[:2]
        pb, pr = -ih % STRIDE, -iw % STRIDE
        img = np.pad(img, [[0, pb], [0, pr], [0, 0]], constant_values=PAD_VALUE)
        x = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None] / 256.0 - 0.5
        param = next(net.parameters())
        pafs, heat = net(x.to(device=param.device, dtype=param.dtype))
        for maps, avg in ((heat, heat_avg), (pafs, paf_avg)):
            m = maps[0].float().permute(1, 2, 0).cpu().numpy()  # (H'/8, W'/8, C)
            m = resize_maps(m, m.shape[1] * STRIDE, m.shape[0] * STRIDE)[:ih, :iw]
            avg += resize_maps(m, w, h) / len(scales)
    return heat_avg, paf_avg


# ---------------------------------------------------------------------------------------------------------------
# post-processing: peaks → limbs → people (pure numpy)

Peak = tuple[int, int, float, int]  # x, y, heatmap score, global id


def find_peaks(heatmaps: np.ndarray, threshold: float = PEAK_THRESHOLD, sigma: float = 3.0) -> list[list[Peak]]:
    """Per part: local maxima (4-neighbourhood) of the Gaussian-smoothed heatmap above `threshold`, row by row."""
    from scipy.ndimage import gaussian_filter

    peaks: list[list[Peak]] = []
    counter = 0
    for part in range(N_PARTS):
        raw = heatmaps[:, :, part]
        smooth = gaussian_filter(raw, sigma=sigma)
        p = np.pad(smooth, 1)  # zeros beyond the border, as the reference's shifted copies
        centre = p[1:-1, 1:-1]
        mask = ((centre >= p[:-2, 1:-1]) & (centre >= p[2:, 1:-1]) & (centre >= p[1:-1, :-2])
                & (centre >= p[1:-1, 2:]) & (centre > threshold))
        ys, xs = np.nonzero(mask)
        peaks.append([(int(x), int(y), float(raw[y, x]), counter + i) for i, (x, y) in enumerate(zip(xs, ys))])
        counter += len(xs)
    return peaks


def connect_limbs(peaks: list[list[Peak]], pafs: np.ndarray, image_height: int, *,
                  threshold: float = PAF_THRESHOLD, mid_points: int = MID_POINTS) -> list[np.ndarray | None]:
    """Per limb of LIMB_SEQ: rows (id_a, id_b, score, i, j) of the accepted pairs (None: a part has no peak)."""
    out: list[np.ndarray | None] = []
    for (a, b), (cx, cy) in zip(LIMB_SEQ, PAF_INDEX):
        cand_a, cand_b = peaks[a - 1], peaks[b - 1]
        if not cand_a or not cand_b:
            out.append(None)
            continue
        scored = []
        for i, (xa, ya, _, _) in enumerate(cand_a):
            for j, (xb, yb, _, _) in enumerate(cand_b):
                norm = max(math.hypot(xb - xa, yb - ya), 1e-3)
                ux, uy = (xb - xa) / norm, (yb - ya) / norm
                xs = np.round(np.linspace(xa, xb, mid_points)).astype(int)  # half to even, as Python's round
                ys = np.round(np.linspace(ya, yb, mid_points)).astype(int)
                along = pafs[ys, xs, cx] * ux + pafs[ys, xs, cy] * uy  # PAF · limb direction at each sample
                score = float(along.mean()) + min(0.5 * image_height / norm - 1.0, 0.0)  # long limbs pay
                if np.count_nonzero(along > threshold) > 0.8 * len(along) and score > 0:
                    scored.append((i, j, score))
        scored.sort(key=lambda t: t[2], reverse=True)
        rows: list[tuple[float, float, float, int, int]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for i, j, score in scored:  # greedy: best pairs first, each candidate used once
            if i in used_a or j in used_b:
                continue
            rows.append((cand_a[i][3], cand_b[j][3], score, i, j))
            used_a.add(i)
            used_b.add(j)
            if len(rows) >= min(len(cand_a), len(cand_b)):
                break
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return out


def assemble_people(peaks: list[list[Peak]], limbs: list[np.ndarray | None], *, min_parts: int = 4,
                    min_mean_score: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Group limbs into people: candidates (N, 4: x, y, score, id) and people (P, 20: 18 candidate ids or -1,
    total score, part count), keeping people with ≥ min_parts parts and a mean score ≥ min_mean_score."""
    candidates = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    people = np.full((0, N_PARTS + 2), -1.0)
    for k, rows in enumerate(limbs):
        if rows is None:
            continue
        a, b = LIMB_SEQ[k][0] - 1, LIMB_SEQ[k][1] - 1
        for id_a, id_b, score, _, _ in rows:
            found = [p for p in range(len(people)) if people[p, a] == id_a or people[p, b] == id_b][:2]
            if len(found) == 1:
                p = found[0]
                if people[p, b] != id_b:
                    people[p, b] = id_b
                    people[p, -1] += 1
                    people[p, -2] += candidates[int(id_b), 2] + score
            elif len(found) == 2:
                p1, p2 = found
                both = ((people[p1] >= 0).astype(int) + (people[p2] >= 0).astype(int))[:-2]
                if not np.any(both == 2):  # disjoint halves of one person: merge them
                    people[p1, :-2] += people[p2, :-2] + 1
                    people[p1, -2:] += people[p2, -2:]
                    people[p1, -2] += score
                    people = np.delete(people, p2, axis=0)
                else:
                    people[p1, b] = id_b
                    people[p1, -1] += 1
                    people[p1, -2] += candidates[int(id_b), 2] + score
            elif k < len(BODY_LIMBS):  # a limb of nobody yet starts a person (ear–shoulder limbs do not)
                row = np.full(N_PARTS + 2, -1.0)
                row[a], row[b] = id_a, id_b
                row[-1] = 2
                row[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + score
                people = np.vstack([people, row])
    keep = (people[:, -1] >= min_parts) & (people[:, -2] / np.maximum(people[:, -1], 1) >= min_mean_score)
    return candidates, people[keep]


def pose_json(candidates: np.ndarray, people: np.ndarray, width: int, height: int) -> dict[str, Any]:
    """People → OpenPose JSON with coordinates normalised to the canvas (missing keypoints: 0, 0, 0)."""
    out = []
    for row in people:
        flat: list[float] = []
        for idx in row[:N_PARTS].astype(int):
            if idx < 0:
                flat += [0.0, 0.0, 0.0]
            else:
                flat += [float(candidates[idx, 0]) / width, float(candidates[idx, 1]) / height, 1.0]
        out.append({"pose_keypoints_2d": flat, "face_keypoints_2d": None, "hand_left_keypoints_2d": None,
                    "hand_right_keypoints_2d": None})
    return {"people": out, "canvas_width": int(width), "canvas_height": int(height)}


def detect_pose_json(net: BodyPoseNet, rgb: np.ndarray, *, scales: Sequence[float] | None = None,
                     boxsize: int | None = None, hand_net: Any = None, face_net: Any = None) -> dict[str, Any]:
    """An RGB uint8 image → the people in it as OpenPose JSON (canvas = the image); with `hand_net` (a
    HandPoseNet) their hands too, with `face_net` (a FacePoseNet) their faces."""
    h, w = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    heat, pafs = body_maps(net, bgr, scales=scales, boxsize=boxsize)
    peaks = find_peaks(heat)
    candidates, people = assemble_people(peaks, connect_limbs(peaks, pafs, h))
    pose = pose_json(candidates, people, w, h)
    bodies = [[None if i < 0 else (float(candidates[i, 0]), float(candidates[i, 1]))
               for i in row[:N_PARTS].astype(int)] for row in people]
    if hand_net is not None:
        from .annotator_openpose_hand import add_hands

        add_hands(pose, hand_net, bgr, bodies)
    if face_net is not None:
        from .annotator_openpose_face import add_faces

        add_faces(pose, face_net, bgr, bodies)
    return pose


def run(preprocessor: str, image: np.ndarray, resolution: int, files: list[Path], device: Any,
        **_: Any) -> np.ndarray:
    """`openpose` / `openpose_hand` / `openpose_face` / `openpose_faceonly` / `openpose_full`: the stick figure
    (with hands, face; or the faces alone) on black, (H, W, 3) uint8 at the processor resolution. `files`: the body
    file, then the hand file when hands are drawn, then the face file when faces are."""
    from .openpose import render_pose
    from .preprocess import resize_short_side

    img = resize_short_side(image, resolution)
    padded, unpad = pad_to_multiple(img, 64)  # the extension detects on the 64-padded picture, then crops
    net = NETWORKS.get(files[0], device, load_body_model)
    hands = preprocessor in ("openpose_hand", "openpose_full")
    face = preprocessor in ("openpose_face", "openpose_faceonly", "openpose_full")
    hand_net = face_net = None
    if hands:
        from .annotator_openpose_hand import load_hand_model

        hand_net = NETWORKS.get(files[1], device, load_hand_model)
    if face:
        from .annotator_openpose_face import load_face_model

        face_net = NETWORKS.get(files[-1], device, load_face_model)
    pose = detect_pose_json(net, padded, hand_net=hand_net, face_net=face_net)
    if preprocessor == "openpose_faceonly":
        from .annotator_openpose_face import without_bodies

        pose = without_bodies(pose)
    return unpad(render_pose(pose, hands=hands, face=face))
