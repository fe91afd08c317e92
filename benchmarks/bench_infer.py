"""Side-by-side inference: nstjax vs pytorch/examples' TransformerNet in PyTorch, same weights.

    python benchmarks/bench_infer.py                                   # 256, 512, 1920x1080; batch 1 and 4
    python benchmarks/bench_infer.py --sizes 256x256 --batches 1 --repeats 3 --rounds 1 --video-frames 0  # smoke

The torch child (`.venv-bench`) builds pytorch/examples' TransformerNet (benchmarks/torch_ref.py,
width 1, seeded, instance-norm affine randomized), saves its state dict as a `.pth`, and times
its forward pass (eval, no_grad; the faster of contiguous and channels_last) on a real photo
resized to each size. nstjax loads that very `.pth` (`nstjax.load_stylizer`, no torch), checks
that its outputs equal torch's, and times the same forward passes (compiled once per shape,
compile time excluded, host<->device copies included). Each side runs in its own process;
`--rounds` alternates the two processes, and the table gives each side's median round.
Both run with the glibc malloc settings of `nstjax.infer` (conf/runtime/serve.yaml).

Video, 480p H.264 with audio, both sides through the same PyAV pipeline
(`nstjax.serving.video.stylize_video`: decode, network and encode overlapped, audio copied),
batch 4: frames/s of the pipeline after one warm-up batch, and of the whole process from its
start (imports, loading, compiling). nstjax's CLI (`python -m nstjax.infer`) is also timed.
Results: a markdown table and benchmarks/results/infer_<machine>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_PY = ROOT / ".venv-bench" / "bin" / "python"
VIDEO_BATCH = 4


def median_call(fn, repeats: int):
    """(median seconds of `repeats` calls after one warmup call, the last result)."""
    y = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), y


def _torch_net(args: argparse.Namespace):
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
    if not Path(args.weights).exists():
        torch.save(net.state_dict(), args.weights)
    return net


def torch_child(args: argparse.Namespace) -> None:
    import torch

    dev = torch.device(args.torch_device)
    if dev.type == "cuda":  # as nstjax's XLA: cuDNN autotuned, TF32 for float32 convolutions
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    net = _torch_net(args).to(dev)
    results = {}
    for spec in args.cases:
        size, batch, dtype = spec.split(":")
        tdt = getattr(torch, dtype)
        x = np.load(Path(args.inputs) / f"{size}.npy")  # (H, W, 3) in [0, 1]
        host = np.ascontiguousarray(np.repeat(x[None], int(batch), 0).transpose(0, 3, 1, 2))
        best = None
        for fmt in ("contiguous", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            model = copy.deepcopy(net).to(dtype=tdt, memory_format=mf)  # net itself stays float32

            def host_to_host():  # numpy in, numpy out, as nstjax's Stylizer is called
                t = torch.from_numpy(host).to(dev).to(dtype=tdt, memory_format=mf) * 255.0
                return (model(t).float() / 255.0).cpu().numpy()

            xd = (torch.from_numpy(host).to(dev) * 255.0).to(dtype=tdt, memory_format=mf)

            def on_device():
                y = model(xd)
                sync()
                return y

            with torch.no_grad():
                seconds, y = median_call(host_to_host, args.repeats)
                dev_seconds = median_call(on_device, args.repeats)[0] if dev.type == "cuda" else seconds
            ms = 1e3 * seconds / int(batch)
            if best is None or ms < best[0]:
                best = (ms, fmt, y[0].transpose(1, 2, 0).astype(np.float32), 1e3 * dev_seconds / int(batch))
        np.save(Path(args.inputs) / f"torch_{size}_{batch}_{dtype}.npy", best[2])
        results[spec] = {"ms_per_image": best[0], "ms_per_image_on_device": best[3], "memory_format": best[1]}
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev),
               "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "cases": results},
              open(args.out, "w"), indent=1)


def _configure_nstjax_runtime() -> None:
    """The runtime settings `nstjax.infer` runs with (conf/runtime/serve.yaml), minus the cache."""
    from nstjax import config, runtime

    runtime.configure(config.load(config.RuntimeConfig, config.compose("infer", ["runtime.compilation_cache=null"]).runtime))


def nstjax_child(args: argparse.Namespace) -> None:
    _configure_nstjax_runtime()
    import jax

    import nstjax

    stylizers = {}
    results = {}
    for spec in args.cases:
        size, batch, dtype = spec.split(":")
        if dtype not in stylizers:
            stylizers[dtype] = nstjax.load_stylizer(args.weights, dtype=dtype)
        stylize = stylizers[dtype]
        x = np.load(Path(args.inputs) / f"{size}.npy")
        xb = np.repeat(x[None], int(batch), 0)
        stylize.compile(xb.shape)
        seconds, y = median_call(lambda: stylize(xb), args.repeats)
        on_device = seconds
        if jax.default_backend() != "cpu":
            xd = jax.device_put(xb)
            on_device = median_call(lambda: stylize.on_device(xd).block_until_ready(), args.repeats)[0]
        inputs = Path(args.inputs)
        results[spec] = {"ms_per_image": 1e3 * seconds / int(batch), "ms_per_image_on_device": 1e3 * on_device / int(batch),
                         "compile_s": float(list(stylize.compile_seconds.values())[-1]),
                         "max_abs_diff_vs_torch": float(np.abs(y[0] - np.load(inputs / f"torch_{size}_{batch}_{dtype}.npy")).max()),
                         "max_abs_diff_vs_torch_float32": float(np.abs(y[0] - np.load(inputs / f"torch_{size}_{batch}_float32.npy")).max())
                         if (inputs / f"torch_{size}_{batch}_float32.npy").exists() else None}
    from nstjax.ops.cpu_kernels import forward_options, machine_key

    cpu = {"machine": machine_key(), "options": forward_options()} if jax.default_backend() == "cpu" else None
    json.dump({"jax": jax.__version__, "device": jax.devices()[0].device_kind, "nproc": os.environ.get("NPROC"),
               "cpu_kernels": cpu, "cases": results}, open(args.out, "w"), indent=1)


def _torch_video_network(args: argparse.Namespace):
    """(B, H, W, 3) float32 in [0, 1] -> the same, by torch; sides padded to a multiple of 4 as
    nstjax does (reflect, the extra split top // 2), so both networks see the same pixels."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(args.torch_device)
    tdt = getattr(torch, args.video_dtype)
    net = _torch_net(args).to(device=dev, dtype=tdt)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def run(x: np.ndarray) -> np.ndarray:
        b, h, w, _ = x.shape
        ph, pw = (-h) % 4, (-w) % 4
        t = torch.from_numpy(x).to(dev).permute(0, 3, 1, 2) * 255.0
        if ph or pw:
            t = F.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
        with torch.no_grad():
            y = net(t.to(tdt).contiguous())[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        return (y.float() / 255.0).permute(0, 2, 3, 1).cpu().numpy()

    return run


def _nstjax_video_network(args: argparse.Namespace):
    _configure_nstjax_runtime()
    import nstjax

    return nstjax.load_stylizer(args.weights, dtype=args.video_dtype)


def video_child(args: argparse.Namespace) -> None:
    """One side's network through nstjax's PyAV pipeline: warm up on one batch, then time it."""
    sys.path.insert(0, str(ROOT))
    from nstjax.serving.video import probe, read_frames, stylize_video

    t_start = time.perf_counter()
    network = (_torch_video_network if args.child == "torch-video" else _nstjax_video_network)(args)
    clip = Path(args.inputs) / "clip480.mp4"
    info = probe(clip)
    first = np.stack([f for f, _ in zip(read_frames(clip), range(VIDEO_BATCH))]).astype(np.float32) / 255.0
    t0 = time.perf_counter()
    network(first)  # nstjax: the compile; torch: its first call
    warmup = time.perf_counter() - t0
    net_seconds = [0.0]

    def run(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        y = network(x)
        net_seconds[0] += time.perf_counter() - t
        return y

    t0 = time.perf_counter()
    r = stylize_video(clip, Path(args.out).with_suffix(".mp4"), run, batch=VIDEO_BATCH)
    pipeline = time.perf_counter() - t0
    json.dump({"frames": r["frames"], "size": f"{info.width}x{info.height}", "batch": VIDEO_BATCH,
               "pipeline_s": pipeline, "pipeline_fps": r["frames"] / pipeline,
               "network_ms_per_frame": 1e3 * net_seconds[0] / r["frames"], "warmup_s": warmup,
               "in_process_s": time.perf_counter() - t_start, "audio_packets": r["audio_packets"]},
              open(args.out, "w"), indent=1)


def make_clip(clip: Path, photos: list[Path], frames: int) -> None:
    """A 480p H.264 clip with an AAC audio track, 12 frames per photo."""
    import av
    from PIL import Image

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


def nstjax_cli_video(weights: Path, tmp: Path, frames: int, dtype: str) -> dict:
    """nstjax's CLI end to end on the clip: process start-up, compile, decode + network + encode."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nstjax.infer", f"model_path={weights}", f"input={tmp / 'clip480.mp4'}",
                        f"output={tmp / 'out480.mp4'}", f"batch={VIDEO_BATCH}", "overwrite=true", f"dtype={dtype}"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return {"frames": frames, "process_wall_s": wall, "fps_including_startup": frames / wall,
            "report": r.stdout.strip().splitlines()[-1]}


def _run_child(python: str, kind: str, common: list[str], out: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    subprocess.run([python, __file__, "--child", kind, *common, "--out", str(out)], check=True, env=env)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _median_round(rounds: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["torch", "nstjax", "torch-video", "nstjax-video"])
    p.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "1920x1080"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16", "float16"),
                   help="compute dtypes, both sides (torch: the model and input cast; nstjax: load_stylizer(dtype=))")
    p.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda on a GPU machine (nstjax runs on JAX's default backend)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case in each process (median)")
    p.add_argument("--rounds", type=int, default=3, help="torch and nstjax processes alternated this many times")
    p.add_argument("--video-frames", type=int, default=96, help="frames of the 480p clip (0: no video)")
    p.add_argument("--torch-python", default=str(TORCH_PY))
    p.add_argument("--out", help="result JSON (default: benchmarks/results/infer_cpu.json)")
    for hidden in ("--inputs", "--weights"):  # parent -> child
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--video-dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))  # nstjax from this checkout, installed or not
    if args.child:
        {"torch": torch_child, "nstjax": nstjax_child}.get(args.child, video_child)(args)
        return
    from PIL import Image

    from nstjax import config
    from nstjax.runtime import HOST_MALLOC_ENV

    assets = Path(os.environ.get("NSTJAX_ASSETS", ROOT.parent / "shared"))
    photos = sorted((assets / "data" / "photos" / "val").glob("*.jpg"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    if config.compose("infer", []).runtime.host_malloc_cache:
        env.update(HOST_MALLOC_ENV)  # the torch side gets the malloc settings nstjax.infer uses
    result_path = Path(args.out) if args.out else HERE / "results" / "infer_cpu.json"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for size in args.sizes:
            w, h = map(int, size.split("x"))
            x = np.asarray(Image.open(photos[4]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC), np.float32)
            np.save(tmp / f"{size}.npy", x / 255.0)
        dtypes = sorted(args.dtypes, key=lambda d: d != "float32")  # float32 first: the reference
        cases = [f"{s}:{b}:{d}" for d in dtypes for s in args.sizes for b in args.batches]
        weights = tmp / "transformer_net.pth"
        common = ["--inputs", str(tmp), "--weights", str(weights), "--cases", *cases, "--repeats", str(args.repeats),
                  "--torch-device", args.torch_device, "--video-dtype", dtypes[-1]]
        torch_rounds, nstjax_rounds = [], []
        for i in range(args.rounds):
            torch_rounds.append(_run_child(args.torch_python, "torch", common, tmp / f"t{i}.json", env))
            nstjax_rounds.append(_run_child(sys.executable, "nstjax", common, tmp / f"j{i}.json", env))
        video = None
        if args.video_frames:
            make_clip(tmp / "clip480.mp4", photos, args.video_frames)
            video = {"torch": [], "nstjax": [], "nstjax_cli": []}
            for i in range(args.rounds):
                video["torch"].append(_run_child(args.torch_python, "torch-video", common, tmp / f"tv{i}.json", env))
                video["nstjax"].append(_run_child(sys.executable, "nstjax-video", common, tmp / f"jv{i}.json", env))
            video["nstjax_cli"].append(nstjax_cli_video(weights, tmp, args.video_frames, dtypes[-1]))

    def case_rounds(rounds: list[dict], c: str) -> list[dict]:
        return [r["cases"][c] for r in rounds]

    gpu = args.torch_device == "cuda"
    print("| size | batch | dtype | nstjax ms/image (images/s) | PyTorch ms/image (images/s) | nstjax / PyTorch (rounds) |"
          + (" on device: nstjax / PyTorch ms (images/s) |" if gpu else "") + " max abs diff vs torch, same dtype / float32 |")
    print("|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|")
    summary = {}
    for c in cases:
        a, b = case_rounds(nstjax_rounds, c), case_rounds(torch_rounds, c)
        ja, tb = _median_round(a, "ms_per_image"), _median_round(b, "ms_per_image")
        jd, td = _median_round(a, "ms_per_image_on_device"), _median_round(b, "ms_per_image_on_device")
        ratios = [x["ms_per_image"] / y["ms_per_image"] for x, y in zip(a, b)]
        fmts = sorted({y["memory_format"] for y in b})
        size, batch, dtype = c.split(":")
        diff = max(x["max_abs_diff_vs_torch"] for x in a)
        diff32 = max((x["max_abs_diff_vs_torch_float32"] or 0.0) for x in a)
        summary[c] = {"nstjax_ms": ja, "torch_ms": tb, "ratio": ja / tb, "round_ratios": ratios,
                      "nstjax_ms_on_device": jd, "torch_ms_on_device": td,
                      "max_abs_diff_vs_torch": diff, "max_abs_diff_vs_torch_float32": diff32}
        print(f"| {size} | {batch} | {dtype} | {ja:.2f} ({1e3 / ja:.0f}) | {tb:.2f} ({1e3 / tb:.0f}; {', '.join(fmts)}) | "
              f"{ja / tb:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
              + (f" {jd:.2f} ({1e3 / jd:.0f}) / {td:.2f} ({1e3 / td:.0f}) |" if gpu else "")
              + f" {diff:.1e} / {diff32:.1e} |")
    if video:
        for side in ("nstjax", "torch"):
            v = video[side]
            fps = _median_round(v, "pipeline_fps")
            proc = statistics.median(r["frames"] / r["process_wall_s"] for r in v)
            net = _median_round(v, "network_ms_per_frame")
            summary[f"video_{side}"] = {"pipeline_fps": fps, "process_fps": proc, "network_ms_per_frame": net}
            print(f"\nvideo 480p ({v[0]['size']}, {v[0]['frames']} frames, batch {VIDEO_BATCH}, {dtypes[-1]}), {side}: "
                  f"{fps:.2f} frames/s through decode + network + encode ({net:.0f} ms/frame in the network), "
                  f"{proc:.2f} frames/s for the whole process")
        cli = video["nstjax_cli"][0]
        print(f"nstjax CLI: {cli['report']}; {cli['fps_including_startup']:.2f} frames/s including start-up")
    result_path.write_text(json.dumps({"rounds": args.rounds, "repeats": args.repeats, "summary": summary,
                                       "nstjax": nstjax_rounds, "torch": torch_rounds, "video": video},
                                      indent=1) + "\n")
    print(f"raw results: {result_path}")


if __name__ == "__main__":
    main()
