"""`nstjax.evaluate`'s job: a network (and optionally Gatys) judged on photos at several sizes."""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import check_writable, write_json_atomic
from nstjax.config import EvaluateConfig, StyleConfig, TrainLossConfig, load, to_dict
from nstjax.errors import NstjaxError


def chosen_style_config(style: StyleConfig, chosen: Mapping[str, float] | None) -> StyleConfig:
    """The training style list of a multi-style network -> the style (or blend) `model_style` chose."""
    if not chosen:
        raise NstjaxError("a multi-style network is judged one style at a time: pass model_style=NAME")
    by_name = dict(zip(style.names(), style.image))  # an any-style network's choice is a path itself
    return StyleConfig(name="+".join(Path(n).stem for n in chosen), image=[by_name.get(n, n) for n in chosen],
                       blend_weights=list(chosen.values()) if len(chosen) > 1 else None)


def judged_style_and_loss(cfg: EvaluateConfig, trained: Mapping[str, Any] | None, where: str,
                          chosen: Mapping[str, float] | None = None) -> tuple[StyleConfig, TrainLossConfig, str]:
    """The style to judge against, the loss, and the VGG pooling: the model's own (as trained;
    for a multi-style network the style `chosen` by model_style) unless the command names them."""
    trained = trained or {}
    style = cfg.style
    if style is None:
        if "style" not in trained:
            raise NstjaxError(f"{where} records no training style (e.g. a .pth file): pass style=NAME "
                              "(a preset, optionally with style.image=PATH)")
        style = load(StyleConfig, trained["style"])
        if style.multi:  # a multi-style network: judged against the style (or mix) chosen
            style = chosen_style_config(style, chosen)
    loss, pooling = cfg.loss, cfg.vgg.pooling
    if cfg.loss_from_model and "loss" in trained:
        loss = load(TrainLossConfig, trained["loss"])
        pooling = (trained.get("vgg") or {}).get("pooling", pooling)
    if loss is None:
        raise NstjaxError("loss: none recorded in the model and none given; pass loss=johnson")
    return style, loss, pooling


def load_photos(cfg: EvaluateConfig) -> tuple[list[str], list[np.ndarray]]:
    from nstjax.image import load_image
    from nstjax.training.data import list_images

    p = Path(str(cfg.data.path)).expanduser()
    if not p.exists():
        raise NstjaxError(f"data.path {str(p)!r} does not exist: pass a photo or a folder of photos")
    files = [p] if p.is_file() else list_images(p, setting="data.path")
    files = files[: cfg.data.limit]
    return [f.name for f in files], [load_image(f, what="photo") for f in files]


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from nstjax import assets
    from nstjax.evaluation.judge import Judge, at_long_side
    from nstjax.gatys.optimizer import GatysSettings, run_gatys
    from nstjax.image import fit_size, load_image, resize, save_image
    from nstjax.perceptual import Encoder
    from nstjax.serving.loading import load_stylizer
    from nstjax.vgg import load_vgg19

    for path, what in ((cfg.output, "output"), (cfg.images, "images")):
        if path:
            check_writable(Path(path), what, directory=what == "images")
    stylizer = load_stylizer(str(cfg.model_path), step=cfg.step, model_style=cfg.model_style)
    style, loss_cfg, pooling = judged_style_and_loss(cfg, stylizer.meta.get("config"),
                                                     f"model_path {cfg.model_path!r}",
                                                     (stylizer.meta.get("source") or {}).get("model_style"))
    loss = loss_cfg.perceptual()
    names, photos = load_photos(cfg)
    styles = [load_image(assets.resolve(p, assets=cfg.assets_dir, what="style.image"), what="style.image")
              for p in style.image]
    vgg = load_vgg19(cfg.vgg.weights, pooling=pooling, assets_dir=cfg.assets_dir, conv_impl=cfg.vgg.conv_impl)
    judge = Judge(Encoder(vgg, loss.layers), loss, styles, style.blend_weights or None, style_scale=cfg.style_scale)
    for side in cfg.sizes:
        judge.grams(side)  # a size too small for the loss layers fails before any work
    gatys = GatysSettings(loss=loss, optimizer=cfg.gatys_optimizer, steps=cfg.gatys_steps,
                          log_every=max(cfg.gatys_steps, 1))
    report: dict[str, Any] = {"model_path": str(cfg.model_path), "model": stylizer.model, "style": list(style.image),
                              "photos": names, "square": cfg.square, "net_size": cfg.net_size, "style_scale": cfg.style_scale,
                              "loss": to_dict(loss_cfg), "vgg_pooling": pooling, "sizes": {}}
    bar = tqdm(total=len(cfg.sizes) * len(photos), desc="evaluate", unit="photo", dynamic_ncols=True)
    for side in cfg.sizes:
        xs = [at_long_side(p, side, cfg.square) for p in photos]
        ys, gs, net_seconds, gatys_seconds = [], [], 0.0, 0.0
        for name, x in zip(names, xs):
            xin = x if cfg.net_size is None else resize(x, fit_size(x.shape[:2], cfg.net_size))
            stylizer.compile((1, *xin.shape))  # outside the timed region
            t0 = time.perf_counter()
            y = np.clip(stylizer(xin), 0.0, 1.0)
            net_seconds += time.perf_counter() - t0
            ys.append(resize(y, x.shape[:2]) if xin is not x else y)  # judged at the size of use
            if cfg.gatys_steps:  # the same loss, the style at the judge's scale
                ss = [resize(s, fit_size(s.shape[:2], judge.style_side(side))) for s in styles]
                r = run_gatys(vgg, x, ss, gatys, blend=style.blend_weights or None)
                gs.append(r.image)
                gatys_seconds += r.run_seconds
            if cfg.images:
                strip = np.concatenate([x, ys[-1], *gs[-1:]], axis=1)
                save_image(strip, Path(cfg.images) / f"{Path(name).stem}_{side}.jpg")
            bar.update(1)
        entry: dict[str, Any] = {"network": judge.report(xs, ys), "network_ms_per_image": 1e3 * net_seconds / len(xs)}
        if gs:
            entry["gatys"] = judge.report(xs, gs)
            entry["gatys_seconds_per_image"] = gatys_seconds / len(xs)
        report["sizes"][str(side)] = entry
    bar.close()
    if cfg.output:
        write_json_atomic(report, Path(cfg.output))
    return report


def report_table(report: Mapping[str, Any]) -> str:
    """The report as a few aligned lines (one per size and method)."""
    rows = [f"{'size':>5}  {'method':<8} {'style':>10} {'photos':>10} {'lower':>7} {'content':>10} "
            f"{'palette':>8} {'photos':>8} {'edges own/other':>16}"]
    for side, entry in report["sizes"].items():
        for method in ("network", "gatys"):
            if method in entry:
                r = entry[method]
                rows.append(f"{side:>5}  {method:<8} {r['style']:>10.4g} {r['photo_style']:>10.4g} "
                            f"{r['style_loss_reduction']:>6.1f}x {r['content']:>10.4g} "
                            f"{r['palette']:>8.4g} {r['photo_palette']:>8.4g} "
                            f"{r['edge_corr_own']:>8.2f}/{r['edge_corr_other']:.2f}")
    return "\n".join(rows)
