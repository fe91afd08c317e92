"""`nstjax.infer`'s job: stylize an image, a folder, an animation or a video with a network."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import check_writable
from nstjax.image import fit_size, resize
from nstjax.config import InferConfig
from nstjax.serving.media import DEFAULT_FPS, VideoWriter, check_output, open_source, output_name, save_animation
from nstjax.serving.stream import RunStats, stylize_stream
from nstjax.serving.memory import MB, budget_bytes, plan_tiles
from nstjax.serving.tiling import stylize_tiled


def tiled_stream(stylizer: Any, items: Iterator[tuple[Any, np.ndarray]], cfg: InferConfig,
                 stats: RunStats) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Each image in overlapping tiles (`tile`, `overlap`); one executable for every tile.

    With tile=auto the tile comes from the memory budget, per image size (nstjax/serving/memory.py):
    the whole image when the network fits the budget at that size, else the largest tile that does.
    """
    budget = budget_bytes(cfg.memory_budget) if cfg.tile == "auto" else 0
    plans: dict[tuple[int, int], int | None] = {}
    for key, img in items:
        tile = cfg.tile
        if tile == "auto":
            if img.shape[:2] not in plans:
                plan = plan_tiles(stylizer, *img.shape[:2], batch=cfg.batch, overlap=cfg.overlap, budget=budget)
                plans[img.shape[:2]] = plan.tile
                stats.tiles[f"{img.shape[1]}x{img.shape[0]}"] = {"tile": plan.tile, "network_mb": plan.bytes / MB,
                                                                 "budget_mb": plan.budget / MB}
            tile = plans[img.shape[:2]]
        if tile is None:  # tile=auto and the whole image fits
            th, tw, n = img.shape[0], img.shape[1], 1
        else:
            th, tw = min(tile, img.shape[0]), min(tile, img.shape[1])
            n = 1 if (th, tw) == img.shape[:2] else cfg.batch
        stylizer.compile((n, th, tw, 3))  # outside the timed region
        stats.shapes.add((n, th, tw, 3))
        t0 = time.perf_counter()
        if tile is None:
            y = stylizer(img)
        else:
            y = stylize_tiled(stylizer, img, tile=tile, overlap=cfg.overlap, batch=cfg.batch)
        stats.seconds += time.perf_counter() - t0
        stats.images += 1
        yield key, img, y


def at_net_size(items: Iterator[tuple[Any, np.ndarray]],
                net_size: int) -> Iterator[tuple[tuple[Any, np.ndarray], np.ndarray]]:
    """(key, image) -> ((key, image), image at long side `net_size`): the network runs small or
    large, and the full-size image travels with the key for resizing back and blending."""
    for key, img in items:
        yield (key, img), resize(img, fit_size(img.shape[:2], net_size))


def _device(stylizer: Any) -> str:
    """Where the network ran: the stylizer's own runtime (e.g. ONNX Runtime) or jax's device."""
    own = getattr(stylizer, "device", None)
    if own:
        return str(own)
    import jax

    dev = jax.devices()[0]
    return f"{dev.platform}:{dev.device_kind}"


def made_for(stylizer: Any) -> int | None:
    """The output size a trained network was made for: its style targets' size (None if unknown)."""
    config = stylizer.meta.get("config") or {}
    size = (config.get("loss") or {}).get("style_size") if isinstance(config, dict) else None
    return int(size) if size else None


def _postprocess(cfg: InferConfig, y: np.ndarray, content: np.ndarray) -> np.ndarray:
    from nstjax import color as colorlib

    y = np.clip(y, 0.0, 1.0)
    if cfg.color == "luminance":
        y = colorlib.transfer_luminance(y, content)
    if cfg.alpha < 1.0:  # style strength: a blend with the photo
        y = cfg.alpha * y + (1.0 - cfg.alpha) * content
    return y


def _video_to_video(cfg: InferConfig, src: Any, out: Path, stylizer: Any) -> dict[str, Any]:
    """Decode, network and encode overlapped; frame rate, size and audio kept."""
    from tqdm import tqdm

    from nstjax.serving.video import probe, stylize_video

    info = probe(src.path)
    work = cfg.net_size or cfg.size  # video keeps its own size: both only set where the network runs
    size = None if work is None else fit_size((info.height, info.width), work)
    stats = RunStats()
    bar = tqdm(total=info.frames, desc="stylize video", unit="frame", dynamic_ncols=True)

    def run(x: np.ndarray) -> np.ndarray:
        if size is not None:
            x = np.stack([resize(f, size) for f in x])
        stylizer.compile(x.shape)  # outside the timed region
        stats.shapes.add(x.shape)
        t0 = time.perf_counter()
        y = stylizer(x)
        stats.seconds += time.perf_counter() - t0
        stats.images += len(x)
        ys = np.stack([_postprocess(cfg, yi, xi) for yi, xi in zip(y, x)])
        return ys if size is None else np.stack([resize(yi, (info.height, info.width)) for yi in ys])

    t0 = time.perf_counter()
    try:
        r = stylize_video(src.path, out, run, batch=cfg.batch, start=cfg.start, duration=cfg.duration,
                          on_frame=lambda: bar.update(1))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    return {"output": str(out), "written": [str(out)], "input_kind": "video", "images": r["frames"],
            "skipped": 0, "existing": 0, "shapes": sorted(list(s) for s in stats.shapes),
            "compiles": len(stylizer.compile_seconds), "compile_seconds": float(sum(stylizer.compile_seconds.values())),
            "ms_per_image": stats.ms_per_image, "batch": cfg.batch, "backend": stylizer.backend,
            "model": stylizer.model, "device": _device(stylizer), "durations": None,
            "fps": r["fps"], "video_fps_end_to_end": r["frames"] / wall if wall > 0 else None,
            "audio_packets": r["audio_packets"], "made_for": made_for(stylizer)}


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    from nstjax.image import save_image
    from nstjax.serving.loading import load_stylizer

    out = Path(str(cfg.output)).expanduser()
    existing: list[Path] = []

    def exists(f: Path) -> bool:  # a folder's outputs already written are not redone
        done = not cfg.overwrite and (out / output_name(f, "folder", Path(str(cfg.input)).expanduser())).exists()
        if done:
            existing.append(f)
        return done

    src = open_source(str(cfg.input), cfg.size, exclude=exists if out.is_dir() else None)
    target = check_output(src, Path(str(cfg.input)).expanduser(), out)
    check_writable(out, "output", directory=target == "dir")
    stylizer = load_stylizer(str(cfg.model_path), step=cfg.step, use_compiled_format=cfg.stablehlo,
                              dtype=cfg.dtype, model_style=cfg.model_style)

    if src.kind == "video" and target == "video":
        return _video_to_video(cfg, src, out, stylizer)
    stats = RunStats()
    written: list[str] = []
    collected: list[np.ndarray] = []
    video = None
    if target == "video":
        # Animation durations are only known once read, so GIF -> video uses fps or the default.
        video = VideoWriter(out, float(cfg.fps or src.fps or DEFAULT_FPS))
    ok = False
    items = src.frames() if cfg.net_size is None else at_net_size(src.frames(), cfg.net_size)
    frames = (stylize_stream(stylizer, items, batch=cfg.batch, stats=stats) if cfg.tile is None
              else tiled_stream(stylizer, items, cfg, stats))
    try:
        for key, content, y in frames:
            if cfg.net_size is not None:  # back to the output size; blends use the full-size photo
                (key, content), y = key, resize(y, key[1].shape[:2])
            y = _postprocess(cfg, y, content)
            if target == "image":
                written.append(str(save_image(y, out)))
            elif target == "dir":
                written.append(str(save_image(y, out / output_name(key, src.kind, src.root))))
            elif video is not None:
                video.append(y)
            else:
                collected.append(y)
        ok = True
    finally:
        if video is not None:
            video.close(ok)
    if target == "anim":
        durations = src.durations or []
        if len(durations) != len(collected):  # a frame directory or video: fps (default 10) per frame
            durations = [round(1000.0 / float(cfg.fps or src.fps or DEFAULT_FPS))] * len(collected)
        # A GIF that played once stays so; animations made from frames or a video loop.
        save_animation(collected, out, durations, src.loop if src.kind == "animation" else 0)
        written.append(str(out))
    elif target == "video":
        written.append(str(out))
    return {
        "output": str(out),
        "written": written,
        "input_kind": src.kind,
        "images": stats.images,
        "skipped": src.skipped,
        "existing": len(existing),
        "shapes": sorted(list(s) for s in stats.shapes),
        "compiles": len(stylizer.compile_seconds),
        "compile_seconds": float(sum(stylizer.compile_seconds.values())),
        "ms_per_image": stats.ms_per_image,
        "batch": cfg.batch,
        "backend": stylizer.backend,
        "model": stylizer.model,
        "device": _device(stylizer),
        "durations": list(src.durations) if target == "anim" and src.durations else None,
        "made_for": made_for(stylizer),
        "tiles": stats.tiles or None,
    }
