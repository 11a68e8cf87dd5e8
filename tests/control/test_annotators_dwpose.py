"""DWPose (dw_openpose_full): the pre/post-processing maths exactly (letterbox, YOLOX grid decoding, NMS, the crop's
affine map, SimCC decoding, COCO-WholeBody → OpenPose), and the preprocessor end to end on two tiny ONNX networks
with the real input/output names whose outputs are set by the test (a detector giving known boxes, a pose model
giving SimCC peaks at known bins)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from darkroom.control import annotator_dwpose as dw
from darkroom.control import annotators as an
from darkroom.control.openpose import BODY_COLORS

# -- pure maths -----------------------------------------------------------------------------------------------------


def test_letterbox_scales_to_fit_top_left_on_grey():
    img = np.zeros((160, 320, 3), np.uint8)
    img[:, :, 0] = 200
    x, r = dw.letterbox(img)
    assert r == 2.0 and x.shape == (3, 640, 640) and x.dtype == np.float32
    assert np.all(x[0, :320, :] == 200) and np.all(x[1, :320, :] == 0)  # the picture, 640 × 320, RGB kept
    assert np.all(x[:, 320:, :] == 114)  # grey below it


def test_yolox_grid_decoding():
    pred = np.zeros((8400, 7))
    row8 = 3 * 80 + 5  # stride 8, cell (x 5, y 3)
    row32 = 6400 + 1600 + 2 * 20 + 7  # stride 32, cell (x 7, y 2)
    pred[row8] = [0.5, 0.25, 0.0, np.log(2), 0.5, 0.8, 0.2]
    pred[row32] = [0.0, 0.0, np.log(3), 0.0, 1.0, 0.1, 0.9]
    boxes, scores = dw.decode_yolox(pred)
    # centre (5.5, 3.25) × 8 = (44, 26); size (1, 2) × 8 = (8, 16)
    np.testing.assert_allclose(boxes[row8], [40, 18, 48, 34])
    np.testing.assert_allclose(boxes[row32], [224 - 48, 64 - 16, 224 + 48, 64 + 16])
    np.testing.assert_allclose(scores[row8], [0.4, 0.1])
    np.testing.assert_allclose(scores[row32], [0.1, 0.9])
    with pytest.raises(an.AnnotatorFileError, match="8400"):
        dw.decode_yolox(np.zeros((100, 7)))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 99, 99], [10, 0, 109, 99], [50, 0, 149, 99], [300, 300, 310, 310]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.1])
    # IoU(1, 0) = 90 × 100 / (2 × 10000 − 9000) = 0.818 → dropped; IoU(1, 2) = 60/140 = 0.43 ≤ 0.45 → kept
    assert dw.nms(boxes, scores) == [1, 2, 3]
    assert dw.nms(boxes, scores, iou=0.4) == [1, 3]


def test_box_grows_and_takes_the_crop_aspect():
    c, s = dw.box_center_scale(np.array([224, 128, 416, 384]))  # 192 × 256 → 240 × 320 (already 3:4)
    np.testing.assert_allclose(c, [320, 256])
    np.testing.assert_allclose(s, [240, 320])
    c, s = dw.box_center_scale(np.array([0, 0, 400, 100]))  # wide: height follows the width
    np.testing.assert_allclose(c, [200, 50])
    np.testing.assert_allclose(s, [500, 500 / 0.75])


def test_crop_maps_the_box_onto_288_by_384():
    m = dw.crop_matrix(np.array([320.0, 256.0]), np.array([240.0, 320.0]))
    corners = np.array([[200, 96, 1], [440, 416, 1], [320, 256, 1]], float)
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [288, 384], [144, 192]])
    img = np.zeros((512, 640, 3), np.uint8)
    img[216, 260] = 255  # crop (60 × 1.2, 120 × 1.2) = (72, 144)
    x, center, scale = dw.crop_person(img, np.array([224, 128, 416, 384]))
    assert x.shape == (3, 384, 288) and x.dtype == np.float32
    ys, xs = np.nonzero(x[0] > 0)
    assert (ys.min(), xs.min()) >= (143, 71) and (ys.max(), xs.max()) <= (145, 73)
    assert np.argmax(x[0]) == 144 * 288 + 72
    np.testing.assert_allclose(x[:, 0, 0], -dw.MEAN / dw.STD, rtol=1e-6)  # black, normalised


def test_simcc_decoding():
    sx = np.zeros((1, 3, 576))
    sy = np.zeros((1, 3, 768))
    sx[0, 0, 100], sy[0, 0, 700] = 0.9, 0.7
    sx[0, 1, 575], sy[0, 1, 1] = 0.4, 0.8
    sx[0, 2] -= 1.0  # nothing above zero: missing
    locs, vals = dw.decode_simcc(sx, sy)
    np.testing.assert_allclose(locs[0], [[50, 350], [287.5, 0.5], [-0.5, -0.5]])
    np.testing.assert_allclose(vals[0], [0.7, 0.4, -1.0])


def test_wholebody_to_openpose_order_and_neck():
    pts = np.stack([np.arange(133.0), np.arange(133.0) + 1000], 1)
    scores = np.full(133, 0.9)
    info = dw.to_openpose(pts, scores)
    assert info.shape == (134, 3)
    # OpenPose body-18 from COCO: nose, neck, r-shoulder/elbow/wrist, l-shoulder/elbow/wrist, r-hip/knee/ankle,
    # l-hip/knee/ankle, r-eye, l-eye, r-ear, l-ear
    assert [int(v) for v in info[:18, 0] if v != 5.5] == [0, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    np.testing.assert_allclose(info[1], [5.5, 1005.5, 1.0])  # neck = shoulders' mean, score 1
    np.testing.assert_allclose(info[18:, 0], np.arange(17, 133))  # feet, face, hands shift by one
    scores[6] = 0.2
    assert dw.to_openpose(pts, scores)[1, 2] == 0.0


def test_person_parts_and_missing_points():
    info = np.zeros((134, 3))
    info[:, 0], info[:, 1], info[:, 2] = np.arange(134), 1, 0.9
    info[3, 2] = 0.29
    info[113:134, 2] = 0.1  # right hand all missing → none
    p = dw.to_person(info)
    assert len(p.body) == 18 and p.body[3] is None and p.body[0] == (0.0, 1.0)
    assert p.left_hand[0] == (92.0, 1.0) and len(p.left_hand) == 21 and p.right_hand is None
    assert len(p.face) == 70 and p.face[0] == (24.0, 1.0) and p.face[68:] == [p.body[14], p.body[15]]
    js = dw.pose_json([dw.Person(body=[(10, 20), (-1, 5), None])], 100, 50)
    assert js["people"][0]["pose_keypoints_2d"] == [0.1, 0.4, 1.0, 0, 0, 0, 0, 0, 0]


def test_without_onnxruntime_it_says_what_to_install(tmp_path, monkeypatch):
    for f in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(an.AnnotatorUnavailableError, match="pip install onnxruntime"):
        an.run_annotator("dw_openpose_full", [tmp_path], tmp_path, np.zeros((64, 64, 3), np.uint8))


# -- end to end on tiny ONNX networks ---------------------------------------------------------------------------------


def _constant_model(path, input_name, input_shape, outputs: dict[str, np.ndarray]) -> None:
    """An ONNX graph taking `input_name` and answering fixed tensors (plus 0 × the input's mean, so it is used)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((), np.float32))),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    outs = []
    for name, value in outputs.items():
        nodes.append(helper.make_node("Constant", [], [f"{name}_c"],
                                      value=numpy_helper.from_array(value.astype(np.float32))))
        nodes.append(helper.make_node("Add", [f"{name}_c", "nothing"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                             list(input_shape))], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _detector_rows(people: list[tuple[int, tuple[float, float, float, float]]]) -> np.ndarray:
    """(1, 8400, 85) YOLOX output with stride-32 rows: (class, (cx, cy, w, h)) at objectness 0.9, class score 0.9."""
    out = np.zeros((1, 8400, 85))
    for k, (cls, (cx, cy, w, h)) in enumerate(people):
        gx, gy = int(cx // 32), int(cy // 32)
        row = 8000 + gy * 20 + gx
        out[0, row, :4] = [cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32)]
        out[0, row, 4] = 0.9 - 0.01 * k
        out[0, row, 5 + cls] = 0.9
    return out


@pytest.fixture(scope="module")
def pose_case(tmp_path_factory):
    """Tiny networks: one person box (224, 128)-(416, 384) in a 640 × 512 picture, SimCC peaks at known bins."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("models") / "annotators"
    folder.mkdir()
    _constant_model(folder / "yolox_l.onnx", "images", (1, 3, 640, 640), {"output": _detector_rows(
        [(0, (320, 256, 192, 256)), (0, (320, 290, 192, 256)), (16, (100, 100, 64, 64))])})
    rng = np.random.default_rng(0)
    bins_x = rng.integers(40, 536, 133)
    bins_y = rng.integers(40, 728, 133)
    sx = np.full((1, 133, 576), 0.01)
    sy = np.full((1, 133, 768), 0.01)
    sx[0, np.arange(133), bins_x] = 0.9
    sy[0, np.arange(133), bins_y] = 0.8
    sy[0, 2, bins_y[2]] = 0.2  # right eye below the 0.3 threshold
    _constant_model(folder / "dw-ll_ucoco_384.onnx", "input", (1, 3, 384, 288), {"simcc_x": sx, "simcc_y": sy})
    # the crop is 240 × 320 around (320, 256): crop pixel p → p / 1.2 + (200, 96); a bin is half a pixel
    expected = np.stack([bins_x / 2 / 1.2 + 200, bins_y / 2 / 1.2 + 96], 1)
    an.NETWORKS.clear()
    yield folder, expected
    an.NETWORKS.clear()


def test_detector_finds_the_person_box(pose_case):
    folder, _ = pose_case
    det = dw.OnnxNetwork(folder / "yolox_l.onnx").to("cpu")
    boxes = dw.detect_people(det, np.zeros((512, 640, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[224, 128, 416, 384]], atol=1e-4)  # the overlapping box and the dog go


def test_keypoints_land_where_the_peaks_say(pose_case):
    folder, expected = pose_case
    det = dw.OnnxNetwork(folder / "yolox_l.onnx").to("cpu")
    pose = dw.OnnxNetwork(folder / "dw-ll_ucoco_384.onnx").to("cpu")
    (person,) = dw.detect_people_poses(det, pose, np.zeros((512, 640, 3), np.uint8))
    np.testing.assert_allclose(person.body[0], expected[0], atol=1e-4)  # nose
    np.testing.assert_allclose(person.body[2], expected[6], atol=1e-4)  # right shoulder
    np.testing.assert_allclose(person.body[1], (expected[5] + expected[6]) / 2, atol=1e-4)  # neck
    assert person.body[14] is None  # right eye (COCO 2 → OpenPose 14) scored 0.2
    np.testing.assert_allclose(person.body[13], expected[15], atol=1e-4)  # left ankle
    np.testing.assert_allclose(person.left_hand, expected[91:112], atol=1e-4)
    np.testing.assert_allclose(person.right_hand, expected[112:133], atol=1e-4)
    np.testing.assert_allclose(person.face[:68], expected[23:91], atol=1e-4)


def test_preprocessor_draws_the_whole_body(pose_case):
    folder, expected = pose_case
    out = an.run_annotator("dw_openpose_full", [folder], folder, np.zeros((512, 640, 3), np.uint8), 512,
                           device="cpu")
    assert out.shape == (512, 640, 3) and out.dtype == np.uint8
    hand = expected[112 + 20]  # last right-hand joint: drawn after the body, a blue dot
    assert tuple(out[int(hand[1]), int(hand[0])]) == (0, 0, 255)
    face = expected[23 + 40]  # a face point: white, drawn last
    assert tuple(out[int(face[1]), int(face[0])]) == (255, 255, 255)
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    assert tuple(BODY_COLORS[0]) in colours and tuple(BODY_COLORS[13]) in colours  # nose, left ankle joints
    assert tuple(BODY_COLORS[14]) not in colours  # the right eye was below threshold


def test_no_detection_means_no_people_and_a_bad_file_is_named(pose_case, tmp_path):
    folder, _ = pose_case
    _constant_model(tmp_path / "yolox_l.onnx", "images", (1, 3, 640, 640), {"output": np.zeros((1, 8400, 85))})
    (tmp_path / "dw-ll_ucoco_384.onnx").write_bytes((folder / "dw-ll_ucoco_384.onnx").read_bytes())
    out = an.run_annotator("dw_openpose_full", [tmp_path], tmp_path, np.zeros((256, 256, 3), np.uint8), 256,
                           device="cpu")
    assert out.shape == (256, 256, 3) and not out.any()
    (tmp_path / "dw-ll_ucoco_384.onnx").write_bytes(b"not onnx")
    _constant_model(tmp_path / "yolox_l.onnx", "images", (1, 3, 640, 640),
                    {"output": _detector_rows([(0, (128, 128, 64, 64))])})
    with pytest.raises(an.AnnotatorFileError, match="cannot read ONNX network .*dw-ll_ucoco_384.onnx"):
        an.run_annotator("dw_openpose_full", [tmp_path], tmp_path, np.zeros((256, 256, 3), np.uint8), 256,
                         device="cpu")


def test_a_detection_without_a_person_uses_the_whole_picture(pose_case, tmp_path):
    folder, expected = pose_case
    _constant_model(tmp_path / "yolox_l.onnx", "images", (1, 3, 640, 640),
                    {"output": _detector_rows([(16, (100, 100, 64, 64))])})
    det = dw.OnnxNetwork(tmp_path / "yolox_l.onnx").to("cpu")
    pose = dw.OnnxNetwork(folder / "dw-ll_ucoco_384.onnx").to("cpu")
    (person,) = dw.detect_people_poses(det, pose, np.zeros((300, 300, 3), np.uint8))
    # box (0, 0, 300, 300) → 375 × 500 crop around (150, 150): crop pixel p → p × 375/288 + (-37.5, -100)
    bins = (expected[0] - (200, 96)) * 1.2 * 2
    np.testing.assert_allclose(person.body[0], bins / 2 * 375 / 288 + (-37.5, -100), atol=1e-4)
