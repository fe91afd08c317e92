"""CLI: Gatys style transfer of one photo.

    python -m nstjax.stylize content.image=photo.jpg style=mosaic output=out.png
    python -m nstjax.stylize style.image=[a.jpg,b.jpg] style.blend_weights=[0.7,0.3] size=1024 pyramid=[256,512]
    python -m nstjax.stylize -m loss.style_weight=1e2,1e3      # Hydra multirun sweep
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from nstjax.atomic import write_json_atomic
from nstjax.errors import NstjaxError, cli_errors
from nstjax.runtime import configure as configure_runtime


def quiet_jax_logs() -> None:
    """Hydra sets the root logger to INFO; JAX's backend probing is noise at that level."""
    for name in ("jax", "absl", "orbax", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _as_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, (list, tuple, ListConfig)):
        return list(v)
    return [v]


def layer_weights(layers: Any, weights: Any, setting: str) -> dict[str, float]:
    """`[relu1_1, relu2_1]` + optional `[1.0, 0.5]` -> {"relu1_1": 1.0, "relu2_1": 0.5}."""
    names = [str(n) for n in _as_list(layers)]
    ws = [float(w) for w in _as_list(weights)] or [1.0] * len(names)
    if len(ws) != len(names):
        raise NstjaxError(f"{setting}: {len(ws)} weights for {len(names)} layers {names}")
    return dict(zip(names, ws))


def settings_from_cfg(cfg: DictConfig):
    from nstjax.gatys import GatysSettings

    loss = cfg.loss
    return GatysSettings(
        content_layers=layer_weights(loss.content_layers, loss.content_layer_weights, "loss.content_layer_weights"),
        style_layers=layer_weights(loss.style_layers, loss.style_layer_weights, "loss.style_layer_weights"),
        content_weight=float(cfg.loss.content_weight), style_weight=float(cfg.loss.style_weight),
        tv_weight=float(cfg.loss.tv_weight), optimizer=str(cfg.optimizer), lr=float(cfg.lr),
        lbfgs_memory=int(cfg.lbfgs_memory), steps=0, log_every=int(cfg.log_every))


def run_stylize(cfg: DictConfig, run_dir: str | Path = "outputs/stylize") -> dict[str, Any]:
    """Load inputs, optimize over the pyramid, write the image and its JSON report."""
    import jax
    import numpy as np
    from tqdm import tqdm

    from nstjax import assets, color
    from nstjax.gatys import make_levels, stylize_pyramid
    from nstjax.image import load_image, resize, save_image
    from nstjax.tracking import Tracker
    from nstjax.vgg import load_vgg19

    out = Path(str(cfg.output))
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        raise NstjaxError(f"output {str(out)!r}: use an image extension such as .png or .jpg")
    if str(cfg.color) not in ("none", "luminance", "histogram"):
        raise NstjaxError(f"color: expected none, luminance or histogram, got {cfg.color!r}")
    levels = make_levels(int(cfg.size), _as_list(cfg.pyramid),
                         cfg.steps if not isinstance(cfg.steps, ListConfig) else list(cfg.steps))
    settings = settings_from_cfg(cfg)
    settings.validate()

    adir = cfg.get("assets_dir")
    content = load_image(assets.resolve(str(cfg.content.image), assets=adir, what="content.image"),
                         what="content.image")
    style_paths = _as_list(cfg.style.image)
    if not style_paths:
        raise NstjaxError("style.image: no style image given")
    styles = [load_image(assets.resolve(str(p), assets=adir, what="style.image"), what="style.image")
              for p in style_paths]
    init: str | np.ndarray = str(cfg.init)
    if init not in ("content", "noise"):
        init = load_image(assets.resolve(init, assets=adir, what="init"), what="init")
    if cfg.color == "histogram":
        styles = [color.match_color_histogram(s, content) for s in styles]

    vgg = load_vgg19(cfg.vgg.weights, pooling=str(cfg.vgg.pooling), assets_dir=adir,
                     conv_impl=str(cfg.vgg.get("conv_impl", "auto")))
    tracker = Tracker(cfg.wandb, job="stylize", run_dir=run_dir,
                      config=OmegaConf.to_container(cfg, resolve=True))
    total_steps = sum(lv.steps for lv in levels)
    bar = tqdm(total=total_steps, desc="stylize", unit="step", dynamic_ncols=True,
               disable=os.environ.get("NSTJAX_NO_PROGRESS") == "1")
    image_every = int(cfg.image_every)
    last_logged = [0]

    def on_chunk(step: int, x: np.ndarray, terms: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(total=f"{terms['total']:.4g}", content=f"{terms['content']:.3g}",
                        style=f"{terms['style']:.3g}")
        tracker.log({f"loss/{k}": v for k, v in terms.items()}, step=step)
        if image_every and step // image_every > last_logged[0] // image_every:
            tracker.log_images({"image": x}, step=step)
            save_image(x, out.with_name(f"{out.stem}_{step:05d}{out.suffix}"))  # like neural-style's -save_iter
        last_logged[0] = step

    t0 = time.perf_counter()
    try:
        image, results = stylize_pyramid(vgg, content, styles, levels, settings, init=init,
                                          blend=_as_list(cfg.style.blend_weights) or None,
                                          style_scale=float(cfg.style_scale), seed=int(cfg.seed),
                                          callback=on_chunk)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if cfg.color == "luminance":
        image = color.transfer_luminance(image, resize(content, image.shape[:2]))
    save_image(image, out)
    report = {
        "output": str(out),
        "content": str(cfg.content.image),
        "style": [str(p) for p in style_paths],
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


@hydra.main(config_path="pkg://nstjax.conf", config_name="stylize", version_base="1.3")
@cli_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_jax_logs()
    configure_runtime(cfg.get("runtime"))
    report = run_stylize(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    f = report["final"]
    print(f"wrote {report['output']} ({report['size'][0]}x{report['size'][1]}, {report['steps']} steps, "
          f"{report['seconds']:.1f} s): content {f['content']:.4g}, style {f['style']:.4g}, "
          f"tv {f['tv']:.4g}, total {f['total']:.4g}")


if __name__ == "__main__":
    main()
