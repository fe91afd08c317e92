"""CLI: train a feed-forward style network on every local device, resumable.

    python -m nstjax.train style=mosaic                         # COCO via TFDS (data=coco)
    python -m nstjax.train experiment=cpu_quick style=candy     # bundled photos, small, CPU
    python -m nstjax.train style=udnie data=folder data.path=~/photos model.dtype=bfloat16
    python -m nstjax.train -m experiment=sweep_style_weight     # Hydra multirun sweep
Re-running the same command resumes from the last checkpoint; `train.resume=false` starts over.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nstjax.errors import NstjaxError, cli_errors
from nstjax.runtime import configure as configure_runtime
from nstjax.atomic import write_json_atomic
from nstjax.stylize import _as_list, layer_weights, quiet_jax_logs


def sample_grid(photos, outputs):
    """Two rows: validation photos above their stylizations, (2H, N*W, 3)."""
    import numpy as np

    return np.concatenate([np.concatenate(list(photos), 1), np.concatenate(list(outputs), 1)], 0)


def run_train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    import jax
    import numpy as np
    from flax import nnx
    from tqdm import tqdm

    from nstjax import assets
    from nstjax.checkpoint import Checkpointer, GracefulStop
    from nstjax.data import load_val_images, make_dataset, prefetch_to_device
    from nstjax.image import fit_size, load_image, resize, save_image
    from nstjax.networks import build_network, parse_dtype
    from nstjax.tracking import Tracker
    from nstjax.trainer import PerceptualLoss, Trainer, check_batch, make_mesh, make_optimizer, style_targets
    from nstjax.vgg import load_vgg19

    run_dir = Path(run_dir)
    t = cfg.train
    steps, batch_size = int(t.steps), int(t.batch_size)
    if steps < 1:
        raise NstjaxError(f"train.steps must be >= 1, got {steps}")
    for key in ("log_every", "save_every", "sample_every"):
        if int(t[key]) < 0:
            raise NstjaxError(f"train.{key} must be >= 0, got {t[key]}")
    mesh = make_mesh()
    n_dev = mesh.devices.size
    check_batch(batch_size, n_dev)
    loss = PerceptualLoss(
        content_layers=layer_weights(cfg.loss.content_layers, cfg.loss.content_layer_weights, "loss.content_layer_weights"),
        style_layers=layer_weights(cfg.loss.style_layers, cfg.loss.style_layer_weights, "loss.style_layer_weights"),
        content_weight=float(cfg.loss.content_weight), style_weight=float(cfg.loss.style_weight),
        tv_weight=float(cfg.loss.tv_weight))
    loss.validate()

    adir = cfg.get("assets_dir")
    styles = []
    for p in _as_list(cfg.style.image):
        img = load_image(assets.resolve(str(p), assets=adir, what="style.image"), what="style.image")
        if cfg.loss.style_size:
            img = resize(img, fit_size(img.shape[:2], int(cfg.loss.style_size)))
        styles.append(img)
    if not styles:
        raise NstjaxError("style.image: no style image given")
    blend = [float(b) for b in _as_list(cfg.style.blend_weights)] or None

    # Data first: a missing dataset should fail before anything slow happens.
    data = make_dataset(cfg.data, batch_size=batch_size, seed=int(t.seed))
    val = load_val_images(cfg.data.val_path, int(cfg.data.size), limit=int(t.samples))
    val = val[: max(n_dev, len(val) // n_dev * n_dev)]

    dtype = parse_dtype(cfg.model.dtype)
    vgg = load_vgg19(cfg.vgg.weights, pooling=str(cfg.vgg.pooling), dtype=dtype, assets_dir=adir,
                     conv_impl=str(cfg.vgg.get("conv_impl", "auto")))
    model = build_network(cfg.model, rngs=nnx.Rngs(int(t.seed)))
    tx, schedule = make_optimizer(float(t.lr), steps, str(t.lr_schedule), int(t.warmup),
                                  float(t.clip_norm) if t.clip_norm else None)
    grams = style_targets(vgg, styles, loss.style_layers, blend)
    trainer = Trainer(model, vgg, loss, tx, grams, mesh)

    host_it = iter(data)
    it = prefetch_to_device(host_it, size=int(cfg.data.prefetch), sharding=trainer.data_sharding)
    val_dev = trainer.put_batch(val)
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt = Checkpointer(str(t.ckpt_dir), save_every=int(t.save_every), keep_last=int(t.keep_last),
                        keep_best=True, best_metric="val_loss", async_save=bool(t.async_checkpoint),
                        discard_existing=not bool(t.resume))
    rng = jax.random.key(int(t.seed))
    start = 0
    if t.resume:
        restored = ckpt.restore_latest(jax.eval_shape(lambda: trainer.state(rng)))
        if restored is not None:
            trainer.load_state(restored.state)
            rng = restored.state["rng"]
            it.set_state(restored.data_state)
            start = restored.step
            print(f"resumed from {t.ckpt_dir} at step {start}")
    tracker = Tracker(cfg.wandb, job="train", run_dir=run_dir, config=config)
    samples_dir = run_dir / "samples"
    photo_style = trainer.photo_style_loss(val_dev)

    def save_samples(step: int) -> dict[str, float]:
        out = trainer.stylize(val)
        grid = sample_grid(val, out)
        save_image(grid, samples_dir / f"step_{step:06d}.jpg")
        tracker.log_images({"samples": grid}, step=step)
        return trainer.evaluate(val_dev)

    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.run_name}", unit="step", dynamic_ncols=True)
    log_every = int(t.log_every) or steps
    last_t, last_step = time.perf_counter(), start
    summary: dict[str, Any] = {}
    step = start
    logged_ips: list[float] = []  # throughput of every log interval (the first includes compilation)
    loop_t0 = time.perf_counter()
    try:
        with GracefulStop() as stop:
            for step in range(start + 1, steps + 1):
                terms = trainer.step(next(it))
                if step % log_every == 0 or step == steps:
                    vals = {k: float(v) for k, v in jax.device_get(terms).items()}  # the only sync
                    now = time.perf_counter()
                    ips = (step - last_step) * batch_size / (now - last_t)
                    last_t, last_step = now, step
                    logged_ips.append(ips)
                    lr = float(schedule(step))
                    tracker.log({**{f"loss/{k}": v for k, v in vals.items() if k != "grad_norm"},
                                 "grad_norm": vals["grad_norm"], "images_per_sec": ips, "lr": lr,
                                 "data/skipped": it.skipped}, step=step)
                    bar.set_postfix(loss=f"{vals['total']:.4g}", style=f"{vals['style']:.3g}",
                                    img_s=f"{ips:.1f}")
                    if not np.isfinite(vals["total"]):
                        raise NstjaxError(f"training diverged at step {step} (loss {vals['total']}): "
                                          "lower train.lr or the loss weights")
                bar.update(step - bar.n)
                sample_every = int(t.sample_every)
                if sample_every and step % sample_every == 0:
                    tracker.log({f"val/{k}": v for k, v in save_samples(step).items()}, step=step)
                if ckpt.should_save(step) or step == steps or stop.requested:
                    val_terms = trainer.evaluate(val_dev)
                    ckpt.save(step, trainer.state(rng), data_state=it.get_state(), config=config,
                              metrics={"val_loss": val_terms["total"]}, force=True)
                if stop.requested:
                    print(f"\nstopped by {stop.signal_name} at step {step}; checkpoint saved to {t.ckpt_dir}")
                    break
        ckpt.wait()
        train_seconds = time.perf_counter() - loop_t0
        steady = sorted(logged_ips[1:] or logged_ips)
        final = save_samples(step)
        summary = {"step": step, "val": final, "val_photo_style_loss": photo_style,
                   "style_loss_reduction": photo_style / max(final["style"], 1e-30),
                   "devices": n_dev, "device": jax.devices()[0].device_kind,
                   "data_skipped": it.skipped, "ckpt_dir": str(t.ckpt_dir),
                   "train_seconds": train_seconds, "steps_this_run": step - start,
                   "images_per_sec_median": steady[len(steady) // 2] if steady else None}
        write_json_atomic(summary, run_dir / "summary.json")
        tracker.summary({k: v for k, v in summary.items() if k != "val"}
                        | {f"val/{k}": v for k, v in final.items()})
    finally:
        bar.close()
        ckpt.close()
        it.close()
        tracker.finish()
    return summary


@hydra.main(config_path="pkg://nstjax.conf", config_name="train", version_base="1.3")
@cli_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_jax_logs()
    configure_runtime(cfg.get("runtime"))
    s = run_train(cfg, HydraConfig.get().runtime.output_dir)
    if s:
        print(f"done at step {s['step']}: val content {s['val']['content']:.4g}, style {s['val']['style']:.4g} "
              f"(photos' own style loss {s['val_photo_style_loss']:.4g}, {s['style_loss_reduction']:.1f}x lower)")


if __name__ == "__main__":
    main()
