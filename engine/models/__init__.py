"""Model loading: families, hub ids, local folders, single files, LoRA, and the models built in code."""
