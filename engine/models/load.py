"""Loading a model's parts from a built-in name, a local diffusers folder, a single file or the hub.

Built-in names: `tiny` is the small model trained on procedural pictures (training/), shipped
as a diffusers folder and loaded by `load_folder` like any other; `tiny-random` and
`tiny-sdxl` are random weights built in code (engine/models/tiny.py), `sd-turbo-random`
is sd-turbo's architecture with random weights (engine/models/random_weights.py).

Whatever the source, the result is a `ModelParts`: UNet, VAE, text encoder(s),
tokenizer(s), the scheduler config and the family. The pipeline never sees where they
came from. Failures become one-line `ModelLoadError`s naming the model and the fix.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from engine.errors import ModelLoadError
from engine.models.family import Family, detect_family, parse_family
from engine.models.parts import ALLOWED_CLASSES, ModelParts, class_for
from engine.models.random_weights import RANDOM_MODELS
from engine.models.single_file import load_single_file
from engine.models.tiny import TRAINED_TINY, build_tiny_components

log = logging.getLogger("streamvj.models")

TINY_NAMES = {"tiny-random": Family.SD15, "tiny-sdxl": Family.SDXL}  # random weights, built in code
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
_HUB_FOLDERS = ("scheduler", "unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".onnx_data", ".msgpack", ".h5")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


def _variant(folder: Path) -> str | None:
    """"fp16" when a folder holds only fp16-variant weights (what `pick_hub_files` fetches for fp16)."""
    weights = list(folder.glob("*.safetensors"))
    return "fp16" if weights and all(".fp16." in w.name for w in weights) else None


def load_vae(spec: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A VAE from a folder (its config.json names the class) or a hub id (e.g. madebyollin/taesd)."""
    folder = _resolve_folder(spec, fp16=dtype == torch.float16)
    config = _read_json(folder / "config.json")
    cls = class_for(config.get("_class_name", "AutoencoderKL"))
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype, variant=_variant(folder))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load VAE from {spec!r}: {exc}") from None


def load_folder(folder: Path, family: Family | None = None, dtype: torch.dtype | None = None) -> ModelParts:
    """A diffusers pipeline folder (model_index.json + one subfolder per component)."""
    index = _read_json(folder / "model_index.json")
    parts: dict = {}
    for name in _COMPONENTS:
        entry = index.get(name)
        if not entry or entry[1] is None:
            continue
        cls = class_for(entry[1])
        kwargs = {} if "Tokenizer" in entry[1] else {"torch_dtype": dtype, "variant": _variant(folder / name)}
        try:
            parts[name] = cls.from_pretrained(str(folder / name), **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {name} from {folder}: {exc}") from None
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer") if n not in parts]
    if missing:
        raise ModelLoadError(f"{folder} is missing {', '.join(missing)}: it is not a Stable Diffusion pipeline folder")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_path) if scheduler_path.exists() else {}
    detected = detect_family(dict(parts["unet"].config), index.get("_class_name"))
    return ModelParts(family=family or detected, scheduler_config=scheduler_config, source=str(folder), **parts)


def save_folder(parts: ModelParts, folder: Path) -> None:
    """Write `parts` as a diffusers pipeline folder that `load_folder` (and diffusers) can read."""
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = "StableDiffusionXLPipeline" if parts.family is Family.SDXL else "StableDiffusionPipeline"
    index: dict = {"_class_name": pipeline, "scheduler": ["diffusers", "LCMScheduler"]}
    for name in _COMPONENTS:
        component = getattr(parts, name)
        if component is None:
            continue
        cls_name = type(component).__name__
        index[name] = [ALLOWED_CLASSES[cls_name], cls_name]
        component.save_pretrained(str(folder / name))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _resolve_folder(spec: str, fp16: bool = False) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelLoadError(f"model path {spec!r} does not exist (give a diffusers folder, a .safetensors file, "
                             f"a Hugging Face id like stabilityai/sd-turbo, 'tiny', 'tiny-random' or 'sd-turbo-random')")
    return _download(spec, fp16)


def _variant_of(path: str) -> tuple[str, str]:
    """("unet/diffusion_pytorch_model", "fp16") for unet/diffusion_pytorch_model.fp16.safetensors."""
    folder, _, name = path.rpartition("/")
    parts = name[: -len(".safetensors")].split(".")
    base, variant = (".".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (parts[0], "")
    return f"{folder}/{base}" if folder else base, variant


def pick_hub_files(files: list[str], fp16: bool) -> list[str]:
    """The files a pipeline (or a lone VAE repo) needs: configs, tokenizers, one safetensors per weight.

    Hub repos often carry .bin, .ckpt, EMA variants and whole-pipeline single files beside the
    per-component safetensors (several GB each); only one copy of each weight is fetched: the
    fp16 variant when asked for and present, else the plain one.
    """
    root_files = {"model_index.json", "config.json"}
    needed = [f for f in files if f in root_files or "/" in f and f.split("/", 1)[0] in _HUB_FOLDERS
              or "/" not in f and f.startswith("diffusion_pytorch_model.") and f.endswith(".safetensors")]
    chosen = [f for f in needed if not f.endswith(_WEIGHT_SUFFIXES)]
    versions: dict[str, dict[str, str]] = {}
    for f in needed:
        if f.endswith(".safetensors"):
            base, variant = _variant_of(f)
            versions.setdefault(base, {})[variant] = f
    for by_variant in versions.values():
        preferred = ("fp16", "") if fp16 else ("", "fp16")
        pick = next((by_variant[v] for v in preferred if v in by_variant), None)
        chosen.append(pick or sorted(by_variant.values())[0])
    return sorted(chosen)


def _download(repo_id: str, fp16: bool) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        # A model cached by an earlier run loads with no network at all (a venue without internet).
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # not cached (the hub raises several types for that)
        log.debug("%s is not in the local cache: %s", repo_id, exc)
    log.info("fetching %s from the Hugging Face hub (cached after the first time)", repo_id)
    try:
        files = pick_hub_files(HfApi().list_repo_files(repo_id), fp16)
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model {repo_id!r} was not found on the Hugging Face hub "
                             f"(check the id, or log in with `hf auth login` for gated models)") from None
    except Exception as exc:  # network stacks raise many types; all mean "not reachable now"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot download model {repo_id!r} ({reason}); connect to the internet once "
                             f"to cache it, or pass a local diffusers folder, or use --model tiny") from None


def load_model(spec: str, family: str | Family | None = None, vae: str | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ModelParts:
    """Load `spec` onto `device`: "tiny" (trained, shipped), "tiny-random", "tiny-sdxl",
    "sd-turbo-random" (built in code; all offline), a diffusers folder, a .safetensors file or a
    Hugging Face id."""
    wanted = parse_family(family)
    if spec == "tiny":
        if wanted is not None and wanted is not Family.SD15:
            raise ModelLoadError(f"model 'tiny' is sd15-shaped; family {wanted.value} was asked for")
        if not (TRAINED_TINY / "model_index.json").is_file():
            raise ModelLoadError(f"the trained tiny model is missing from {TRAINED_TINY}; restore it from git or "
                                 f"retrain it: python -m training.train_tiny --seed 0 --out {TRAINED_TINY}")
        parts = load_folder(TRAINED_TINY, family=Family.SD15, dtype=dtype)
        parts.source = spec
    elif spec in TINY_NAMES:
        built_family = TINY_NAMES[spec]
        if wanted is not None and wanted is not built_family:
            raise ModelLoadError(f"model {spec!r} is {built_family.value}-shaped; family {wanted.value} was asked for")
        components = build_tiny_components(built_family)
        parts = ModelParts(family=built_family, source=spec, **components)
    elif spec in RANDOM_MODELS:
        built_family, build = RANDOM_MODELS[spec]
        if wanted is not None and wanted is not built_family:
            raise ModelLoadError(f"model {spec!r} is {built_family.value}-shaped; family {wanted.value} was asked for")
        parts = ModelParts(family=built_family, source=spec, **build(device))
    elif spec.endswith(".safetensors"):
        parts = load_single_file(Path(spec).expanduser(), family=wanted, dtype=dtype)
    else:
        parts = load_folder(_resolve_folder(spec, fp16=dtype == torch.float16), family=wanted, dtype=dtype)
    if vae:
        parts.vae = load_vae(vae, dtype=dtype)
    return parts.to(device, dtype)
