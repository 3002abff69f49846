"""Live control: parameter store, smoothing, tempo, the per-frame applier, the show (preset switching)."""
