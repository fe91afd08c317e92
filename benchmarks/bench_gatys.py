"""Side-by-side Gatys benchmark: nstjax vs a PyTorch implementation of the same algorithm.

Both sides get byte-identical inputs (.npy written here), the same VGG-19 weights, layers,
loss weights, optimizer, step count and image sizes. Each measurement runs in its own child
process so peak RSS (ru_maxrss) belongs to that run alone. Time per step excludes compilation
(reported separately) and warmup. Per round each side keeps the faster of two processes
(PyTorch: contiguous and channels_last; nstjax: two identical runs, `--jax-runs`), and
`--rounds` alternates the sides and reports medians: on a shared VM single runs drift by 10-20%.
Both sides run with the same glibc malloc settings (`--malloc`): `retain` is what
`nstjax.stylize` uses (conf runtime.host_malloc_cache), given to the torch process as the
equivalent environment variables (PyTorch measured the same either way at 256 px and 4-14%
faster with them at 512 px; README).

    python benchmarks/bench_gatys.py --sizes 256 512 --steps 20 --rounds 3   # CPU: medians of 3 alternating rounds
    python benchmarks/bench_gatys.py --sizes 1024 --steps 5 --skip-torch   # memory at 1024 px
    # GPU box (torch with CUDA in python3): both sides on the GPU
    python benchmarks/bench_gatys.py --sizes 512 1024 --steps 100 --torch-python python3 --torch-device cuda
Results: benchmarks/results/gatys_<optimizer>.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_PY = ROOT / ".venv-bench" / "bin" / "python"
WEIGHTS = {"content": 5.0, "style": 100.0, "tv": 1e-3}


def jax_child(args: argparse.Namespace) -> None:
    from nstjax.runtime import retain_host_memory, set_gpu_triton_gemm

    set_gpu_triton_gemm(False)  # as `nstjax.stylize` does (conf/stylize.yaml runtime); before JAX starts
    if args.malloc == "retain":
        retain_host_memory()
    import jax
    import numpy as np

    from nstjax.gatys import GatysSettings, run_gatys
    from nstjax.perceptual import PerceptualLoss
    from nstjax.vgg import load_vgg19

    content, style = np.load(args.content), np.load(args.style)
    vgg = load_vgg19(conv_impl=args.conv_impl)
    loss = PerceptualLoss(weights=WEIGHTS)  # neural-style's layers
    s = GatysSettings(loss=loss, optimizer=args.optimizer, lr=args.lr, steps=args.warmup, log_every=args.steps)
    t0 = time.perf_counter()
    warm = run_gatys(vgg, content, [style], s)  # compiles; warms caches and thread pools
    warm_seconds = time.perf_counter() - t0
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    r = run_gatys(vgg, content, [style], GatysSettings(loss=loss, optimizer=args.optimizer, lr=args.lr,
                                                       steps=args.steps, log_every=args.steps))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    mem = jax.devices()[0].memory_stats() or {}
    out = {"framework": "nstjax", "jax": jax.__version__, "conv_impl": args.conv_impl, "device": jax.devices()[0].device_kind,
           "peak_device_mb": mem["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in mem else None,
           "seconds": r.run_seconds, "steps": args.steps,
           "ms_per_step": 1000 * r.run_seconds / args.steps, "compile_s": warm.compile_seconds,
           "warmup_s": warm_seconds, "loss_init": r.initial, "loss_final": r.final,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "page_faults_per_step": faults / args.steps}  # minor faults in the timed run (see --malloc)
    Path(args.out).write_text(json.dumps(out, indent=1))


def run(cmd: list[str], env=None) -> None:
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate nstjax and torch runs this many times; report each side's median")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--jax-runs", type=int, default=None,
                    help="nstjax processes per round, the fastest kept (default: as many as --torch-variants, "
                         "since torch_ref.py keeps the fastest of one process per variant)")
    ap.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "flipped", "winograd"],
                    help="nstjax VGG convolutions (vgg.conv_impl)")
    ap.add_argument("--malloc", default="retain", choices=["retain", "default"],
                    help="glibc malloc settings of both sides (retain: nstjax.runtime.retain_host_memory)")
    ap.add_argument("--torch-variants", default="contiguous,channels_last")
    ap.add_argument("--torch-python", default=str(TORCH_PY), help="python with torch (default: .venv-bench)")
    ap.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--child", choices=["jax"], help=argparse.SUPPRESS)
    ap.add_argument("--content"), ap.add_argument("--style"), ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return jax_child(args)
    if args.jax_runs is None:
        args.jax_runs = 1 if args.skip_torch else len(args.torch_variants.split(","))
    if args.rounds < 1 or args.jax_runs < 1 or args.steps < 1:
        ap.error("--rounds, --jax-runs and --steps must be >= 1")

    import numpy as np

    from nstjax.image import load_resized
    from nstjax.runtime import HOST_MALLOC_ENV

    assets = Path(os.environ.get("NSTJAX_ASSETS", ROOT.parent / "shared"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            c, s = Path(tmp, f"c{size}.npy"), Path(tmp, f"s{size}.npy")
            np.save(c, load_resized(assets / "data/content/chicago.jpg", size))
            np.save(s, load_resized(assets / "data/styles/mosaic.jpg", size))
            row = {"size": size, "rounds": []}
            # Rounds alternate the two sides, so drift on a shared machine hits both alike.
            for rnd in range(args.rounds):
                one = {}
                jax_runs = []
                for rep in range(args.jax_runs):
                    jo = Path(tmp, f"jax{size}_{rnd}_{rep}.json")
                    run([sys.executable, __file__, "--child", "jax", "--content", str(c), "--style", str(s),
                         "--out", str(jo), "--steps", str(args.steps), "--warmup", str(args.warmup),
                         "--optimizer", args.optimizer, "--lr", str(args.lr), "--conv-impl", args.conv_impl,
                         "--malloc", args.malloc])
                    jax_runs.append(json.loads(jo.read_text()))
                one["nstjax"] = {**min(jax_runs, key=lambda r: r["ms_per_step"]), "runs": jax_runs}
                if not args.skip_torch:
                    to = Path(tmp, f"torch{size}_{rnd}.json")
                    run([args.torch_python, "benchmarks/torch_ref.py", "gatys", "--device", args.torch_device,
                         "--content", str(c), "--style", str(s),
                         "--steps", str(args.steps), "--warmup", str(args.warmup), "--optimizer", args.optimizer,
                         "--lr", str(args.lr), "--content-weight", str(WEIGHTS["content"]),
                         "--style-weight", str(WEIGHTS["style"]), "--tv-weight", str(WEIGHTS["tv"]),
                         "--memory-format", args.torch_variants, "--out", str(to)],
                        env={**os.environ, **HOST_MALLOC_ENV} if args.malloc == "retain" else None)
                    one["torch"] = json.loads(to.read_text())
                row["rounds"].append(one)
                print(json.dumps({"size": size, "round": rnd, **{k: {kk: v[kk] for kk in ("ms_per_step", "peak_rss_mb")}
                                                                   for k, v in one.items()}}), flush=True)
            for side in ("nstjax", "torch"):
                runs = [one[side] for one in row["rounds"] if side in one]
                if runs:  # the round with the median time stands for the side (its losses, memory, ...)
                    row[side] = sorted(runs, key=lambda r: r["ms_per_step"])[(len(runs) - 1) // 2]
            results.append(row)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "_".join(map(str, args.sizes))
    (out_dir / f"gatys_{args.optimizer}_{tag}.json").write_text(json.dumps(results, indent=1))
    dev = results[0]["nstjax"]["device"] if results else "?"
    print(f"\nnstjax on {dev}, torch on {args.torch_device}; {args.steps} timed steps, "
          f"median of {args.rounds} alternating round(s)")
    print("\n| size | optimizer | nstjax ms/step | torch ms/step | ratio | nstjax final loss | torch final loss "
          "| nstjax peak RSS MB | torch peak RSS MB | nstjax compile s | nstjax / torch peak device MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        j, t = r["nstjax"], r.get("torch")
        tms = f"{t['ms_per_step']:.0f}" if t else "-"
        ratio = f"{j['ms_per_step'] / t['ms_per_step']:.2f}x" if t else "-"
        per_round = [o["nstjax"]["ms_per_step"] / o["torch"]["ms_per_step"] for o in r["rounds"] if "torch" in o]
        if len(per_round) > 1:
            ratio += f" ({min(per_round):.2f}-{max(per_round):.2f})"
        tl = f"{t['loss_final']['total']:.4g}" if t else "-"
        trss = f"{t['peak_rss_mb']:.0f}" if t else "-"
        print(f"| {r['size']} | {args.optimizer} | {j['ms_per_step']:.0f} | {tms} | {ratio} | "
              f"{j['loss_final']['total']:.4g} | {tl} | {j['peak_rss_mb']:.0f} | {trss} | {j['compile_s']:.1f} "
              f"| {j.get('peak_device_mb') or 0:.0f} / {(t or {}).get('peak_device_mb') or 0:.0f} |")


if __name__ == "__main__":
    main()
