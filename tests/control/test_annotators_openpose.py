"""OpenPose body detection: the network in the real body_pose_model.pth layout, the post-processing on synthetic
heatmaps and PAFs with known people, and the preprocessor end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from darkroom.control import annotator_openpose as op
from darkroom.control.annotators import NETWORKS, AnnotatorFileError
from darkroom.control.openpose import BODY_COLORS, decode_pose_json, render_pose
from darkroom.control.preprocess import prepare_hint, preprocess

#: Keys and shapes of body_pose_model.pth (lllyasviel/Annotators), from CMU's caffe layer table as pytorch-openpose
#: ports it (annotator/openpose/model.py: bodypose_model; util.transfer drops the "model0." block prefix).
REAL_KEYS = {
    "conv1_1.weight": (64, 3, 3, 3),
    "conv3_4.weight": (256, 256, 3, 3),
    "conv4_3_CPM.weight": (256, 512, 3, 3),
    "conv4_4_CPM.bias": (128,),
    "conv5_4_CPM_L1.weight": (512, 128, 1, 1),
    "conv5_5_CPM_L1.weight": (38, 512, 1, 1),
    "conv5_5_CPM_L2.weight": (19, 512, 1, 1),
    "Mconv1_stage2_L1.weight": (128, 185, 7, 7),
    "Mconv6_stage4_L2.weight": (128, 128, 1, 1),
    "Mconv7_stage6_L1.weight": (38, 128, 1, 1),
    "Mconv7_stage6_L2.bias": (19,),
}
REAL_TENSORS = 184  # 12 VGG + 2 × 5 stage-1 + 2 × 5 × 7 refinement convolutions, weight and bias each
REAL_PARAMETERS = 52_311_446  # × 4 bytes ≈ the 209 MB file


@pytest.fixture(scope="module")
def body_file(tmp_path_factory):
    """A random BodyPoseNet saved as body_pose_model.pth in the original layout (fp16 to keep it small)."""
    torch.manual_seed(0)
    net = op.BodyPoseNet()
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    torch.save({op.checkpoint_key(k): v.half() for k, v in net.state_dict().items()}, folder / "body_pose_model.pth")
    return folder


def test_network_has_the_real_checkpoint_layout():
    with torch.device("meta"):
        net = op.BodyPoseNet()
    sd = {op.checkpoint_key(k): tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in REAL_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == REAL_TENSORS
    assert sum(p.numel() for p in net.parameters()) == REAL_PARAMETERS
    # The released network ends its stage-6 heatmap branch with a ReLU (the reference's no-ReLU list names the PAF
    # layer twice), and no other branch.
    assert isinstance(net.model6_2[-1], nn.ReLU) and isinstance(net.model6_1[-1], nn.Conv2d)
    assert all(isinstance(getattr(net, f"model{t}_{b}")[-1], nn.Conv2d) for t in range(1, 6) for b in (1, 2))


def test_loading_rejects_another_network(tmp_path):
    path = tmp_path / "body_pose_model.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(AnnotatorFileError, match="not a OpenPose body.*missing"):
        op.load_body_model(path)


# -- post-processing on synthetic maps ------------------------------------------------------------------------------

#: Two people (x, y) for the 18 body parts; None = not visible. Person A stands left, B right and smaller.
PERSON_A = [(40, 20), (40, 36), (28, 36), (24, 56), (22, 76), (52, 36), (56, 56), (58, 76), (32, 80), (32, 108),
            (32, 134), (48, 80), (48, 108), (48, 134), (36, 16), (44, 16), (32, 18), (48, 18)]
PERSON_B = [(120, 40), (120, 52), (110, 52), (106, 68), None, (130, 52), (134, 68), (136, 84), (114, 86),
            (114, 106), (114, 126), (126, 86), (126, 106), (126, 126), (117, 37), (123, 37), None, None]
H, W = 150, 160


def synthetic_maps(people, spread: float = 8.0, thickness: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps with a Gaussian bump per visible part, PAFs with the limb's unit vector along each limb."""
    import cv2

    heat = np.zeros((H, W, 19), np.float32)
    pafs = np.zeros((H, W, 38), np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    for person in people:
        for part, p in enumerate(person):
            if p is not None:
                heat[:, :, part] = np.maximum(heat[:, :, part], np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / spread))
        for (a, b), (cx, cy) in zip(op.LIMB_SEQ, op.PAF_INDEX):
            pa, pb = person[a - 1], person[b - 1]
            if pa is None or pb is None:
                continue
            v = np.array(pb, float) - np.array(pa, float)
            v /= np.linalg.norm(v)
            band = np.zeros((H, W), np.uint8)
            cv2.line(band, pa, pb, 1, thickness=thickness)
            pafs[:, :, cx][band > 0] = v[0]
            pafs[:, :, cy][band > 0] = v[1]
    return heat, pafs


def test_peaks_limbs_and_people_of_two_synthetic_people():
    heat, pafs = synthetic_maps([PERSON_A, PERSON_B])
    peaks = op.find_peaks(heat)
    for part in range(18):  # every visible part is found exactly where it was put, and nothing else
        expected = sorted(p[part] for p in (PERSON_A, PERSON_B) if p[part] is not None)
        assert sorted((x, y) for x, y, _, _ in peaks[part]) == expected, part
        assert all(abs(s - 1.0) < 1e-6 for _, _, s, _ in peaks[part])  # the raw heatmap value at the peak
    ids = [i for part in peaks for *_, i in part]
    assert ids == list(range(len(ids)))
    limbs = op.connect_limbs(peaks, pafs, H)
    assert op.LIMB_SEQ[3] == (4, 5) and len(limbs[3]) == 1  # right elbow → wrist: only A has a right wrist
    candidates, people = op.assemble_people(peaks, limbs)
    assert len(people) == 2
    found = []
    for row in people:
        found.append([None if i < 0 else tuple(int(v) for v in candidates[int(i), :2]) for i in row[:18]])
        assert row[-1] == sum(i >= 0 for i in row[:18])  # part count
    assert sorted(found, key=lambda p: p[1][0]) == [PERSON_A, PERSON_B]


def test_a_pair_against_the_field_is_not_a_limb():
    heat, pafs = synthetic_maps([PERSON_A])
    peaks = op.find_peaks(heat)
    pafs_reversed = -pafs  # every field points from the second part to the first
    limbs = op.connect_limbs(peaks, pafs_reversed, H)
    assert all(rows is None or len(rows) == 0 for rows in limbs)
    _, people = op.assemble_people(peaks, limbs)
    assert len(people) == 0


def test_people_with_few_parts_are_dropped():
    lonely = [None] * 18
    lonely[1], lonely[2], lonely[3] = (60, 40), (50, 40), (46, 60)  # neck, right shoulder, right elbow: 3 parts
    heat, pafs = synthetic_maps([lonely])
    peaks = op.find_peaks(heat)
    candidates, people = op.assemble_people(peaks, op.connect_limbs(peaks, pafs, H))
    assert len(candidates) == 3 and len(people) == 0
    _, kept = op.assemble_people(peaks, op.connect_limbs(peaks, pafs, H), min_parts=3)
    assert len(kept) == 1


def test_pose_json_is_normalised_and_renders_at_the_keypoints():
    heat, pafs = synthetic_maps([PERSON_A])
    peaks = op.find_peaks(heat)
    candidates, people = op.assemble_people(peaks, op.connect_limbs(peaks, pafs, H))
    pose = op.pose_json(candidates, people, W, H)
    assert pose["canvas_width"] == W and pose["canvas_height"] == H
    flat = pose["people"][0]["pose_keypoints_2d"]
    assert flat[:3] == [40 / W, 20 / H, 1.0] and len(flat) == 54
    decoded, h, w = decode_pose_json(pose)
    assert (h, w) == (H, W)
    assert [None if p is None else (round(p[0]), round(p[1])) for p in decoded[0].body] == PERSON_A
    canvas = render_pose(pose, hands=False, face=False)
    assert tuple(canvas[36, 52]) == BODY_COLORS[5]  # left shoulder's dot in its colour
    assert tuple(canvas[134, 48]) == BODY_COLORS[13]


class _FakeBodyNet(nn.Module):
    """Stands in for the network: fixed heatmaps/PAFs at 1/8 of whatever input it gets."""

    def __init__(self, heat: np.ndarray, pafs: np.ndarray) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.heat, self.pafs = heat, pafs
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        h, w = x.shape[2] // 8, x.shape[3] // 8
        import cv2

        def at(m):
            return torch.from_numpy(np.stack([cv2.resize(m[:, :, c], (w, h), interpolation=cv2.INTER_AREA)
                                              for c in range(m.shape[2])])[None])

        return at(self.pafs), at(self.heat)


def test_maps_come_back_at_image_size_and_keypoints_land_in_place():
    heat, pafs = synthetic_maps([PERSON_A], spread=60.0, thickness=9)  # survives the 1/8 resolution round trip
    fake = _FakeBodyNet(heat, pafs)
    rgb = np.zeros((H, W, 3), np.uint8)
    pose = op.detect_pose_json(fake, rgb)
    # The picture is shown to the network 0.5 × 368 = 184 px high, padded to a multiple of 8.
    assert fake.seen == [(1, 3, 184, 200)]
    decoded, _, _ = decode_pose_json(pose)
    assert len(decoded) == 1
    for got, want in zip(decoded[0].body, PERSON_A):
        assert abs(got[0] - want[0]) <= 2 and abs(got[1] - want[1]) <= 2


# -- end to end ----------------------------------------------------------------------------------------------------

def test_openpose_preprocessor_runs_the_network_from_the_annotators_folder(body_file, monkeypatch):
    NETWORKS.clear()
    monkeypatch.setattr(op, "BOXSIZE", 64)  # the real 368 works the same, only slower on a CPU
    img = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = preprocess("openpose", img, resolution=96, annotator_dirs=[body_file], annotator_home=body_file,
                     device="cpu")
    assert out.shape == (96, 128, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert len(NETWORKS) == 1
    hint = prepare_hint(torch.from_numpy(img.astype(np.float32) / 255.0)[None], "openpose", resolution=64,
                        width=80, height=64, annotator_dirs=[body_file], annotator_home=body_file, device="cpu")
    assert tuple(hint.shape) == (1, 64, 80, 3) and hint.dtype == torch.float32
    assert len(NETWORKS) == 1  # loaded once, then reused from the cache
    net = NETWORKS.get(body_file / "body_pose_model.pth", torch.device("cpu"), lambda p: pytest.fail("reloaded"))
    assert isinstance(net, op.BodyPoseNet) and not net.training


# -- hands (openpose_hand) -----------------------------------------------------------------------------------------

from darkroom.control import annotator_openpose_hand as oh  # noqa: E402

#: hand_pose_model.pth (lllyasviel/Annotators), from pytorch-openpose's handpose_model.
REAL_HAND_KEYS = {
    "conv1_1.weight": (64, 3, 3, 3),
    "conv4_3.weight": (512, 512, 3, 3),
    "conv5_3_CPM.weight": (128, 512, 3, 3),
    "conv6_1_CPM.weight": (512, 128, 1, 1),
    "conv6_2_CPM.weight": (22, 512, 1, 1),
    "Mconv1_stage2.weight": (128, 150, 7, 7),
    "Mconv7_stage6.bias": (22,),
}


def test_hand_network_has_the_real_checkpoint_layout():
    with torch.device("meta"):
        net = oh.HandPoseNet()
    sd = {op.checkpoint_key(k): tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in REAL_HAND_KEYS.items():
        assert sd[key] == shape, key
    assert len(sd) == 104 and sum(p.numel() for p in net.parameters()) == 36_832_324  # × 4 bytes ≈ the 147 MB file
    assert all(isinstance(getattr(net, f"model{t}")[-1], nn.Conv2d) for t in range(2, 7))


def test_hand_boxes_follow_openpose():
    body: list = [None] * 18
    body[5], body[6], body[7] = (100.0, 100.0), (100.0, 140.0), (100.0, 180.0)  # left arm hanging down
    # centre a third of the forearm below the wrist (193.2), side 1.5 × 40 = 60
    assert oh.hand_boxes(body, 400, 400) == [(70, 163, 60, True)]
    assert oh.hand_boxes(body, 400, 210) == [(70, 163, 46, True)]  # clipped by the bottom edge
    body[2], body[3], body[4] = (300.0, 100.0), (300.0, 140.0), (300.0, 180.0)
    assert oh.hand_boxes(body, 400, 400) == [(70, 163, 60, True), (270, 163, 60, False)]
    body[4] = None  # no right wrist: no right box
    assert oh.hand_boxes(body, 400, 400) == [(70, 163, 60, True)]
    body[2], body[3], body[4] = (300.0, 100.0), (300.0, 110.0), (300.0, 118.0)  # a short arm: 1.5 × 10 = 15 px
    assert oh.hand_boxes(body, 400, 400) == [(70, 163, 60, True)]  # under 20 px: no box


class _FakeHandNet(nn.Module):
    """22 heatmaps with chosen bumps, placed in whatever square it is shown."""

    def __init__(self, bumps: dict[int, list[tuple[float, float, float, float]]]) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.bumps = bumps  # joint → [(x, y) as fractions of the crop, height, width in fractions]

    def forward(self, x):
        h, w = x.shape[2] // 8, x.shape[3] // 8
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        out = torch.zeros(1, 22, h, w)
        for joint, bumps in self.bumps.items():
            for fx, fy, height, width in bumps:
                d2 = (xx / w - fx) ** 2 + (yy / h - fy) ** 2
                out[0, joint] += height * torch.exp(-d2 / (2 * width**2))
        return out


def test_hand_joints_are_the_peak_of_the_strongest_region():
    fake = _FakeHandNet({0: [(0.25, 0.5, 1.0, 0.05)],
                         3: [(0.2, 0.2, 1.0, 0.02), (0.7, 0.7, 0.5, 0.1)]})  # tall and thin vs low and broad
    joints = oh.hand_keypoints(fake, np.zeros((100, 100, 3), np.uint8))
    assert len(joints) == 21 and all(joints[j] is None for j in range(21) if j not in (0, 3))
    assert abs(joints[0][0] - 25) <= 2 and abs(joints[0][1] - 50) <= 2
    assert abs(joints[3][0] - 70) <= 2 and abs(joints[3][1] - 70) <= 2  # the broad region holds more heat


def test_openpose_hand_adds_hands_to_the_json_and_the_drawing():
    body = [None if p is None else (float(p[0]), float(p[1])) for p in PERSON_A]
    heat, pafs = synthetic_maps([PERSON_A], spread=60.0, thickness=9)
    fake_hand = _FakeHandNet({j: [(0.3 + 0.02 * j, 0.5, 1.0, 0.05)] for j in range(21)})
    pose = op.detect_pose_json(_FakeBodyNet(heat, pafs), np.zeros((H, W, 3), np.uint8), hand_net=fake_hand)
    person = pose["people"][0]
    assert len(person["hand_left_keypoints_2d"]) == len(person["hand_right_keypoints_2d"]) == 63
    boxes = oh.hand_boxes(body, W, H)
    x, y, side, _ = next(b for b in boxes if b[3])
    lx, ly = person["hand_left_keypoints_2d"][0] * W, person["hand_left_keypoints_2d"][1] * H
    assert abs(lx - (x + 0.3 * side)) <= 2 and abs(ly - (y + 0.5 * side)) <= 2  # joint 0 where the fake put it
    canvas = render_pose(pose, hands=True, face=False)
    assert tuple(canvas[int(ly), int(lx)]) == (0, 0, 255)  # a hand joint's blue dot


@pytest.fixture(scope="module")
def hand_file(body_file):
    torch.manual_seed(4)
    net = oh.HandPoseNet()
    torch.save({op.checkpoint_key(k): v.half() for k, v in net.state_dict().items()}, body_file / "hand_pose_model.pth")
    return body_file


def test_openpose_hand_preprocessor_runs_both_networks(hand_file, monkeypatch):
    NETWORKS.clear()
    monkeypatch.setattr(op, "BOXSIZE", 64)
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = preprocess("openpose_hand", img, resolution=64, annotator_dirs=[hand_file], annotator_home=hand_file,
                     device="cpu")
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert len(NETWORKS) == 2
    net = NETWORKS.get(hand_file / "hand_pose_model.pth", torch.device("cpu"), lambda p: pytest.fail("not loaded"))
    assert isinstance(net, oh.HandPoseNet)
    assert len(oh.hand_keypoints(net, img[:40, :40, ::-1].copy(), scales=(0.25,), boxsize=128)) == 21
