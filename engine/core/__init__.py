"""The frame step: stream batch, schedule, pipeline, pixel conversions, FX, similarity filter, prompts."""
