"""The training run behind `python -m nstjax.train`: data, model, loss, loop, checkpoints, logs."""
from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import check_writable, write_json_atomic
from nstjax.config import TrainConfig, to_dict
from nstjax.errors import NstjaxError

log = logging.getLogger(__name__)


def sample_grid(photos: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Two rows: validation photos above their stylizations, (2H, N*W, 3)."""
    return np.concatenate([np.concatenate(list(photos), 1), np.concatenate(list(outputs), 1)], 0)


def load_styles(cfg: TrainConfig) -> list[np.ndarray]:
    """The style image(s) at full size (the training targets resize them to `loss.style_size`)."""
    from nstjax import assets
    from nstjax.image import load_image

    return [load_image(assets.resolve(p, assets=cfg.assets_dir, what="style.image"), what="style.image")
            for p in cfg.style.image]


def at_style_size(styles: list[np.ndarray], style_size: int | None) -> list[np.ndarray]:
    from nstjax.image import fit_size, resize

    return [resize(s, fit_size(s.shape[:2], style_size)) if style_size else s for s in styles]


def stack_targets(per_style: list[Any]) -> Any:
    """Style targets of each style -> one pytree whose leaves have a leading style axis."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_style)


def validation_report(trainer: Any, judge: Any, photos: dict[int, np.ndarray]
                      ) -> tuple[dict[int, dict[str, float]], dict[int, np.ndarray]]:
    """The network's outputs at every validation size, judged there (long side -> terms,
    layout), and the outputs themselves."""
    report, outputs = {}, {}
    for side, xs in photos.items():  # one at a time: 1024 px fits; photo i in style i (multi-style)
        outputs[side] = np.stack([trainer.stylize(x[None], first_style=i)[0] for i, x in enumerate(xs)])
        report[side] = judge.report(list(xs), list(outputs[side]))
    return report, outputs


def report_line(report: dict[int, dict[str, float]]) -> str:
    return "; ".join(f"at {side} px: style {r['style']:.4g} ({r['style_loss_reduction']:.1f}x below the photos'), "
                     f"content {r['content']:.4g}, palette {r['palette']:.4g} (photos' {r['photo_palette']:.4g}), "
                     f"edges {r['edge_corr_own']:.2f} vs {r['edge_corr_other']:.2f}"
                     for side, r in report.items())


def check_free_space(ckpt_dir: str, state: Any) -> None:
    """Refuse to start when the checkpoint disk cannot hold two checkpoints (one being written)."""
    import jax

    need = 2 * sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    free = shutil.disk_usage(ckpt_dir).free
    if free < need:
        raise NstjaxError(f"train.ckpt_dir {ckpt_dir!r}: {free / 1e6:.1f} MB free, but two checkpoints of this "
                          f"run take about {need / 1e6:.1f} MB; free some space or point it at another disk")


def run_train(cfg: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    import jax
    from flax import nnx
    from tqdm import tqdm

    from nstjax.image import save_image
    from nstjax.networks import NETWORKS, build_network, parse_dtype
    from nstjax.perceptual import Encoder
    from nstjax.evaluation.judge import Judge, StyleJudges
    from nstjax.tracking import Tracker
    from nstjax.training import distributed
    from nstjax.training.checkpoint import Checkpointer, check_writable_name
    from nstjax.training.data import load_val_images, make_dataset
    from nstjax.training.prefetch import prefetch_to_device
    from nstjax.training.resume import check_resume
    from nstjax.training.signals import GracefulStop
    from nstjax.training.trainer import Trainer, check_batch, make_mesh, make_optimizer
    from nstjax.vgg import load_vgg19

    run_dir = Path(run_dir)
    t = cfg.train
    check_writable_name(Path(t.ckpt_dir))
    check_writable(t.ckpt_dir, "train.ckpt_dir", directory=True)  # before any data or compiling
    check_writable(run_dir, "run directory", directory=True)
    distributed.initialize(cfg.distributed)  # before JAX touches a device
    steps, batch_size = t.steps, t.batch_size
    mesh = make_mesh()  # every device of every process
    n_dev, procs, primary = mesh.devices.size, jax.process_count(), distributed.is_primary()
    check_batch(batch_size, n_dev)
    loss = cfg.loss.perceptual()
    styles = load_styles(cfg)

    # Data first: a missing dataset should fail before anything slow happens.
    # Validation photos: data.val_path, or a fixed held-out slice of the training source.
    data = make_dataset(cfg.data, batch_size=batch_size // procs, seed=t.seed, process_index=jax.process_index(),
                        process_count=procs, holdout=0 if cfg.data.val_path else t.samples)

    def val_images(side: int) -> np.ndarray:
        return (load_val_images(cfg.data.val_path, side, limit=t.samples) if cfg.data.val_path
                else data.validation_images(side))

    val = val_images(cfg.data.size)
    val = val[: max(n_dev, len(val) // n_dev * n_dev)]
    # The same photos at the sizes users run the network at, judged there (nstjax.evaluation.judge).
    val_at = {side: val_images(side) for side in t.val_sizes}

    vgg = load_vgg19(cfg.vgg.weights, pooling=cfg.vgg.pooling, dtype=parse_dtype(cfg.model.dtype),
                     assets_dir=cfg.assets_dir, conv_impl=cfg.vgg.conv_impl)
    model = build_network(cfg.model, rngs=nnx.Rngs(t.seed))
    spec = NETWORKS[cfg.model.name]
    if spec.from_loss_network is not None:  # e.g. AdaIN's encoder: the loss network's ImageNet weights
        spec.from_loss_network(model, vgg)
    tx, schedule = make_optimizer(t.lr, steps, t.lr_schedule, t.warmup, t.clip_norm or None)
    encoder = Encoder(vgg, loss.layers)
    blend = cfg.style.blend_weights or None
    sized = at_style_size(styles, cfg.loss.style_size)
    if cfg.style.multi:  # one network, each image its own style: targets stacked on a style axis
        grams = stack_targets([loss.style_targets(encoder, [s]) for s in sized])
    else:
        grams = loss.style_targets(encoder, sized, blend)
    conditions = spec.conditions(model, cfg.model, styles) if spec.any_style else None  # AdaIN: style stats
    trainer = Trainer(model, encoder, loss, tx, grams, mesh, num_styles=len(styles) if cfg.style.multi else 1,
                      conditions=conditions)
    judge_for = lambda ss, b: Judge(encoder, loss, ss, b, encoder_params=trainer.consts[0],  # noqa: E731
                                    sharding=trainer.repl)
    judge = StyleJudges([judge_for([s], None) for s in styles]) if cfg.style.multi else judge_for(styles, blend)
    for side in val_at:
        judge.grams(side)  # a style image too small for a size fails here, before training
    check_free_space(t.ckpt_dir, trainer.state(jax.random.key(0)))

    host_it = iter(data)
    it = prefetch_to_device(host_it, size=cfg.data.prefetch, sharding=trainer.data_sharding)
    val_dev = trainer.put_batch(val)
    config = to_dict(cfg)
    ckpt = Checkpointer(t.ckpt_dir, save_every=t.save_every, keep_last=t.keep_last,
                        keep_best=True, best_metric="val_loss", async_save=t.async_checkpoint,
                        discard_existing=not t.resume)
    rng = jax.jit(lambda: jax.random.key(t.seed), out_shardings=trainer.repl)()  # on every process
    start = 0
    run_info: dict[str, Any] = {}
    if t.resume:
        changed: list[str] = []

        def check_config(old: dict[str, Any], at: int) -> None:
            changed[:] = check_resume(old, config, f"{t.ckpt_dir} (step {at})")

        restored = ckpt.restore_latest(trainer.state(rng), check_config)
        if restored is not None:
            trainer.load_state(restored.state)
            rng = restored.state["rng"]
            data_state = distributed.unpack_data_state(restored.data_state)
            if data_state is not None:
                it.set_state(data_state)
            start = restored.step
            run_info = restored.run_info
            print(f"resumed from {t.ckpt_dir} at step {start}"
                  + (f" with changed settings: {'; '.join(changed)}" if changed else ""))
    tracker = Tracker(cfg.wandb, job="train", run_dir=run_dir, config=config, run_id=run_info.get("wandb_id"),
                      enabled=primary)  # W&B from process 0 only
    if tracker.run_id:
        run_info = {**run_info, "wandb_id": tracker.run_id}
    samples_dir = run_dir / "samples"
    photo_style = trainer.photo_style_loss(val_dev)

    def save_samples(step: int) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """Validation: the training objective on the crops, the judge at every val size, and a
        grid of full-resolution outputs (at the first val size) saved and logged."""
        at, outputs = validation_report(trainer, judge, val_at)  # every process takes part; process 0 writes
        if primary:
            side = t.val_sizes[0] if t.val_sizes else None
            grid = sample_grid(val_at[side], outputs[side]) if side else sample_grid(val, trainer.stylize(val))
            save_image(grid, samples_dir / f"step_{step:06d}.jpg")
            tracker.log_images({"samples": grid}, step=step)
        return trainer.evaluate(val_dev), at

    def val_metrics(terms: dict[str, float], at: dict[int, dict[str, float]]) -> dict[str, float]:
        return {f"val/{k}": v for k, v in terms.items()} | {
            f"val_{side}/{k}": v for side, r in at.items() for k, v in r.items()}

    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.run_name}", unit="step", dynamic_ncols=True,
               disable=not primary)
    log_every = t.log_every or steps
    last_t, last_step = time.perf_counter(), start
    summary: dict[str, Any] = {}
    step = start
    logged_ips: list[float] = []  # throughput of every log interval (the first includes compilation)
    flags: list[tuple[int, Any]] = []  # (step, device flag: its update was skipped as non-finite)
    nonfinite = 0

    def handle_nonfinite(bad: list[int], step: int) -> None:
        """Steps whose loss or gradient was not finite had their update skipped on the device."""
        what = f"non-finite loss or gradient at {len(bad)} step(s) up to step {step} (first: {bad[0]})"
        if t.nonfinite == "stop":
            raise NstjaxError(f"training stopped: {what}; lower train.lr or the loss weights, or set "
                              "train.nonfinite=skip")
        if t.nonfinite == "rollback":
            restored = ckpt.restore_latest(trainer.state(rng))
            if restored is not None:
                trainer.load_state(restored.state)
                log.warning("%s: rolled back to checkpoint step %d (the data stream goes on)", what, restored.step)
                return
        log.warning("%s: those updates were skipped", what)
    loop_t0 = time.perf_counter()
    try:
        with GracefulStop() as stop:
            stopping = False  # the processes of a multi-process run agree on it at log steps
            for step in range(start + 1, steps + 1):
                terms = trainer.step(next(it), step)
                flags.append((step, terms["nonfinite"]))  # stays on the device until the log step
                if procs == 1:
                    stopping = stop.requested
                if step % log_every == 0 or step == steps:
                    if procs > 1:
                        stopping = distributed.any_process(stop.requested)
                    vals = {k: float(v) for k, v in jax.device_get(terms).items()}  # the only sync
                    logged_steps, logged_flags = zip(*flags)
                    bad = [s for s, f in zip(logged_steps, jax.device_get(list(logged_flags))) if f]
                    flags.clear()
                    ckpt.check()  # a failed background save is reported now, as its own step
                    nonfinite += len(bad)
                    if bad:
                        handle_nonfinite(bad, step)
                    now = time.perf_counter()
                    ips = (step - last_step) * batch_size / (now - last_t)
                    last_t, last_step = now, step
                    logged_ips.append(ips)
                    tracker.log({**{f"loss/{k}": v for k, v in vals.items() if k != "grad_norm"},
                                 "grad_norm": vals["grad_norm"], "images_per_sec": ips,
                                 "lr": float(schedule(step)), "data/skipped": it.skipped,
                                 "nonfinite_steps": nonfinite}, step=step)
                    bar.set_postfix(loss=f"{vals['total']:.4g}", style=f"{vals['style']:.3g}",
                                    img_s=f"{ips:.1f}")
                bar.update(step - bar.n)
                if t.sample_every and step % t.sample_every == 0:
                    tracker.log(val_metrics(*save_samples(step)), step=step)
                if (ckpt.should_save(step) or step == steps or stopping) and trainer.params_finite():
                    val_terms = trainer.evaluate(val_dev)
                    ckpt.save(step, trainer.state(rng), data_state=distributed.pack_data_state(it.get_state()),
                              config=config, metrics={"val_loss": val_terms["total"]}, force=True,
                              run_info=run_info)
                if stopping:
                    break
        ckpt.wait()
        if stopping:  # preempted: the checkpoint is all that matters; no samples, no summary
            bar.close()
            print(f"nstjax: stopped by {stop.signal_name or 'SIGTERM to another process'} at step {step}; "
                  f"checkpoint saved in {t.ckpt_dir}; run the same command to resume", file=sys.stderr, flush=True)
            raise SystemExit(stop.exit_status if stop.signum else 128 + 15)
        train_seconds = time.perf_counter() - loop_t0
        steady = sorted(logged_ips[1:] or logged_ips)
        final, final_at = save_samples(step)
        summary = {"step": step, "val": final, "val_photo_style_loss": photo_style,
                   "style_loss_reduction": photo_style / max(final["style"], 1e-30),
                   "val_at": {str(side): r for side, r in final_at.items()},
                   "devices": n_dev, "processes": procs, "device": jax.devices()[0].device_kind,
                   "data_skipped": it.skipped, "nonfinite_steps": nonfinite, "ckpt_dir": str(t.ckpt_dir),
                   "train_seconds": train_seconds, "steps_this_run": step - start,
                   "images_per_sec_median": steady[len(steady) // 2] if steady else None}
        if primary:
            write_json_atomic(summary, run_dir / "summary.json")
        tracker.summary({k: v for k, v in summary.items() if k not in ("val", "val_at")}
                        | val_metrics(final, final_at))
    except BaseException:
        # Already failing: closing must not replace the real error with a secondary one.
        for close in (bar.close, ckpt.close, it.close, tracker.finish):
            try:
                close()
            except Exception as e:  # noqa: BLE001
                log.warning("while stopping: %s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        raise
    bar.close()
    ckpt.close()
    it.close()
    tracker.finish()
    return summary
