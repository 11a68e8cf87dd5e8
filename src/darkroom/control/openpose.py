"""OpenPose JSON → the coloured stick figure pose ControlNets were trained on (body-18 limbs and colours).

Input: OpenPose's JSON output format (`{"people": [{"pose_keypoints_2d": [x, y, c, …], "hand_left_keypoints_2d":
…, "face_keypoints_2d": …}], "canvas_width": W, "canvas_height": H}`), as A1111's ControlNet extension and pose
editors exchange it; a list of such objects renders each. Coordinates may be normalised (0..1) or pixels (any value
above 1); a keypoint with confidence 0 is missing.

Drawing follows the OpenPose/ControlNet annotator conventions: 17 limbs between the 18 COCO body keypoints, each an
ellipse 4 px wide in its limb colour × 0.6, then each keypoint a filled circle of radius 4 in its own colour; hands
as 20 HSV-coloured lines with blue joints; the face as white dots; on black.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: 1-based keypoint pairs (nose 1, neck 2, right shoulder 3, right elbow 4, right wrist 5, left shoulder 6, …).
BODY_LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
              (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
#: One colour per keypoint (and per limb, in the same order), RGB.
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
STICK_WIDTH = 4
LIMB_DIM = 0.6


class PoseFormatError(ValueError):
    """The pose JSON is not in OpenPose's format (the message names the field)."""


@dataclass
class Person:
    """Keypoints in pixels (None where missing)."""

    body: list[tuple[float, float] | None]
    left_hand: list[tuple[float, float] | None] | None = None
    right_hand: list[tuple[float, float] | None] | None = None
    face: list[tuple[float, float] | None] | None = None


def _points(values: Any, field: str, w: float, h: float, normalised: bool) -> list[tuple[float, float] | None] | None:
    if values is None:
        return None
    if not isinstance(values, list) or len(values) % 3 or not all(isinstance(v, (int, float)) for v in values):
        raise PoseFormatError(f"{field} must be a flat list of x, y, confidence numbers")
    out: list[tuple[float, float] | None] = []
    for i in range(0, len(values), 3):
        x, y, c = values[i : i + 3]
        if c <= 0:
            out.append(None)
        else:
            out.append((x * w, y * h) if normalised else (float(x), float(y)))
    return out


def decode_pose_json(pose: Any) -> tuple[list[Person], int, int]:
    """(people with pixel coordinates, canvas height, canvas width) from an OpenPose JSON object or string."""
    if isinstance(pose, (str, bytes)):
        try:
            pose = json.loads(pose)
        except json.JSONDecodeError as e:
            raise PoseFormatError(f"pose is not valid JSON: {e}") from None
    if not isinstance(pose, dict):
        raise PoseFormatError("pose JSON must be an object with 'people', 'canvas_width' and 'canvas_height'")
    try:
        w, h = int(pose["canvas_width"]), int(pose["canvas_height"])
    except (KeyError, TypeError, ValueError):
        raise PoseFormatError("pose JSON needs integer 'canvas_width' and 'canvas_height'") from None
    if w < 1 or h < 1 or w > 16384 or h > 16384:
        raise PoseFormatError(f"canvas size {w}x{h} is out of range (1..16384)")
    people = pose.get("people", [])
    if not isinstance(people, list):
        raise PoseFormatError("'people' must be a list")
    fields = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")
    # Normalised when every coordinate lies within 0..1 (A1111's rule), pixels otherwise.
    coords = [v for p in people if isinstance(p, dict) for f in fields for i, v in enumerate(p.get(f) or [])
              if i % 3 != 2 and isinstance(v, (int, float))]
    normalised = bool(coords) and all(0.0 <= abs(v) <= 1.0 for v in coords)
    out = []
    for i, p in enumerate(people):
        if not isinstance(p, dict):
            raise PoseFormatError(f"people[{i}] must be an object")
        body = _points(p.get("pose_keypoints_2d") or [], f"people[{i}].pose_keypoints_2d", w, h, normalised) or []
        out.append(Person(body=body,
                          left_hand=_points(p.get("hand_left_keypoints_2d"), "hand_left_keypoints_2d", w, h, normalised),
                          right_hand=_points(p.get("hand_right_keypoints_2d"), "hand_right_keypoints_2d", w, h,
                                             normalised),
                          face=_points(p.get("face_keypoints_2d"), "face_keypoints_2d", w, h, normalised)))
    return out, h, w


def draw_body(canvas: np.ndarray, body: list[tuple[float, float] | None]) -> np.ndarray:
    """Limbs (dimmed colour ellipses) then joints (coloured dots) of one body-18 skeleton, in place."""
    import cv2

    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS):
        if a > len(body) or b > len(body) or body[a - 1] is None or body[b - 1] is None:
            continue
        (x1, y1), (x2, y2) = body[a - 1], body[b - 1]
        length = math.hypot(x1 - x2, y1 - y2)
        angle = math.degrees(math.atan2(y1 - y2, x1 - x2))
        poly = cv2.ellipse2Poly((int((x1 + x2) / 2), int((y1 + y2) / 2)), (int(length / 2), STICK_WIDTH),
                                int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, [int(c * LIMB_DIM) for c in color])
    for point, color in zip(body, BODY_COLORS):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 4, color, thickness=-1)
    return canvas


def draw_hand(canvas: np.ndarray, hand: list[tuple[float, float] | None]) -> np.ndarray:
    """20 rainbow bones and blue joints of one 21-point hand, in place."""
    import cv2

    for i, (a, b) in enumerate(HAND_EDGES):
        if a >= len(hand) or b >= len(hand) or hand[a] is None or hand[b] is None:
            continue
        rgb = colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)
        color = [int(c * 255) for c in rgb]
        cv2.line(canvas, tuple(int(v) for v in hand[a]), tuple(int(v) for v in hand[b]), color, thickness=2)
    for point in hand:
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, face: list[tuple[float, float] | None]) -> np.ndarray:
    """White dots for face landmarks, in place."""
    import cv2

    for point in face:
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), 3, (255, 255, 255), thickness=-1)
    return canvas


def render_pose(pose: Any, *, width: int | None = None, height: int | None = None, hands: bool = True,
                face: bool = True) -> np.ndarray:
    """Draw an OpenPose JSON pose on black: (H, W, 3) uint8 at the canvas size, or scaled to width × height."""
    people, h, w = decode_pose_json(pose)
    W, H = int(width or w), int(height or h)
    sx, sy = W / w, H / h
    canvas = np.zeros((H, W, 3), dtype=np.uint8)

    def scaled(points):
        return None if points is None else [None if p is None else (p[0] * sx, p[1] * sy) for p in points]

    for person in people:
        draw_body(canvas, scaled(person.body))
        if hands:
            for hand in (person.left_hand, person.right_hand):
                if hand:
                    draw_hand(canvas, scaled(hand))
        if face and person.face:
            draw_face(canvas, scaled(person.face))
    return canvas
