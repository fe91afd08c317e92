"""Side-by-side training throughput: nstjax (JAX/Flax) vs. the PyTorch reference.

    .venv/bin/python benchmarks/bench_train.py                      # 256 px, batch 4, CPU
    .venv/bin/python benchmarks/bench_train.py --size 64 --batch 2 --steps 2 --warmup 1   # smoke
    .venv/bin/python benchmarks/bench_train.py --devices 2           # data-parallel path, 2 fake CPUs
    .venv/bin/python benchmarks/bench_train.py --skip-torch --dtype float32,bfloat16   # GPU box
    python benchmarks/bench_train.py --dtype float32,bfloat16 --torch-python python3 --torch-device cuda

What is timed
-------------
One training step of the Johnson et al. feed-forward network: TransformerNet (pytorch/examples
layout, width 1.0, 5 residual blocks, 1,679,235 parameters, asserted on both sides) -> VGG-19
perceptual loss (content relu2_2, style relu1_1..relu5_1, TV) -> backward -> Adam(lr 1e-3).
Loss weights are the project defaults (conf/train.yaml: content 1, style 30, TV 1e-5); they do
not change the amount of work.

Fairness choices
----------------
* Same inputs, byte for byte: the driver writes ``style.npy`` (mosaic.jpg, long side 256 via
  ``nstjax.image.load_resized``) and ``photos.npy`` (the first 16 photos of
  ``$NSTJAX_ASSETS/data/photos/train``, short-side resize + centre crop to ``--size`` via
  ``nstjax.training.data.load_val_images``) once; both sides load them (their SHA-256 go in the JSON).
  Both cut the photos into ``16 // batch`` batches and cycle through them in order; warmup
  and timed steps each start at batch 0. The data pipeline is not part of the measurement:
  torch keeps the batches as tensors, JAX puts them on the device before timing.
* Same VGG-19 weights file (``--weights`` is passed to torch explicitly) and the same loss
  graph: nstjax's Trainer encodes y through relu5_1 and x (the content target) only up to
  relu2_2 under stop_gradient, so torch runs with ``--vgg-call separate``, which does the same.
* Each framework runs in its own child process, so peak RSS (``ru_maxrss``) is per side and
  includes everything that side loaded (framework, VGG weights, photos, compiled code).
* Warmup: ``--warmup`` untimed steps (the first one includes JAX's tracing + XLA compilation;
  torch.compile's with ``--torch-compile``), then both sides reset the network and the
  optimizer to their initial state, so the first timed step sees un-trained weights.
  ``loss_first`` is that step's loss; it differs between frameworks because their
  initialisations differ (nstjax starts its output layer near 0.5 grey, torch uses torch's
  defaults), not because the losses do.
* Timing: JAX dispatches the N steps asynchronously with no host sync in between (loss
  values stay on the device until the end) and blocks once after the last step, which is
  how ``nstjax.train`` runs between log steps. ``ms_per_step = wall / N`` on both sides;
  torch (synchronous on CPU) also reports per-step median/min. JAX also records compile
  events during the timed loop (should be 0: a recompile would be a bug, and is flagged).
* Torch gets its best configuration: eager with both contiguous (NCHW) and channels_last
  memory formats (and torch.compile with ``--torch-compile``: cold compile costs minutes),
  each variant in its own process; the fastest is compared. Fused Adam where available.
  XLA chooses its own layouts, so nstjax has no variants to sweep.
* Threads: both sides use every core they may run on (XLA's default; torch_ref's default
  ``--threads``). The machine should be otherwise idle: the load average before and after
  is recorded in the JSON so a noisy run can be recognised.

``--devices N`` (N > 1) runs the JAX side on N simulated CPU devices
(``--xla_force_host_platform_device_count``, plus NPROC=8 against collective deadlocks on
few cores); they share the same cores, so this checks the sharded (all-reduce) path rather
than measuring a speedup. On a GPU box the JAX side runs on the GPU(s) (the torch build is
CPU-only: use ``--skip-torch``, or read the ratio as GPU vs. CPU); the report then adds the
extrapolated wall time of a full 40k-step run and the device's peak memory. ``--dtype``
takes a comma list (float32, bfloat16); bfloat16 sets the compute dtype of both
TransformerNet and VGG-19 (parameters, norms statistics and losses stay float32).

Output: a markdown table on stdout, and every raw JSON (both sides, all torch variants) in
``benchmarks/results/train_<size>_b<batch>[_<backend>][_d<N>].json`` (``--out`` overrides).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
TORCH_REF = HERE / "torch_ref.py"
RESULTS_DIR = HERE / "results"

STYLE_IMAGE = "data/styles/mosaic.jpg"
STYLE_SIZE = 256  # long side of the style image (conf/train.yaml loss.style_size)
PHOTOS_DIR = "data/photos/train"
N_PHOTOS = 16
WEIGHTS = "weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

CONTENT_LAYERS = ("relu2_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 30.0, 1e-5  # conf/train.yaml
LR = 1e-3
N_PARAMS = 1_679_235
FULL_RUN_STEPS = 40_000  # conf/train.yaml train.steps, for the GPU extrapolation
DTYPES = ("float32", "bfloat16")

# Stages of a jit compilation, as reported through jax.monitoring.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


# ----------------------------------------------------------------------------- shared helpers


def make_batches(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """Consecutive batches of the photo pool, remainder dropped (as torch_ref.run_train)."""
    if pool.shape[0] < batch:
        pool = np.concatenate([pool] * (-(-batch // pool.shape[0])), axis=0)
    return [pool[i * batch:(i + 1) * batch] for i in range(pool.shape[0] // batch)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- JAX side (child)


def jax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the Trainer exactly as nstjax.train does, warm up, reset, time ``steps`` steps."""
    t_start = time.perf_counter()
    import jax
    from flax import nnx

    from nstjax.networks import build_network, count_params, parse_dtype
    from nstjax.perceptual import Encoder, PerceptualLoss
    from nstjax.training.trainer import Trainer, check_batch, make_mesh, make_optimizer
    from nstjax.vgg import load_vgg19

    compile_log: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compile_log.append((event, secs)) if event in _COMPILE_EVENTS else None)

    batch, steps, warmup = spec["batch"], spec["steps"], spec["warmup"]
    mesh = make_mesh()
    n_dev = mesh.devices.size
    check_batch(batch, n_dev)
    dtype = parse_dtype(spec["dtype"])
    loss = PerceptualLoss(content_layers={k: 1.0 for k in CONTENT_LAYERS},
                          style_layers={k: 1.0 for k in STYLE_LAYERS},
                          weights={"content": CONTENT_WEIGHT, "style": STYLE_WEIGHT, "tv": TV_WEIGHT})
    vgg = load_vgg19(spec["weights"], dtype=dtype, conv_impl=spec.get("conv_impl", "auto"))
    model = build_network({"name": "johnson", "width": 1.0, "num_residual": 5, "dtype": spec["dtype"]},
                          rngs=nnx.Rngs(spec["seed"]))
    n_params = count_params(model)
    assert n_params == N_PARAMS, n_params
    tx, _ = make_optimizer(LR, warmup + steps)
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [np.load(spec["style"])])
    trainer = Trainer(model, encoder, loss, tx, grams, mesh)
    del model, vgg
    batches = [trainer.put_batch(b) for b in make_batches(np.load(spec["photos"]), batch)]
    init_state = jax.device_get({"params": trainer.params, "opt_state": trainer.opt_state})
    jax.block_until_ready((batches, trainer.consts))
    setup_s = time.perf_counter() - t_start

    # Warmup; the first step traces and compiles the train step.
    compile_log.clear()
    t0 = time.perf_counter()
    warmup_first = jax.block_until_ready(trainer.step(batches[0]))
    first_step_s = time.perf_counter() - t0
    compile_s = sum(s for _, s in compile_log)
    for i in range(1, warmup):
        trainer.step(batches[i % len(batches)])
    jax.block_until_ready(trainer.params)
    warmup_s = time.perf_counter() - t0

    # Reset to the initial weights and optimizer state (same sharding: no recompile).
    trainer.load_state(init_state)
    jax.block_until_ready((trainer.params, trainer.opt_state))

    compile_log.clear()
    totals, first = [], None
    t0 = time.perf_counter()
    for i in range(steps):
        terms = trainer.step(batches[i % len(batches)])  # no host sync inside the loop
        totals.append(terms["total"])
        if i == 0:
            first = terms
    jax.block_until_ready((trainer.params, trainer.opt_state, terms))
    total_s = time.perf_counter() - t0
    timed_compiles = sum(1 for e, _ in compile_log if e == _COMPILE_EVENTS[-1])

    def losses(t):
        t = jax.device_get(t)
        return {k: float(t[k]) for k in ("content", "style", "tv", "total")}

    dev = jax.local_devices()[0]
    mem = dev.memory_stats() or {}
    ms = 1000.0 * total_s / steps
    return {
        "framework": "nstjax",
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "devices": n_dev,
        "dtype": spec["dtype"],
        "size": spec["size"],
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "n_params": n_params,
        "setup_s": setup_s,
        "first_step_s": first_step_s,
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "timed_compiles": timed_compiles,
        "total_s": total_s,
        "ms_per_step": ms,
        "images_per_sec": batch * steps / total_s,
        "peak_rss_mb": peak_rss_mb(),
        "device_peak_mem_mb": mem["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in mem else None,
        "full_run_hours": FULL_RUN_STEPS * ms / 3.6e6,
        "loss_first": losses(first),
        "warmup_loss_first": losses(warmup_first),  # equals loss_first iff the reset worked
        "loss_last": losses(terms),
        "loss_history": [float(v) for v in jax.device_get(totals)],
    }


def run_jax(args, dtype: str, inputs: dict[str, str], tmp: Path) -> dict[str, Any]:
    spec = {"dtype": dtype, "size": args.size, "batch": args.batch, "steps": args.steps,
            "warmup": args.warmup, "seed": args.seed, "conv_impl": args.conv_impl, **inputs, "out": str(tmp / f"jax_{dtype}.json")}
    spec_path = tmp / f"jax_{dtype}_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    if args.devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        env["NPROC"] = "8"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    log(f"nstjax ({dtype}, devices={args.devices}): {args.warmup} warmup + {args.steps} timed steps")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker-spec", str(spec_path)],
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"framework": "nstjax", "dtype": dtype, "error": f"exit {proc.returncode}"}
    return json.loads(Path(spec["out"]).read_text())


# ------------------------------------------------------------------------------- torch side


def run_torch(args, inputs: dict[str, str], tmp: Path) -> dict[str, Any]:
    torch_python = args.torch_python or str(TORCH_PYTHON)
    if args.torch_python is None and not TORCH_PYTHON.exists():
        return {"framework": "pytorch", "error": f"{TORCH_PYTHON} missing: run bash benchmarks/setup_torch_env.sh"}
    out = tmp / "torch.json"
    cmd = [torch_python, str(TORCH_REF), "train", "--device", args.torch_device, "--amp", args.torch_amp,
           "--style", inputs["style"], "--photos", inputs["photos"], "--weights", inputs["weights"],
           "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--lr", str(LR), "--content-weight", str(CONTENT_WEIGHT),
           "--style-weight", str(STYLE_WEIGHT), "--tv-weight", str(TV_WEIGHT),
           "--content-layers", ",".join(CONTENT_LAYERS), "--style-layers", ",".join(STYLE_LAYERS),
           "--vgg-call", "separate",
           "--backend", "eager,compile" if args.torch_compile else "eager",
           "--memory-format", "contiguous,channels_last",
           "--out", str(out)]
    log(f"pytorch: {args.warmup} warmup + {args.steps} timed steps per variant")
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        return {"framework": "pytorch", "error": f"exit {proc.returncode}"}
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------- driver


def log(msg: str) -> None:
    print(f"[bench_train] {msg}", file=sys.stderr, flush=True)


def prepare_inputs(args, tmp: Path) -> dict[str, str]:
    """Write style.npy and photos.npy (read by both sides); return their paths and the weights'."""
    from nstjax.training.data import load_val_images
    from nstjax.image import load_resized

    assets = Path(os.environ.get("NSTJAX_ASSETS") or ROOT.parent / "shared")
    weights = assets / WEIGHTS
    for p in (assets / STYLE_IMAGE, assets / PHOTOS_DIR, weights):
        if not p.exists():
            raise SystemExit(f"{p} not found: set NSTJAX_ASSETS to the shared assets directory")
    style = tmp / "style.npy"
    photos = tmp / "photos.npy"
    np.save(style, load_resized(assets / STYLE_IMAGE, STYLE_SIZE, what="style image").astype(np.float32))
    np.save(photos, load_val_images(assets / PHOTOS_DIR, args.size, limit=N_PHOTOS))
    return {"style": str(style), "photos": str(photos), "weights": str(weights)}


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(jax_runs: list[dict], torch_run: dict | None) -> str:
    torch_ms = torch_run.get("ms_per_step") if torch_run and "error" not in torch_run else None
    rows = ["| framework | variant | device | ms/step | images/s | compile/warmup s | peak RSS MB "
            "| loss first | loss last | nstjax/torch ms |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in jax_runs:
        if "error" in r:
            rows.append(f"| nstjax | {r['dtype']} | - | failed: {r['error']} | | | | | | |")
            continue
        ratio = fmt(r["ms_per_step"] / torch_ms, ".2f") if torch_ms else "-"
        rows.append(
            f"| nstjax {r['jax_version']} | {r['dtype']}, {r['devices']} dev | {r['backend']} ({r['device_kind']}) "
            f"| {fmt(r['ms_per_step'])} | {fmt(r['images_per_sec'], '.2f')} | {fmt(r['first_step_s'])} "
            f"| {fmt(r['peak_rss_mb'], '.0f')} | {r['loss_first']['total']:.5g} | {r['loss_last']['total']:.5g} "
            f"| {ratio} |")
    if torch_run and "error" in torch_run:
        rows.append(f"| pytorch | - | cpu | failed: {torch_run['error']} | | | | | | |")
    elif torch_run:
        t = torch_run
        rows.append(
            f"| pytorch {t['torch_version']} | {t.get('selected_variant', t['backend'] + '/' + t['memory_format'])} "
            f"| {t.get('device_name') or 'cpu (' + str(t['threads']) + ' threads)'}{', bf16 autocast' if t.get('amp') == 'bf16' else ''} | {fmt(t['ms_per_step'])} | {fmt(t['images_per_sec'], '.2f')} "
            f"| {fmt(t['warmup_s'])} | {fmt(t['peak_rss_mb'], '.0f')} | {t['loss_first']['total']:.5g} "
            f"| {t['loss_last']['total']:.5g} | 1.00 |")
    return "\n".join(rows)


def report(args, jax_runs: list[dict], torch_run: dict | None) -> str:
    lines = [f"### Training step: size {args.size}, batch {args.batch}, {args.steps} timed steps "
             f"after {args.warmup} warmup", "", table(jax_runs, torch_run), ""]
    lines.append("compile/warmup s: nstjax = first step (tracing + XLA compile + one step); "
                 "pytorch = all warmup steps of the selected variant. nstjax/torch ms > 1: nstjax slower.")
    for r in jax_runs:
        if "error" in r:
            continue
        if r["timed_compiles"]:
            lines.append(f"WARNING: nstjax {r['dtype']} recompiled {r['timed_compiles']}x inside the timed loop")
        a, b = r["loss_first"]["total"], r["warmup_loss_first"]["total"]
        if abs(a - b) > 1e-4 * abs(b):
            lines.append(f"WARNING: nstjax {r['dtype']}: first timed loss {a:.6g} != first warmup loss {b:.6g} "
                         "(reset to the initial state failed?)")
        if r["backend"] != "cpu":
            at = "" if (args.size, args.batch) == (256, 4) else \
                f" (at size {args.size}, batch {args.batch}; the 40k-step run uses 256 px, batch 4)"
            mem = f", device peak memory {r['device_peak_mem_mb']:.0f} MB" if r["device_peak_mem_mb"] else ""
            lines.append(f"- {r['dtype']} on {r['device_kind']}: {r['images_per_sec']:.1f} images/s; "
                         f"{FULL_RUN_STEPS} steps would take {r['full_run_hours']:.2f} h{at}{mem}")
    if torch_run and "runs" in torch_run:
        variants = ", ".join(f"{v['backend']}/{v['memory_format']} "
                             + (v["error"] if "error" in v else f"{v['ms_per_step']:.1f} ms")
                             for v in torch_run["runs"])
        lines.append(f"- pytorch variants: {variants}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", type=int, default=256, help="training image size (square crops)")
    p.add_argument("--batch", type=int, default=4, help="global batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1: includes compilation)")
    p.add_argument("--devices", type=int, default=1,
                   help="simulated CPU devices for the JAX side (functionality check, not a speedup)")
    p.add_argument("--dtype", default="float32", help="comma list of nstjax compute dtypes: float32,bfloat16")
    p.add_argument("--seed", type=int, default=0, help="network init seed (both sides)")
    p.add_argument("--skip-torch", action="store_true", help="run only the nstjax side")
    p.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "flipped", "winograd"),
                   help="nstjax VGG convolutions (vgg.conv_impl)")
    p.add_argument("--torch-compile", action="store_true",
                   help="also try torch.compile on the torch side (cold compile: minutes)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/...)")
    p.add_argument("--torch-python", default=None, help="python with torch (default: .venv-bench/bin/python)")
    p.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--torch-amp", default="none", choices=("none", "bf16"))
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)  # internal: run the JAX side
    args = p.parse_args(argv)
    if args.worker_spec:
        return args
    if args.size < 16 or args.size % 4:
        p.error("--size must be a multiple of 4 and >= 16")
    if args.batch < 1 or args.steps < 1 or args.warmup < 1 or args.devices < 1:
        p.error("--batch, --steps, --warmup and --devices must be >= 1")
    if args.batch % args.devices:
        p.error(f"--batch {args.batch} must be divisible by --devices {args.devices}")
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in args.dtypes if d not in DTYPES]
    if bad or not args.dtypes:
        p.error(f"--dtype: expected a comma list of {', '.join(DTYPES)}, got {args.dtype!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_spec:
        spec = json.loads(Path(args.worker_spec).read_text())
        Path(spec["out"]).write_text(json.dumps(jax_worker(spec), indent=2))
        return 0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp_name:
        tmp = Path(tmp_name)
        inputs = prepare_inputs(args, tmp)
        digests = {k: sha256(Path(inputs[k])) for k in ("style", "photos")}
        jax_runs = [run_jax(args, d, inputs, tmp) for d in args.dtypes]
        torch_run = None if args.skip_torch else run_torch(args, inputs, tmp)
    load_after = os.getloadavg()

    backend = next((r["backend"] for r in jax_runs if "error" not in r), "cpu")
    name = f"train_{args.size}_b{args.batch}" + ("" if backend == "cpu" else f"_{backend}") \
        + (f"_d{args.devices}" if args.devices > 1 else "")
    out = args.out or RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "train_step",
        "config": {"size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                   "devices": args.devices, "dtypes": args.dtypes, "seed": args.seed, "lr": LR,
                   "content_layers": CONTENT_LAYERS, "style_layers": STYLE_LAYERS,
                   "content_weight": CONTENT_WEIGHT, "style_weight": STYLE_WEIGHT, "tv_weight": TV_WEIGHT,
                   "style_image": STYLE_IMAGE, "style_size": STYLE_SIZE,
                   "photos": f"{PHOTOS_DIR} (first {N_PHOTOS}, centre-cropped)", "torch_vgg_call": "separate"},
        "inputs_sha256": digests,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": len(os.sched_getaffinity(0)), "loadavg_before": load_before,
                    "loadavg_after": load_after},
        "nstjax": jax_runs,
        "pytorch": torch_run,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(args, jax_runs, torch_run))
    print(f"\nraw results: {out}")
    failed = [r for r in jax_runs + [torch_run] if r and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
