"""A pipeline from a preset: device, dtype, weights, LoRA, backend, warm-up (slow: off the render thread).

Which backend runs and where it falls back is engine/accel/backend.py's; this module only
puts a preset's pieces together.
"""

from __future__ import annotations

import logging
import threading

from engine.accel.backend import resolve_acceleration, resolve_device, resolve_dtype
from engine.config.schema import Preset
from engine.core.pipeline import StreamPipeline
from engine.models.controlnet import load_controlnets
from engine.models.load import load_model
from engine.models.lora import fuse_loras

log = logging.getLogger("streamvj.build")


def build_pipeline(preset: Preset) -> StreamPipeline:
    """Load the preset's model, build its pipeline and warm it up (run it off the render thread)."""
    load = preset.load
    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    backend = resolve_acceleration(load.acceleration, device)
    parts = load_model(load.model, family=load.family, vae=load.vae, device=device, dtype=dtype)
    fuse_loras(parts, [(lora.path, lora.scale, lora.weight_name) for lora in load.lora])
    controlnets = load_controlnets(load.controlnets, parts.unet, parts.family, device=device, dtype=dtype)
    # fit_input: a live source sends whatever size it has; frames are cover-fitted on the device.
    pipeline = StreamPipeline(parts, load, preset.live, device=device, dtype=dtype, backend=backend, fit_input=True,
                              controlnets=controlnets)
    # Compiling and capturing happen here, on the building thread, not on the first live frame.
    seconds = pipeline.warm_up()
    log.info("pipeline warmed up in %.1f s (%s)", seconds, pipeline.backend)
    return pipeline


def build_pipeline_apart(preset: Preset) -> StreamPipeline:
    """`build_pipeline` on a short-lived thread of its own: for the engine's first pipeline.

    torch's CPU kernels run on OpenMP thread teams, one per calling thread, and a team left
    on a thread that stays alive (the main thread, which afterwards only waits for Ctrl-C)
    slows the render thread's own team. On the 2-core development CPU the tiny model at
    256x256 ran 55-66 ms a frame on a render thread after a build on the main thread, and
    37-40 ms after a build on a thread that had ended, as fast as on the thread that built
    it (benchmarks/runtime_vs_bench.py compares the engine with the bench). Preset switches
    already build on short-lived threads (engine/live/show.py).
    """
    box: dict[str, object] = {}

    def build() -> None:
        try:
            box["pipeline"] = build_pipeline(preset)
        except BaseException as exc:  # handed to the caller, whatever it is
            box["error"] = exc

    thread = threading.Thread(target=build, name="streamvj-first-build", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)  # short joins: Ctrl-C during a download still reaches the main thread
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["pipeline"]  # type: ignore[return-value]
