"""Depth networks for the depth preprocessor: a Hugging Face id or folder, or `random` (built in code).

Loaded like any model: the local cache first (a venue without internet still starts), then
the hub with only the files the network needs; one-line errors naming the model and the fix.
Only transformers' depth-estimation classes on DEPTH_CLASSES may be named by a config.
`random` is a tiny Depth Anything (a 4-layer, 32-wide DINOv2 backbone) with seeded weights,
for tests and the offline demo: its "depth" is a texture that follows the input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.errors import ModelLoadError
from engine.models.load import _HUB_ID

log = logging.getLogger("streamvj.models")

RANDOM_DEPTH = "random"
DEPTH_CLASSES = ("DepthAnythingForDepthEstimation",)
_HUB_FILES = ["config.json", "preprocessor_config.json", "*.safetensors"]


def build_random_depth_model(seed: int = 0) -> torch.nn.Module:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="relative")
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Default init leaves the ReLU head near 0 everywhere; He init keeps the map alive.
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    return model


def _folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelLoadError(f"depth model {spec!r} does not exist (give a Hugging Face id like "
                             f"depth-anything/Depth-Anything-V2-Small-hf, a local folder, or 'random')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # not cached (the hub raises several types for that)
        log.debug("%s is not in the local cache: %s", spec, exc)
    log.info("fetching depth model %s from the Hugging Face hub (cached after the first time)", spec)
    try:
        return Path(snapshot_download(spec, allow_patterns=_HUB_FILES))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"depth model {spec!r} was not found on the Hugging Face hub (check the id)") from None
    except Exception as exc:  # network stacks raise many types; all mean "not reachable now"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot download depth model {spec!r} ({reason}); connect to the internet once to "
                             f"cache it, or pass a local folder") from None


def load_depth_model(spec: str, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    if spec == RANDOM_DEPTH:
        model = build_random_depth_model()
    else:
        folder = _folder(spec)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"depth model {spec!r}: cannot read its config.json ({exc})") from None
        names = config.get("architectures") or []
        if not any(name in DEPTH_CLASSES for name in names):
            raise ModelLoadError(f"depth model {spec!r} is a {', '.join(names) or 'model of unknown class'}; "
                                 f"streamvj runs {', '.join(DEPTH_CLASSES)} (e.g. Depth Anything V2)")
        import transformers

        cls = getattr(transformers, next(name for name in names if name in DEPTH_CLASSES))
        try:
            model = cls.from_pretrained(str(folder), torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load depth model {spec!r}: {str(exc).splitlines()[0]}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
