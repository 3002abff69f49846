"""The feature bank's memory for real model shapes (docs/temporal.md's table), without weights.

The UNets are built on torch's meta device (shapes only: no memory, no download), and the
bank's size follows from the tokens and width of each self-attention layer
(engine/core/feature_bank.py): 2 (keys, values) x tokens x width per layer, plus the outputs
(tokens x width) of the layers feature fusion reads, per banked frame, per row of the UNet
batch (N steps x F frames, twice for cfg full).

    python benchmarks/temporal_memory.py [--size 512] [--rows 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import UNet2DConditionModel  # noqa: E402

from engine.core.feature_bank import attn1_tokens, bank_elements  # noqa: E402
from engine.models.random_weights import SD_TURBO_UNET  # noqa: E402

# stabilityai/sdxl-turbo unet/config.json, the fields that shape attention.
SDXL_UNET = {
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="square frame side in pixels")
    parser.add_argument("--rows", type=int, default=2, help="UNet batch rows (2 = 2 steps, F=1, cfg self)")
    args = parser.parse_args()
    latent = (args.size // 8, args.size // 8)
    print(f"{args.size}x{args.size}, {args.rows} rows, float16 (2 bytes)")
    print(f"{'model':<12}{'attn1 layers':>14}{'tokens (max)':>14}{'MB per frame':>14}{'M=1':>9}{'M=2':>9}{'M=4':>9}"
          f"{'+fusion/frame':>15}")
    for name, config in (("sd-turbo", SD_TURBO_UNET), ("sdxl-turbo", SDXL_UNET)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        tokens = attn1_tokens(unet, latent)
        per_frame = bank_elements(unet, latent) * 2 * args.rows / 1e6
        fusion = bank_elements(unet, latent, fusion=True) * 2 * args.rows / 1e6 - per_frame  # load.bank_fusion
        print(f"{name:<12}{len(tokens):>14}{max(tokens.values()):>14}{per_frame:>14.1f}"
              + "".join(f"{per_frame * m:>9.0f}" for m in (1, 2, 4)) + f"{fusion:>15.1f}")


if __name__ == "__main__":
    main()
