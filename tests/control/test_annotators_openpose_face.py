"""OpenPose face (openpose_face, openpose_faceonly, openpose_full): the network in the real facenet.pth layout, the
face box from body keypoints, landmark peaks and drawing on synthetic heatmaps, and the three preprocessors end to
end (through the OpenPose runner with stand-in networks, and from random-weight files in an annotators folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from test_annotators_openpose import PERSON_A, _FakeBodyNet, _FakeHandNet, synthetic_maps  # noqa: E402

from darkroom.control import annotator_openpose as op  # noqa: E402
from darkroom.control import annotator_openpose_face as of  # noqa: E402
from darkroom.control import annotator_openpose_hand as oh  # noqa: E402
from darkroom.control import annotators  # noqa: E402
from darkroom.control.annotators import NETWORKS, AnnotatorFileError  # noqa: E402
from darkroom.control.openpose import BODY_COLORS, decode_pose_json, render_pose  # noqa: E402
from darkroom.control.preprocess import preprocess  # noqa: E402

FACE_PREPROCESSORS = ("openpose_face", "openpose_faceonly", "openpose_full")

#: Every layer of facenet.pth (lllyasviel/Annotators) as (name, out, in, kernel): annotator/openpose/face.py's
#: FaceNet, whose attributes are the checkpoint's keys ("<name>.weight", "<name>.bias"), after CMU's
#: models/face/pose_deploy.prototxt.
REAL_FACE_LAYERS = (
    ("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 128, 64, 3), ("conv2_2", 128, 128, 3),
    ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
    ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 128, 512, 3),
    ("conv6_1_CPM", 512, 128, 1), ("conv6_2_CPM", 71, 512, 1),
    *((f"Mconv{i}_stage{t}", 71 if i == 7 else 128, 199 if i == 1 else 128, 7 if i <= 5 else 1)
      for t in range(2, 7) for i in range(1, 8)),
)
REAL_FACE_TENSORS = 104  # 52 convolutions, weight and bias each
REAL_FACE_PARAMETERS = 38_425_706  # × 4 bytes ≈ the 154 MB file


def face_state_shapes() -> dict[str, tuple[int, ...]]:
    """Our FacePoseNet's parameters under the checkpoint's names, with their shapes."""
    with torch.device("meta"):
        net = of.FacePoseNet()
    return {op.checkpoint_key(k): tuple(v.shape) for k, v in net.state_dict().items()}


def test_face_network_has_the_real_checkpoint_layout():
    real = {}
    for name, cout, cin, k in REAL_FACE_LAYERS:
        real[f"{name}.weight"] = (cout, cin, k, k)
        real[f"{name}.bias"] = (cout,)
    assert face_state_shapes() == real
    assert len(real) == REAL_FACE_TENSORS
    assert sum(int(np.prod(s)) for s in real.values()) == REAL_FACE_PARAMETERS
    with torch.device("meta"):
        net = of.FacePoseNet()
    # Each stage ends on a linear 1×1 convolution (the heatmaps); everything before it is followed by a ReLU.
    for stage in [net.model1_1] + [net.get_submodule(f"model{t}") for t in range(2, 7)]:
        assert isinstance(stage[-1], nn.Conv2d) and isinstance(stage[-2], nn.ReLU)
    assert isinstance(net.model1_0[-1], nn.ReLU)


def _expanded_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A checkpoint with the given keys and shapes, each tensor a broadcast zero (a few bytes on disk)."""
    torch.save({k: torch.zeros(1).expand(s) for k, s in shapes.items()}, path)
    return path


def test_loading_rejects_another_network(tmp_path):
    # The hand network has the same layer names, but 22 heatmaps instead of 71.
    hand = face_state_shapes()
    for k in hand:
        if k.startswith(("conv6_2_CPM", "Mconv7")):
            hand[k] = (22, *hand[k][1:])
        elif k.startswith("Mconv1_") and k.endswith("weight"):
            hand[k] = (128, 150, 7, 7)
    path = _expanded_file(tmp_path / "facenet.pth", hand)
    with pytest.raises(AnnotatorFileError, match=r"not a OpenPose face \(facenet.pth\).*wrong shape: model1_1"):
        of.load_face_model(path)
    body = {"conv1_1.weight": (64, 3, 3, 3), "conv4_3_CPM.weight": (256, 512, 3, 3)}  # a body_pose_model.pth part
    path = _expanded_file(tmp_path / "body.pth", body)
    with pytest.raises(AnnotatorFileError, match="missing: .*unexpected: conv4_3_CPM.weight"):
        of.load_face_model(path)


def test_a_file_in_the_real_layout_loads(tmp_path):
    path = _expanded_file(tmp_path / "facenet.pth", face_state_shapes())
    net = of.load_face_model(path)
    assert isinstance(net, of.FacePoseNet)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 64, 48))
    assert tuple(out.shape) == (2, 71, 8, 6) and not out.any()  # 71 maps at 1/8; all-zero weights give zeros


# -- the face box ------------------------------------------------------------------------------------------------


def _body(nose=None, right_eye=None, left_eye=None, right_ear=None, left_ear=None) -> list:
    body: list = [None] * 18
    body[0], body[14], body[15], body[16], body[17] = nose, right_eye, left_eye, right_ear, left_ear
    return body


def test_face_box_from_nose_eyes_and_ears():
    # PERSON_A's head: eyes 4 px from the nose (× 3 = 12), ears 8 px (× 1.5 = 12): a 24 px box on the nose.
    assert of.face_box(PERSON_A, 160, 150) == (28, 8, 24)
    # The farther reach wins: an ear 20 px away (× 1.5 = 30) beats an eye 5 px away (× 3 = 15).
    assert of.face_box(_body((100.0, 100.0), right_eye=(95.0, 97.0), right_ear=(80.0, 95.0)), 400, 400) == (70, 70, 60)
    # Distances are the larger of |dx| and |dy|; one eye is enough; coordinates are truncated after the arithmetic.
    assert of.face_box(_body((50.6, 50.6), left_eye=(47.1, 52.0)), 400, 400) == (40, 40, 21)
    assert of.face_box(_body((100.0, 100.0), left_ear=(100.0, 120.0)), 400, 400) == (70, 70, 60)


def test_face_box_at_the_edges_follows_the_annotators():
    body = _body((10.0, 100.0), right_eye=(0.0, 95.0))  # half side 30: the box would start at x = -20
    assert of.face_box(body, 400, 400) == (0, 70, 60)  # moved to the edge, not shrunk
    body = _body((100.0, 100.0), right_eye=(90.0, 100.0))
    assert of.face_box(body, 120, 400) == (70, 70, 60)  # reaches past the right edge: only the half side is checked
    assert of.face_box(body, 95, 400) == (70, 70, 25)  # the half side passes the edge: cut there
    assert of.face_box(body, 400, 92) == (70, 70, 22)  # the same at the bottom


def test_no_face_box_without_a_nose_an_eye_or_ear_or_room():
    assert of.face_box(_body(None, right_eye=(40.0, 40.0)), 400, 400) is None
    assert of.face_box(_body((40.0, 40.0)), 400, 400) is None
    assert of.face_box(_body((40.0, 40.0), left_eye=(37.0, 40.0)), 400, 400) is None  # 2 × 9 = 18 px < 20
    assert of.face_box(_body((40.0, 40.0), right_eye=(43.5, 40.0)), 400, 400) == (29, 29, 21)


# -- landmarks ---------------------------------------------------------------------------------------------------


def test_landmark_peaks_known_answer():
    maps = np.zeros((5, 10, 12), np.float32)
    maps[0, 4, 7], maps[0, 2, 2] = 0.9, 0.5  # the maximum wins
    maps[1] = 0.04  # nothing above 0.05
    maps[2, 0, 5] = 0.8  # on row 0: the annotators' "missing"
    maps[3, 6, 0] = 0.8  # on column 0
    maps[4, 3, 9] = maps[4, 8, 1] = 0.2  # a tie: the first in row order
    assert of.landmark_peaks(maps) == [(7.0, 4.0), None, None, None, (9.0, 3.0)]
    assert of.landmark_peaks(maps, threshold=0.6) == [(7.0, 4.0), None, None, None, None]


class _FakeFaceNet(nn.Module):
    """71 maps drawn once on a 96 × 96 grid spanning the crop (Gaussian bumps at chosen crop fractions), resized with
    aligned corners to 1/8 of whatever it is shown, which it records."""

    def __init__(self, landmarks: dict[int, tuple[float, float]], background: float = 0.0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
        self.maps = torch.zeros(1, 71, 96, 96)
        for j, (fx, fy) in landmarks.items():
            self.maps[0, j] = torch.exp(-((xx - fx) ** 2 + (yy - fy) ** 2) / 0.004)
        self.maps[0, 70] = background
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return F.interpolate(self.maps, (x.shape[2] // 8, x.shape[3] // 8), mode="bilinear", align_corners=True)


def test_face_keypoints_in_a_crop():
    fake = _FakeFaceNet({0: (0.25, 0.5), 69: (0.8, 0.1)})
    crop = np.full((41, 61, 3), 128, np.uint8)
    crop[0, 0] = (0, 0, 255)
    points = of.face_keypoints(fake, crop)
    assert len(points) == 70 and all(points[j] is None for j in range(1, 69))
    assert abs(points[0][0] - 15) <= 1 and abs(points[0][1] - 20) <= 1  # 0.25 × 60, 0.5 × 40
    assert abs(points[69][0] - 48) <= 1 and abs(points[69][1] - 4) <= 1
    x = fake.seen[0]
    assert tuple(x.shape) == (1, 3, 384, 384)  # any crop is seen square at 384 px
    assert float(x[0, :, 200, 200].abs().max()) == 0.0  # 128 / 256 - 0.5: grey is zero
    assert float(x[0, 2].max()) > float(x[0, 0].max())  # the crop's channels in the order given (BGR)
    assert of.face_keypoints(_FakeFaceNet({}, background=1.0), crop) == [None] * 70  # the background is no landmark


def test_detect_pose_json_adds_faces_where_the_box_is():
    heat, pafs = synthetic_maps([PERSON_A], spread=60.0, thickness=9)
    fake_face = _FakeFaceNet({0: (0.3, 0.4), 1: (0.7, 0.6)})
    rgb = np.zeros((150, 160, 3), np.uint8)
    rgb[..., 0] = 200  # red, which the face network sees in BGR order
    pose = op.detect_pose_json(_FakeBodyNet(heat, pafs), rgb, face_net=fake_face)
    person = pose["people"][0]
    assert person["hand_left_keypoints_2d"] is None and len(person["face_keypoints_2d"]) == 210
    assert float(fake_face.seen[0][0, 2].mean()) > 0.2 > float(fake_face.seen[0][0, 0].mean())
    decoded, h, w = decode_pose_json(pose)
    body = [None if p is None else (round(p[0]), round(p[1])) for p in decoded[0].body]  # the detected pixels
    x, y, side = of.face_box(body, w, h)
    face = decoded[0].face
    assert all(p is None for p in face[2:])
    for (fx, fy), got in zip(((0.3, 0.4), (0.7, 0.6)), face[:2]):
        assert abs(got[0] - (x + fx * (side - 1))) <= 1 and abs(got[1] - (y + fy * (side - 1))) <= 1
    canvas = render_pose(pose, hands=False, face=True)
    for px, py in face[:2]:
        assert tuple(canvas[int(py), int(px)]) == (255, 255, 255)  # white face dots over the figure
    assert tuple(canvas[36, 52]) == BODY_COLORS[5]
    only = render_pose(of.without_bodies(pose), hands=False, face=True)
    assert tuple(only[int(face[0][1]), int(face[0][0])]) == (255, 255, 255)
    assert set(map(tuple, only.reshape(-1, 3))) == {(0, 0, 0), (255, 255, 255)}  # nothing but the face


def test_a_body_without_a_face_box_gets_no_face():
    headless = [None if i in (0, 14, 15, 16, 17) else p for i, p in enumerate(PERSON_A)]
    heat, pafs = synthetic_maps([headless], spread=60.0, thickness=9)
    fake_face = _FakeFaceNet({0: (0.5, 0.5)})
    pose = op.detect_pose_json(_FakeBodyNet(heat, pafs), np.zeros((150, 160, 3), np.uint8), face_net=fake_face)
    assert len(pose["people"]) == 1 and pose["people"][0]["face_keypoints_2d"] is None
    assert fake_face.seen == []


# -- the OpenPose runner with stand-in networks --------------------------------------------------------------------


def test_the_runner_draws_what_each_preprocessor_asks_for(tmp_path, monkeypatch):
    NETWORKS.clear()
    heat, pafs = synthetic_maps([PERSON_A], spread=60.0, thickness=9)
    pad = [[0, 192 - heat.shape[0]], [0, 192 - heat.shape[1]], [0, 0]]  # the runner pads 150 × 160 to 192 × 192
    body = _FakeBodyNet(np.pad(heat, pad), np.pad(pafs, pad))
    hand = _FakeHandNet({j: [(0.3 + 0.02 * j, 0.5, 1.0, 0.05)] for j in range(21)})
    face = _FakeFaceNet({j: (0.2 + 0.008 * j, 0.3 + 0.005 * j) for j in range(70)})
    monkeypatch.setattr(op, "load_body_model", lambda path: body)
    monkeypatch.setattr(oh, "load_hand_model", lambda path: hand)
    monkeypatch.setattr(of, "load_face_model", lambda path: face)
    files = {}
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"")
    img = np.zeros((150, 160, 3), np.uint8)
    out = {}
    for pre in ("openpose", *FACE_PREPROCESSORS):
        paths = [files[f] for f in annotators.ANNOTATORS[pre].files]
        out[pre] = op.run(pre, img, 150, paths, torch.device("cpu"))
        assert out[pre].shape == (150, 160, 3) and out[pre].dtype == np.uint8
    colours = {pre: set(map(tuple, canvas.reshape(-1, 3))) for pre, canvas in out.items()}
    white = (255, 255, 255)
    assert white not in colours["openpose"] and BODY_COLORS[0] in colours["openpose"]
    assert white in colours["openpose_face"] and BODY_COLORS[0] in colours["openpose_face"]
    assert colours["openpose_faceonly"] == {(0, 0, 0), white}
    assert {white, BODY_COLORS[0]} <= colours["openpose_full"]
    blue = {pre: int(np.all(canvas == (0, 0, 255), axis=2).sum()) for pre, canvas in out.items()}
    assert blue["openpose_full"] > blue["openpose_face"] == blue["openpose"]  # hand joints are blue dots
    ys, xs = np.nonzero(np.all(out["openpose_faceonly"] == 255, axis=2))
    assert 26 <= xs.min() and xs.max() <= 54 and 6 <= ys.min() and ys.max() <= 34  # inside the (28, 8, 24) box
    # The faces alone are exactly the face dots of the body + face drawing.
    assert np.array_equal(out["openpose_faceonly"].any(axis=2), (out["openpose_face"] == 255).all(axis=2))


# -- end to end from files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pose_files(tmp_path_factory):
    """Random body, hand and face networks saved under their real names in a models/annotators folder (fp16)."""
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    for seed, (cls, name) in enumerate(((op.BodyPoseNet, "body_pose_model.pth"), (oh.HandPoseNet,
                                        "hand_pose_model.pth"), (of.FacePoseNet, "facenet.pth"))):
        torch.manual_seed(seed)
        net = cls()
        torch.save({op.checkpoint_key(k): v.half() for k, v in net.state_dict().items()}, folder / name)
    return folder


def test_face_preprocessors_run_from_the_annotators_folder(pose_files, monkeypatch):
    for pre in FACE_PREPROCESSORS:
        monkeypatch.setitem(annotators.RUNNERS, pre, ".annotator_openpose")
    monkeypatch.setattr(op, "BOXSIZE", 64)  # the real sizes work the same, only slower on a CPU
    monkeypatch.setattr(of, "FACE_INPUT", 64)
    img = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for pre in FACE_PREPROCESSORS:
        NETWORKS.clear()
        out = preprocess(pre, img, resolution=64, annotator_dirs=[pose_files], annotator_home=pose_files,
                         device="cpu")
        assert out.shape == (64, 85, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert len(NETWORKS) == len(annotators.ANNOTATORS[pre].files)
    net = NETWORKS.get(pose_files / "facenet.pth", torch.device("cpu"), lambda p: pytest.fail("not loaded"))
    assert isinstance(net, of.FacePoseNet) and not net.training
    points = of.face_keypoints(net, img[:40, :30, ::-1].copy())
    assert len(points) == 70
    assert all(p is None or (0 < p[0] < 30 and 0 < p[1] < 40) for p in points)
