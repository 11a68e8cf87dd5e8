"""Preprocessors that need downloaded networks (depth, pose detection, normals, segmentation, learned edges).

darkroom does not ship these networks. Each preprocessor names the weight file(s) the A1111 ControlNet extension
and comfyui_controlnet_aux use (from huggingface.co/lllyasviel/Annotators unless noted); they are looked for under
every `annotators` model folder (`Settings.model_dirs("annotators")`, sub-folders included). Without them the
preprocessor raises `AnnotatorMissingError` saying exactly which file to put where.

With the files present, the networks darkroom implements run (`RUNNERS`: OpenPose body, hands and face, HED, PiDiNet, line
art (realistic, coarse, anime, manga), M-LSD, Depth Anything V1/V2, MiDaS DPT-Hybrid depth and normals, NormalBAE
normals, UniFormer segmentation, each in its own `annotator_*` module, in plain PyTorch or transformers; DWPose's ONNX
files with onnxruntime); the others raise `AnnotatorUnavailableError`. Both messages
suggest the built-in preprocessors, or sending an already processed control image with preprocessor "none". Loaded
networks stay in a small LRU cache (one entry per file and device).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Where the files come from, by default.
ANNOTATORS_REPO = "huggingface.co/lllyasviel/Annotators"


@dataclass(frozen=True)
class AnnotatorSpec:
    """A weights-needing preprocessor: the network it runs and the files it needs."""

    network: str
    files: tuple[str, ...]
    source: str = ANNOTATORS_REPO
    variants: tuple[str, ...] = ()  # other accepted names for files[0] (other sizes, safetensors copies)


#: A1111 ControlNet extension preprocessor names → what they need.
ANNOTATORS: dict[str, AnnotatorSpec] = {
    "depth": AnnotatorSpec("MiDaS DPT-Hybrid depth", ("dpt_hybrid-midas-501f0c75.pt",)),
    "normal_map": AnnotatorSpec("MiDaS DPT-Hybrid normals", ("dpt_hybrid-midas-501f0c75.pt",)),
    "depth_leres": AnnotatorSpec("LeReS depth", ("res101.pth",)),
    "depth_leres++": AnnotatorSpec("LeReS depth with boost", ("res101.pth", "latest_net_G.pth")),
    "depth_zoe": AnnotatorSpec("ZoeDepth", ("ZoeD_M12_N.pt",)),
    "depth_anything": AnnotatorSpec("Depth-Anything (ViT-L/14)", ("depth_anything_vitl14.pth",),
                                    "huggingface.co/LiheYoung/Depth-Anything (checkpoints/)",
                                    ("depth_anything_vitb14.pth", "depth_anything_vits14.pth")),
    "depth_anything_v2": AnnotatorSpec("Depth-Anything V2 (ViT-L)", ("depth_anything_v2_vitl.pth",),
                                       "huggingface.co/depth-anything/Depth-Anything-V2-Large",
                                       ("depth_anything_v2_vitl.safetensors", "depth_anything_v2_vitb.pth",
                                        "depth_anything_v2_vitb.safetensors", "depth_anything_v2_vits.pth",
                                        "depth_anything_v2_vits.safetensors")),
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


class AnnotatorFileError(ValueError):
    """An annotator weights file that cannot be read or is not the network it is named after."""


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
    for i, fname in enumerate(spec.files):
        path = find_annotator_file(fname, folders)
        for other in spec.variants if i == 0 else ():
            if path is not None:
                break
            path = find_annotator_file(other, folders)
        if path is None:
            raise AnnotatorMissingError(
                f"preprocessor {preprocessor!r} ({spec.network}) needs the weights file {fname}: download it from "
                f"{spec.source} and put it at {Path(home) / fname} — or use a built-in preprocessor (canny, "
                f"scribble_xdog, lineart_standard, softedge_dog, …), or send an already processed control image "
                f"with preprocessor 'none'")
        found.append(path)
    return found


#: Preprocessors whose network darkroom runs → the module (in this package) with their `run` function.
RUNNERS: dict[str, str] = {
    "openpose": ".annotator_openpose",
    "openpose_hand": ".annotator_openpose",
    "openpose_face": ".annotator_openpose",
    "openpose_faceonly": ".annotator_openpose",
    "openpose_full": ".annotator_openpose",
    "dw_openpose_full": ".annotator_dwpose",
    "hed": ".annotator_hed",
    "hed_safe": ".annotator_hed",
    "scribble_hed": ".annotator_hed",
    "lineart": ".annotator_lineart",
    "lineart_coarse": ".annotator_lineart",
    "depth_anything": ".annotator_depth",
    "depth_anything_v2": ".annotator_depth",
    "depth": ".annotator_midas",
    "normal_map": ".annotator_midas",
    "normal_bae": ".annotator_normalbae",
    "pidinet": ".annotator_pidinet",
    "pidinet_safe": ".annotator_pidinet",
    "pidinet_sketch": ".annotator_pidinet",
    "pidinet_scribble": ".annotator_pidinet",
    "mlsd": ".annotator_mlsd",
    "lineart_anime": ".annotator_lineart_anime",
    "lineart_anime_denoise": ".annotator_lineart_anime",
    "segmentation": ".annotator_segmentation",
}


def run_annotator(preprocessor: str, folders: Iterable[Path], home: Path, image: np.ndarray, resolution: int = 512,
                  threshold_a: float = -1, threshold_b: float = -1, *, device: Any = None) -> np.ndarray:
    """Run a weights-needing preprocessor on an (H, W, 3) uint8 RGB image → its uint8 map (H', W'[, 3]).

    Raises AnnotatorMissingError when a file is not installed, AnnotatorUnavailableError when darkroom does not
    implement the network. `device`: None/'auto' (as the engine picks), 'cpu', 'cuda', … or a torch.device.
    """
    files = require_annotator(preprocessor, folders, home)
    spec = ANNOTATORS[preprocessor]
    module = RUNNERS.get(preprocessor)
    if module is None:
        raise AnnotatorUnavailableError(
            f"preprocessor {preprocessor!r}: found {', '.join(str(f) for f in files)}, but darkroom cannot run the "
            f"{spec.network} network yet; make the control image with another tool and send it with preprocessor "
            f"'none', or use a built-in preprocessor")
    run = importlib.import_module(module, __package__).run
    return run(preprocessor, image, int(resolution), files, annotator_device(device),
               threshold_a=float(threshold_a), threshold_b=float(threshold_b))


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the annotator_* modules


def annotator_device(device: Any = None) -> Any:
    """The torch device an annotator runs on: None/'auto' → the engine's automatic choice (CUDA, MPS, CPU)."""
    import torch

    from ..devices import pick_device

    if isinstance(device, torch.device):
        return device
    return pick_device(str(device) if device else "auto")


def read_weights(path: Path) -> dict[str, Any]:
    """A state dict from a .pth/.pt (torch.load with weights_only=True) or .safetensors file, on the CPU."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise AnnotatorFileError(f"cannot read annotator weights {path}: {e}") from e
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AnnotatorFileError(f"{path} is not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_exact(module: Any, state_dict: dict[str, Any], path: Path, network: str, *, assign: bool = False) -> Any:
    """Load a state dict whose keys and shapes must match the module exactly (else AnnotatorFileError), as float32.

    `assign`: take the tensors themselves (for a module built on the meta device, which has no memory to copy into).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{name}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise AnnotatorFileError(f"{path} is not a {network} checkpoint ({'; '.join(parts)})")
    module.load_state_dict({k: v.float().contiguous() for k, v in state_dict.items()}, assign=assign)
    return module


class NetworkCache:
    """A small LRU of loaded annotator networks, keyed by file (path, size, mtime) and device."""

    def __init__(self, max_items: int = 3) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, device: Any, build: Callable[[Path], Any]) -> Any:
        """The network for `path` on `device`, built by `build(path)` (then moved there, eval mode) when not cached."""
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, str(device))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            net = build(Path(path)).to(device).eval()
            self._items[key] = net
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return net

    def clear(self) -> None:
        """Forget every loaded network."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: The process-wide cache of loaded annotator networks (a cache, like functools.lru_cache: no settings live here).
NETWORKS = NetworkCache()


def pad_to_multiple(img: np.ndarray, multiple: int = 64) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Edge-pad an (H, W, C) image on the bottom/right to a multiple (as the A1111 extension), with its un-padder."""
    h, w = img.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    padded = np.pad(img, [[0, ph], [0, pw]] + [[0, 0]] * (img.ndim - 2), mode="edge")

    def unpad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:h, :w])

    return np.ascontiguousarray(padded), unpad
