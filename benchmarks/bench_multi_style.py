"""What one network for many styles costs per training step: the same Trainer step with 1 style
and with N styles (conditional instance norm, per-image style targets), same photos, same loss.

    .venv/bin/python benchmarks/bench_multi_style.py                     # 128 px, batch 4, 1 vs 10 styles
    .venv/bin/python benchmarks/bench_multi_style.py --size 256 --styles 1,2,10

The steps are dispatched without a host sync between them and timed over `--steps` after
`--warmup` (compilation included there), as `nstjax.train` runs between log steps. Writes
benchmarks/results/multi_style_<size>_b<batch>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from nstjax.image import load_resized
from nstjax.networks import TransformerNet
from nstjax.perceptual import Encoder, PerceptualLoss
from nstjax.training.data import load_val_images
from nstjax.training.loop import stack_targets
from nstjax.training.trainer import Trainer, make_mesh
from nstjax.vgg import load_vgg19

PRESETS = ["candy", "composition_vii", "feathers", "la_muse", "mosaic", "rain_princess", "starry_night",
           "the_scream", "udnie", "wave"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--styles", default="1,10", help="comma list of style counts")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    assets = os.environ["NSTJAX_ASSETS"]
    vgg = load_vgg19(assets_dir=assets)
    loss = PerceptualLoss({"relu2_2": 1.0}, weights={"content": 1.0, "style": 30.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    photos = load_val_images(f"{assets}/data/photos/train", a.size, limit=16)
    batches = [photos[i:i + a.batch] for i in range(0, 16 - a.batch + 1, a.batch)]
    rows = []
    for n in (int(s) for s in a.styles.split(",")):
        per = [loss.style_targets(encoder, [load_resized(f"{assets}/data/styles/{s}.jpg", 256)]) for s in PRESETS[:n]]
        grams = per[0] if n == 1 else stack_targets(per)
        tr = Trainer(TransformerNet(num_styles=n, rngs=nnx.Rngs(0)), encoder, loss, optax.adam(1e-3), grams,
                     make_mesh(), num_styles=n)
        xs = [tr.put_batch(b) for b in batches]
        t0 = time.perf_counter()
        for i in range(a.warmup):
            jax.block_until_ready(tr.step(xs[i % len(xs)], i))
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(a.steps):
            terms = tr.step(xs[i % len(xs)], a.warmup + i)
        jax.block_until_ready(terms)
        ms = (time.perf_counter() - t0) / a.steps * 1e3
        rows.append({"styles": n, "ms_per_step": ms, "warmup_s": warm, "loss_last": float(terms["total"])})
        print(f"{n:>3} style(s): {ms:8.1f} ms/step (warmup {warm:.1f} s)", flush=True)
    base = rows[0]["ms_per_step"]
    for r in rows:
        r["vs_first"] = r["ms_per_step"] / base
    out = a.out or Path(__file__).parent / "results" / f"multi_style_{a.size}_b{a.batch}.json"
    out.write_text(json.dumps({"size": a.size, "batch": a.batch, "steps": a.steps, "device": jax.devices()[0].device_kind,
                               "jax": jax.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
