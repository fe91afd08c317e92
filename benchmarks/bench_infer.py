"""Side-by-side inference: nstjax vs pytorch/examples' TransformerNet in PyTorch, same weights.

    python benchmarks/bench_infer.py                                   # 256, 512, 1920x1080; batch 1 and 4
    python benchmarks/bench_infer.py --sizes 256x256 --batches 1 --repeats 3   # smoke

The torch child (`.venv-bench`) builds pytorch/examples' TransformerNet (benchmarks/torch_ref.py,
width 1, seeded, instance-norm affine randomized), saves its state dict as a `.pth`, and times
its forward pass (eval, no_grad; the faster of contiguous and channels_last) on a real photo
resized to each size. nstjax loads that very `.pth` (`nstjax.load_stylizer`, no torch), checks
that its outputs equal torch's, and times the same forward passes (compiled once per shape,
compile time excluded, host<->device copies included). Each side runs in its own process.
Also measured: nstjax's video path end to end (decode + network + H.264 encode, audio copied)
on a 480p clip. Results: a markdown table and benchmarks/results/infer_<machine>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_PY = ROOT / ".venv-bench" / "bin" / "python"


def median_call(fn, repeats: int):
    """(median seconds of `repeats` calls after one warmup call, the last result)."""
    y = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), y


def torch_child(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from torch_ref import TransformerNet

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    torch.save(net.state_dict(), args.weights)
    results = {}
    for spec in args.cases:
        size, batch = spec.split(":")
        x = np.load(Path(args.inputs) / f"{size}.npy")  # (H, W, 3) in [0, 1]
        xb = torch.from_numpy(np.repeat(x[None], int(batch), 0)).permute(0, 3, 1, 2).contiguous() * 255.0
        best = None
        for fmt in ("contiguous", "channels_last"):
            model = net.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
            inp = xb.to(memory_format=torch.channels_last) if fmt == "channels_last" else xb
            with torch.no_grad():
                seconds, y = median_call(lambda: model(inp), args.repeats)
            ms = 1e3 * seconds / int(batch)
            if best is None or ms < best[0]:
                best = (ms, fmt, (y[0].permute(1, 2, 0).numpy() / 255.0).astype(np.float32))
        np.save(Path(args.inputs) / f"torch_{size}_{batch}.npy", best[2])
        results[spec] = {"ms_per_image": best[0], "memory_format": best[1]}
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": results},
              open(args.out, "w"), indent=1)


def nstjax_child(args: argparse.Namespace) -> None:
    import jax

    import nstjax

    stylize = nstjax.load_stylizer(args.weights)
    results = {}
    for spec in args.cases:
        size, batch = spec.split(":")
        x = np.load(Path(args.inputs) / f"{size}.npy")
        xb = np.repeat(x[None], int(batch), 0)
        stylize.compile(xb.shape)
        seconds, y = median_call(lambda: stylize(xb), args.repeats)
        want = np.load(Path(args.inputs) / f"torch_{size}_{batch}.npy")
        results[spec] = {"ms_per_image": 1e3 * seconds / int(batch),
                         "compile_s": float(list(stylize.compile_seconds.values())[-1]),
                         "max_abs_diff_vs_torch": float(np.abs(y[0] - want).max())}
    json.dump({"jax": jax.__version__, "device": jax.devices()[0].device_kind, "cases": results},
              open(args.out, "w"), indent=1)


def video_fps(weights: Path, tmp: Path, photos: list[Path], frames: int) -> dict:
    """nstjax end to end on a 480p H.264 clip with audio: decode + network + encode."""
    import av
    from PIL import Image

    clip = tmp / "clip480.mp4"
    with av.open(str(clip), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 854, 480, "yuv420p"
        a = out.add_stream("aac", rate=44100, layout="mono")
        for i in range(frames):
            rgb = np.asarray(Image.open(photos[i // 12 % len(photos)]).convert("RGB").resize((854, 480)))
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            out.mux(v.encode(f))
        out.mux(v.encode())
        wave = (0.2 * np.sin(np.arange(int(44100 * frames / 24)) * 0.06)).astype(np.float32)
        for k in range(0, len(wave) - 1023, 1024):
            af = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, k
            out.mux(a.encode(af))
        out.mux(a.encode())
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nstjax.infer", f"model_path={weights}", f"input={clip}",
                        f"output={tmp / 'out480.mp4'}", "batch=4"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return {"frames": frames, "size": "854x480", "process_wall_s": wall, "fps_including_startup": frames / wall,
            "report": r.stdout.strip().splitlines()[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["torch", "nstjax"])
    p.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "1920x1080"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--video-frames", type=int, default=96)
    p.add_argument("--torch-python", default=str(TORCH_PY))
    for hidden in ("--inputs", "--weights", "--out"):  # parent -> child
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        (torch_child if args.child == "torch" else nstjax_child)(args)
        return
    from PIL import Image

    assets = Path(os.environ.get("NSTJAX_ASSETS", ROOT.parent / "shared"))
    photos = sorted((assets / "data" / "photos" / "val").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for size in args.sizes:
            w, h = map(int, size.split("x"))
            x = np.asarray(Image.open(photos[4]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC), np.float32)
            np.save(tmp / f"{size}.npy", x / 255.0)
        cases = [f"{s}:{b}" for s in args.sizes for b in args.batches]
        weights = tmp / "transformer_net.pth"
        common = ["--inputs", str(tmp), "--weights", str(weights), "--cases", *cases, "--repeats", str(args.repeats)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([args.torch_python, __file__, "--child", "torch", *common, "--out", str(tmp / "t.json")],
                       check=True, env=env)
        subprocess.run([sys.executable, __file__, "--child", "nstjax", *common, "--out", str(tmp / "j.json")],
                       check=True, env=env)
        t, j = json.loads((tmp / "t.json").read_text()), json.loads((tmp / "j.json").read_text())
        video = video_fps(weights, tmp, photos, args.video_frames) if args.video_frames else None
    print("| size | batch | nstjax ms/image | PyTorch ms/image | nstjax / PyTorch | max abs diff |")
    print("|---|---|---|---|---|---|")
    for c in cases:
        a, b = j["cases"][c], t["cases"][c]
        size, batch = c.split(":")
        print(f"| {size} | {batch} | {a['ms_per_image']:.1f} | {b['ms_per_image']:.1f} ({b['memory_format']}) | "
              f"{a['ms_per_image'] / b['ms_per_image']:.2f}x | {a['max_abs_diff_vs_torch']:.1e} |")
    if video:
        print(f"\nvideo 480p end to end: {video['report']}; {video['fps_including_startup']:.2f} frames/s "
              f"including process start-up ({video['frames']} frames)")
    out = HERE / "results" / "infer_cpu.json"
    out.write_text(json.dumps({"nstjax": j, "torch": t, "video": video}, indent=1) + "\n")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
