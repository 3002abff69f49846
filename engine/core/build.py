"""A pipeline from a preset: device, dtype, weights, LoRA, backend, warm-up (slow: off the render thread).

Which backend runs and where it falls back is engine/accel/backend.py's; this module only
puts a preset's pieces together.
"""

from __future__ import annotations

import logging

from engine.accel.backend import resolve_acceleration, resolve_device, resolve_dtype
from engine.config.schema import Preset
from engine.core.pipeline import StreamPipeline
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
    # fit_input: a live source sends whatever size it has; frames are cover-fitted on the device.
    pipeline = StreamPipeline(parts, load, preset.live, device=device, dtype=dtype, backend=backend, fit_input=True)
    # Compiling and capturing happen here, on the building thread, not on the first live frame.
    seconds = pipeline.warm_up()
    log.info("pipeline warmed up in %.1f s (%s)", seconds, pipeline.backend)
    return pipeline
