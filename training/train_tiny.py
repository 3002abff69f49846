"""Train streamvj's `tiny` model on procedural pictures, on the CPU, deterministically.

    python -m training.train_tiny --seed 0 --out engine/models/weights/tiny

Stage 1 trains the autoencoder on pictures alone; its latents' spread sets the VAE's
scaling_factor (unit-variance latents, what the scheduler assumes). Stage 2 freezes it and
trains the text encoder and the UNet together on source/target pairs (training/diffusion.py).
Budgets are step counts, never time, and every random draw comes from a seeded generator, so
one seed gives the same weights bit for bit (on the same torch build and thread count).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.models.family import Family
from engine.models.load import save_folder
from engine.models.parts import ModelParts
from engine.models.tiny import TINY_SCHEDULER_CONFIG
from training.autoencoder import autoencoder_loss, build_autoencoder, psnr
from training.diffusion import alphas, build_unet, changed, pair_loss, pair_timesteps, sample_timesteps
from training.procedural import WORDS, image_batch, pair_batch
from training.text import MAX_TOKENS, build_text_encoder, build_word_tokenizer

log = logging.getLogger("streamvj.training")
THREADS = 2
SCHEDULER_CONFIG = {**TINY_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}


@dataclass(frozen=True)
class Budget:
    ae_steps: int = 2000
    ae_batch: int = 16
    ae_size: int = 64
    unet_steps: int = 2800
    unet_batch: int = 24
    unet_size: int = 128
    lr_ae: float = 2e-3
    lr_unet: float = 1.5e-3
    caption_dropout: float = 0.1


QUICK = Budget(ae_steps=4, ae_batch=4, ae_size=32, unet_steps=4, unet_batch=4, unet_size=32)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _every(step: int, total: int) -> bool:
    return step % max(1, total // 10) == 0 or step == total - 1


def train_autoencoder(budget: Budget, seed: int):
    torch.manual_seed(seed)
    vae = build_autoencoder()
    opt = torch.optim.Adam(vae.parameters(), lr=budget.lr_ae)
    g = torch.Generator().manual_seed(seed * 1000 + 1)
    start = time.perf_counter()
    for step in range(budget.ae_steps):
        for group in opt.param_groups:
            group["lr"] = budget.lr_ae * _lr_factor(step, budget.ae_steps, max(1, budget.ae_steps // 20))
        images = image_batch(g, budget.ae_batch, budget.ae_size)
        noise = torch.randn(budget.ae_batch, 4, budget.ae_size // 8, budget.ae_size // 8, generator=g)
        loss = autoencoder_loss(vae, images, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if _every(step, budget.ae_steps):
            log.info("autoencoder step %d/%d loss %.4f (%.2f s/step)", step + 1, budget.ae_steps, loss.item(),
                     (time.perf_counter() - start) / (step + 1))
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=round(structure_scale(vae, seed, budget.ae_size), 6))
    return vae


STRUCTURE_STD = 2.0


def structure_scale(vae, seed: int, size: int) -> float:
    """scaling_factor: the one that gives the latents' spread *within* a picture STRUCTURE_STD.

    The scale sets the signal-to-noise ratio at every timestep. Most of these pictures' latent
    variance is each picture's mean colour (flat fields); the structure (edges, stripes) is a
    small part of it. Scaled to unit *total* variance, the structure has a spread of ~0.4 and
    drowns under the default first step's noise (t = 359: noise 0.71 against 0.70 x 0.4), and
    a model this small, trained this briefly, cannot recover it: img2img loses the input's
    shapes. At a within-picture spread of 2 the structure meets that step at SNR ~4.
    """
    probe = image_batch(torch.Generator().manual_seed(seed * 1000 + 2), 32, size)
    latents = vae.encode(probe).latents
    return STRUCTURE_STD / float(latents.std(dim=(2, 3)).mean())


def _encode_prompts(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids).last_hidden_state


def train_diffusion(vae, budget: Budget, seed: int):
    torch.manual_seed(seed * 1000 + 3)
    tokenizer = build_word_tokenizer(WORDS)
    text_encoder = build_text_encoder(len(tokenizer))
    unet = build_unet(text_encoder.config.hidden_size)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=budget.lr_unet, weight_decay=1e-4)
    abar = alphas(SCHEDULER_CONFIG)
    scale = float(vae.config.scaling_factor)
    g = torch.Generator().manual_seed(seed * 1000 + 4)
    start = time.perf_counter()
    for step in range(budget.unet_steps):
        for group in opt.param_groups:
            group["lr"] = budget.lr_unet * _lr_factor(step, budget.unet_steps, max(1, budget.unet_steps // 20))
        batch = pair_batch(g, budget.unet_batch, budget.unet_size)
        with torch.no_grad():
            z = vae.encode(torch.cat([batch.source, batch.target])).latents * scale
        z_source, z_target = z.chunk(2)
        drop = torch.rand(budget.unet_batch, generator=g) < budget.caption_dropout
        captions = ["" if d else c for d, c in zip(drop.tolist(), batch.captions)]
        t = pair_timesteps(g, sample_timesteps(g, budget.unet_batch, SCHEDULER_CONFIG), changed(z_source, z_target))
        noise = torch.randn(z_source.shape, generator=g)
        hidden = _encode_prompts(tokenizer, text_encoder, captions)
        loss = pair_loss(unet, hidden, z_source, z_target, t, noise, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if _every(step, budget.unet_steps):
            log.info("diffusion step %d/%d loss %.4f (%.2f s/step)", step + 1, budget.unet_steps, loss.item(),
                     (time.perf_counter() - start) / (step + 1))
    return tokenizer, text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


def train(seed: int, budget: Budget) -> tuple[ModelParts, dict]:
    """The trained parts, and a record of how they were made (written beside them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # reductions split by thread count: fixed, for bit-exact reruns
    try:
        return _train(seed, budget)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, budget: Budget) -> tuple[ModelParts, dict]:
    started = time.perf_counter()
    vae = train_autoencoder(budget, seed)
    ae_seconds = time.perf_counter() - started
    held_out = image_batch(torch.Generator().manual_seed(10_000 + seed), 16, 256)
    ae_psnr = psnr(vae, held_out)
    log.info("autoencoder: %.1f s, held-out PSNR at 256x256 %.2f dB, scaling_factor %.4f",
             ae_seconds, ae_psnr, vae.config.scaling_factor)
    tokenizer, text_encoder, unet = train_diffusion(vae, budget, seed)
    parts = ModelParts(family=Family.SD15, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler_config=dict(SCHEDULER_CONFIG), source="trained")
    record = {"seed": seed, "budget": asdict(budget), "threads": THREADS, "torch": torch.__version__,
              "autoencoder_seconds": round(ae_seconds, 1),
              "total_seconds": round(time.perf_counter() - started, 1),
              "autoencoder_psnr_256": round(ae_psnr, 2)}
    return parts, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the diffusers folder to write")
    parser.add_argument("--quick", action="store_true", help="a few steps at 32 px (checks the script, not a model)")
    parser.add_argument("--ae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    budget = QUICK if args.quick else Budget()
    overrides = {k: v for k, v in (("ae_steps", args.ae_steps), ("unet_steps", args.unet_steps)) if v is not None}
    budget = Budget(**{**asdict(budget), **overrides})
    parts, record = train(args.seed, budget)
    save_folder(parts, args.out)
    # AutoencoderTiny records block_out_channels itself but does not take it back, so diffusers
    # warns "config attributes ... not expected" on every load: the key is left out.
    vae_config = args.out / "vae" / "config.json"
    vae_config.write_text(json.dumps({k: v for k, v in json.loads(vae_config.read_text()).items()
                                      if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s (%.0f s in all)", args.out, record["total_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
