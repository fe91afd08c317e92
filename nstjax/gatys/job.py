"""`nstjax.stylize`'s job: load the images, optimize over the pyramid, write image and report."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import check_writable, write_json_atomic
from nstjax.config import StylizeConfig, to_dict


def run_stylize(cfg: StylizeConfig, run_dir: str | Path = "outputs/stylize") -> dict[str, Any]:
    import jax
    from tqdm import tqdm

    from nstjax import assets, color
    from nstjax.gatys.optimizer import check_pyramid, make_levels, stylize_pyramid
    from nstjax.image import load_image, resize, save_image
    from nstjax.tracking import Tracker
    from nstjax.vgg import load_vgg19

    out = Path(cfg.output)
    check_writable(out, "output")
    levels = make_levels(cfg.size, cfg.pyramid, cfg.steps)
    settings = cfg.gatys()

    def load(name: str, what: str) -> np.ndarray:
        return load_image(assets.resolve(name, assets=cfg.assets_dir, what=what), what=what)

    content = load(cfg.content.image, "content.image")
    styles = [load(p, "style.image") for p in cfg.style.image]
    init: str | np.ndarray = cfg.init if cfg.init in ("content", "noise") else load(cfg.init, "init")
    if cfg.color == "histogram":
        styles = [color.match_color_histogram(s, content) for s in styles]

    check_pyramid(settings.loss, content, styles, levels, cfg.style_scale)  # before anything slow
    vgg = load_vgg19(cfg.vgg.weights, pooling=cfg.vgg.pooling, assets_dir=cfg.assets_dir,
                     conv_impl=cfg.vgg.conv_impl)
    tracker = Tracker(cfg.wandb, job="stylize", run_dir=run_dir, config=to_dict(cfg))
    total_steps = sum(lv.steps for lv in levels)
    bar = tqdm(total=total_steps, desc="stylize", unit="step", dynamic_ncols=True,
               disable=os.environ.get("NSTJAX_NO_PROGRESS") == "1")
    last_logged = [0]

    def on_chunk(step: int, x: np.ndarray, terms: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(total=f"{terms['total']:.4g}", content=f"{terms['content']:.3g}",
                        style=f"{terms['style']:.3g}")
        tracker.log({f"loss/{k}": v for k, v in terms.items()}, step=step)
        if cfg.image_every and step // cfg.image_every > last_logged[0] // cfg.image_every:
            tracker.log_images({"image": x}, step=step)
            save_image(x, out.with_name(f"{out.stem}_{step:05d}{out.suffix}"))  # like neural-style's -save_iter
        last_logged[0] = step

    t0 = time.perf_counter()
    try:
        image, results = stylize_pyramid(vgg, content, styles, levels, settings, init=init,
                                          blend=cfg.style.blend_weights or None,
                                          style_scale=cfg.style_scale, seed=cfg.seed, callback=on_chunk)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if cfg.color == "luminance":
        image = color.transfer_luminance(image, resize(content, image.shape[:2]))
    save_image(image, out)
    report = {
        "output": str(out),
        "content": cfg.content.image,
        "style": list(cfg.style.image),
        "size": [int(image.shape[1]), int(image.shape[0])],
        "steps": total_steps,
        "levels": [{"size": lv.size, "steps": lv.steps, "initial": r.initial, "final": r.final,
                    "compile_seconds": r.compile_seconds, "run_seconds": r.run_seconds}
                   for lv, r in zip(levels, results)],
        "initial": results[0].initial,
        "final": results[-1].final,
        "seconds": seconds,
        "compile_seconds": sum(r.compile_seconds for r in results),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "optimizer": settings.optimizer,
    }
    write_json_atomic(report, out.with_suffix(".json"))
    tracker.log_images({"image": image}, step=total_steps)
    tracker.summary({f"final/{k}": v for k, v in report["final"].items()} | {"seconds": seconds})
    tracker.finish()
    return report
