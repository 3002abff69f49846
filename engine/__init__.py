"""streamvj engine: the device-agnostic pipeline (models, stream batch, filter, runtime).

`engine/` never imports `bridges/`; bridges implement the protocols defined here.
"""
