"""Preprocessors that need downloaded networks (depth, pose detection, normals, segmentation, learned edges).

darkroom does not ship these networks. Each preprocessor names the weight file(s) the A1111 ControlNet extension
and comfyui_controlnet_aux use (from huggingface.co/lllyasviel/Annotators unless noted); they are looked for under
every `annotators` model folder (`Settings.model_dirs("annotators")`, sub-folders included). Without them the
preprocessor raises `AnnotatorMissingError` saying exactly which file to put where; with them it raises
`AnnotatorUnavailableError` (the network itself is not implemented yet) — in both cases the message suggests the
built-in preprocessors, or sending an already processed control image with preprocessor "none".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Where the files come from, by default.
ANNOTATORS_REPO = "huggingface.co/lllyasviel/Annotators"


@dataclass(frozen=True)
class AnnotatorSpec:
    """A weights-needing preprocessor: the network it runs and the files it needs."""

    network: str
    files: tuple[str, ...]
    source: str = ANNOTATORS_REPO


#: A1111 ControlNet extension preprocessor names → what they need.
ANNOTATORS: dict[str, AnnotatorSpec] = {
    "depth": AnnotatorSpec("MiDaS DPT-Hybrid depth", ("dpt_hybrid-midas-501f0c75.pt",)),
    "normal_map": AnnotatorSpec("MiDaS DPT-Hybrid normals", ("dpt_hybrid-midas-501f0c75.pt",)),
    "depth_leres": AnnotatorSpec("LeReS depth", ("res101.pth",)),
    "depth_leres++": AnnotatorSpec("LeReS depth with boost", ("res101.pth", "latest_net_G.pth")),
    "depth_zoe": AnnotatorSpec("ZoeDepth", ("ZoeD_M12_N.pt",)),
    "depth_anything": AnnotatorSpec("Depth-Anything (ViT-L/14)", ("depth_anything_vitl14.pth",),
                                    "huggingface.co/LiheYoung/Depth-Anything (checkpoints/)"),
    "depth_anything_v2": AnnotatorSpec("Depth-Anything V2 (ViT-L)", ("depth_anything_v2_vitl.pth",),
                                       "huggingface.co/depth-anything/Depth-Anything-V2-Large"),
    "normal_bae": AnnotatorSpec("NormalBAE normals", ("scannet.pt",)),
    "normal_dsine": AnnotatorSpec("DSINE normals", ("dsine.pt",)),
    "openpose": AnnotatorSpec("OpenPose body", ("body_pose_model.pth",)),
    "openpose_hand": AnnotatorSpec("OpenPose body + hands", ("body_pose_model.pth", "hand_pose_model.pth")),
    "openpose_face": AnnotatorSpec("OpenPose body + face", ("body_pose_model.pth", "facenet.pth")),
    "openpose_faceonly": AnnotatorSpec("OpenPose face", ("body_pose_model.pth", "facenet.pth")),
    "openpose_full": AnnotatorSpec("OpenPose body + hands + face",
                                   ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "dw_openpose_full": AnnotatorSpec("DWPose whole body", ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
                                      "huggingface.co/yzd-v/DWPose"),
    "hed": AnnotatorSpec("HED soft edges", ("ControlNetHED.pth",)),
    "hed_safe": AnnotatorSpec("HED soft edges (safe)", ("ControlNetHED.pth",)),
    "scribble_hed": AnnotatorSpec("HED scribbles", ("ControlNetHED.pth",)),
    "pidinet": AnnotatorSpec("PiDiNet soft edges", ("table5_pidinet.pth",)),
    "pidinet_safe": AnnotatorSpec("PiDiNet soft edges (safe)", ("table5_pidinet.pth",)),
    "pidinet_sketch": AnnotatorSpec("PiDiNet sketch", ("table5_pidinet.pth",)),
    "pidinet_scribble": AnnotatorSpec("PiDiNet scribbles", ("table5_pidinet.pth",)),
    "lineart": AnnotatorSpec("realistic line art", ("sk_model.pth",)),
    "lineart_coarse": AnnotatorSpec("coarse line art", ("sk_model2.pth",)),
    "lineart_anime": AnnotatorSpec("anime line art", ("netG.pth",)),
    "lineart_anime_denoise": AnnotatorSpec("anime line art (denoised)", ("erika.pth",)),
    "mlsd": AnnotatorSpec("M-LSD straight lines", ("mlsd_large_512_fp32.pth",)),
    "segmentation": AnnotatorSpec("UniFormer ADE20k segmentation", ("upernet_global_small.pth",)),
    "oneformer_ade20k": AnnotatorSpec("OneFormer ADE20k segmentation", ("250_16_swin_l_oneformer_ade20k_160k.pth",)),
    "oneformer_coco": AnnotatorSpec("OneFormer COCO segmentation", ("150_16_swin_l_oneformer_coco_100ep.pth",)),
}


class AnnotatorMissingError(FileNotFoundError):
    """A preprocessor's weight file is not installed (the message says which file to put where)."""


class AnnotatorUnavailableError(RuntimeError):
    """A preprocessor's weights are present but darkroom cannot run that network yet."""


def find_annotator_file(name: str, folders: Iterable[Path]) -> Path | None:
    """The first file called `name` under any of the folders (searched recursively, hidden folders skipped)."""
    for root in folders:
        root = Path(root)
        if (root / name).is_file():
            return root / name
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if name in filenames:
                return Path(dirpath) / name
    return None


def require_annotator(preprocessor: str, folders: Iterable[Path], home: Path) -> list[Path]:
    """The weight files a preprocessor needs, or AnnotatorMissingError naming the missing file and where it goes."""
    spec = ANNOTATORS[preprocessor]
    folders = list(folders)
    found: list[Path] = []
    for fname in spec.files:
        path = find_annotator_file(fname, folders)
        if path is None:
            raise AnnotatorMissingError(
                f"preprocessor {preprocessor!r} ({spec.network}) needs the weights file {fname}: download it from "
                f"{spec.source} and put it at {Path(home) / fname} — or use a built-in preprocessor (canny, "
                f"scribble_xdog, lineart_standard, softedge_dog, …), or send an already processed control image "
                f"with preprocessor 'none'")
        found.append(path)
    return found


def run_annotator(preprocessor: str, folders: Iterable[Path], home: Path) -> None:
    """Check the weights, then report that the network itself is not available in darkroom yet."""
    files = require_annotator(preprocessor, folders, home)
    spec = ANNOTATORS[preprocessor]
    raise AnnotatorUnavailableError(
        f"preprocessor {preprocessor!r}: found {', '.join(str(f) for f in files)}, but darkroom cannot run the "
        f"{spec.network} network yet; make the control image with another tool and send it with preprocessor "
        f"'none', or use a built-in preprocessor")
