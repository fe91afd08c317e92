"""A/B of nstjax code variants on the TransformerNet forward pass, in one process, alternating.

Each argument is a Python snippet run before its variant's forward pass is traced and
compiled (modules: J = nstjax.networks.johnson, P = nstjax.ops.padded_conv, C = nstjax.ops.cpu_kernels,
U = nstjax.ops.upsample_conv, W = nstjax.ops.winograd, R = nstjax.runtime). What a snippet
changes in those modules (and in J's layer classes) is undone after its variant compiles, so
every snippet starts from the code as it is:

    python benchmarks/ab_infer.py "P._MAX_IM2COL_IN = 0" "pass"
    SIZE=512 BATCH=4 ROUNDS=6 python benchmarks/ab_infer.py "P._MAX_IM2COL_IN = 0" "pass"

The network is pytorch/examples' TransformerNet at width 1 (random weights, instance-norm
affine randomized, pixel_scale 255 as a .pth import), on a real photo resized to SIZE x SIZE. Chunks of CHUNK calls
alternate between the variants for ROUNDS rounds, so drift on a shared machine hits every
variant alike; printed: the median ms/image per variant relative to the first, and each
variant's max |difference| from the first variant's output. MALLOC=retain sets up host
malloc as runtime.host_malloc_cache does. GRAD=1 times the forward and backward pass instead
(the gradient of a fixed random projection of the output with respect to the parameters, as
training needs it). A snippet may set `OPTIONS`, the XLA compile options of its variant
(default: XLA's own defaults); `OPTIONS = C.forward_options()` compiles as `Stylizer` does
for inference on this CPU, `C.OPTIONS["xla"]` and `C.OPTIONS["ynnpack"]` with either choice of
matrix products (nstjax/ops/cpu_kernels.py):

    python benchmarks/ab_infer.py 'OPTIONS = C.OPTIONS["xla"]' 'OPTIONS = C.OPTIONS["ynnpack"]' pass

bench_infer.py is the comparison with PyTorch.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from PIL import Image

from nstjax import runtime as R
from nstjax.networks import johnson as J
from nstjax.ops import cpu_kernels as C
from nstjax.ops import padded_conv as P
from nstjax.ops import upsample_conv as U
from nstjax.ops import winograd as W

_PATCHABLE = (J, P, U, W, R, J.ConvLayer, J.UpsampleConvLayer, J.ResidualBlock, J.TransformerNet)


def _snapshot() -> list[dict]:
    return [dict(vars(m)) for m in _PATCHABLE]


def _restore(saved: list[dict]) -> None:
    for m, before in zip(_PATCHABLE, saved):
        for k in set(vars(m)) - set(before):
            delattr(m, k)
        for k, v in before.items():
            if vars(m).get(k, object()) is not v:
                setattr(m, k, v)


def _network() -> tuple[nnx.GraphDef, nnx.State]:
    model = J.TransformerNet(width=1.0, pixel_scale=255.0, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and str(path[-2]).startswith("in"):
            lo, hi = (0.5, 1.5) if path[-1] == "scale" else (-0.2, 0.2)
            var[...] = rng.uniform(lo, hi, var.shape).astype(np.float32)
    return nnx.split(model)


def main() -> None:
    variants = sys.argv[1:]
    if not variants or variants[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    assets = Path(os.environ.get("NSTJAX_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    try:
        size, batch, rounds, chunk = (int(os.environ.get(k, d)) for k, d in
                                      (("SIZE", 256), ("BATCH", 1), ("ROUNDS", 10), ("CHUNK", 2)))
    except ValueError as e:
        raise SystemExit(f"ab_infer: SIZE, BATCH, ROUNDS and CHUNK must be integers ({e})") from None
    if min(size, batch, rounds, chunk) < 1:
        raise SystemExit("ab_infer: SIZE, BATCH, ROUNDS and CHUNK must be >= 1")
    if os.environ.get("MALLOC") == "retain":
        R.retain_host_memory()  # before the CPU backend starts its threads
    photo = Image.open(assets / "data/content/chicago.jpg").convert("RGB").resize((size, size), Image.BICUBIC)
    x = np.repeat(np.asarray(photo, np.float32)[None] / 255.0, batch, 0)
    graphdef, state = _network()
    grad = os.environ.get("GRAD") == "1"
    probe = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)

    def forward(s, v):
        return nnx.merge(graphdef, s)(v)

    def backward(s, v):  # d(sum(y * probe))/d(params): the network's part of a training step
        return jax.grad(lambda p: (forward(p, v) * probe).sum())(s)

    runs = []
    for code in variants:
        saved = _snapshot()
        try:
            scope = dict(globals(), OPTIONS=None)
            exec(code, scope)
            f = backward if grad else forward  # a new function per variant: jit's trace cache is per function
            fn = jax.jit(lambda s, v: f(s, v)).lower(state, x).compile(scope["OPTIONS"])
        except Exception as e:  # a typo in a snippet: one line, not a traceback
            raise SystemExit(f"ab_infer: variant {code!r}: {type(e).__name__}: {e}") from None
        finally:
            _restore(saved)
        y = fn(state, x)
        y = np.concatenate([np.ravel(a) for a in jax.tree.leaves(y)]) if grad else np.asarray(y)
        runs.append({"fn": fn, "y": y, "ms": []})
    for _ in range(rounds):
        for r in runs:
            t = time.perf_counter()
            for _ in range(chunk):
                jax.block_until_ready(r["fn"](state, x))
            r["ms"].append(1000 * (time.perf_counter() - t) / chunk / batch)
    base = statistics.median(runs[0]["ms"])
    print(f"{x.shape[2]}x{x.shape[1]}, batch {batch}, {rounds} rounds of {chunk} calls"
          + (", forward + backward (max|diff| relative to the largest gradient)" if grad else ""))
    for code, r in zip(variants, runs):
        med = statistics.median(r["ms"])
        diff = float(np.abs(r["y"] - runs[0]["y"]).max() / (np.abs(runs[0]["y"]).max() if grad else 1.0))
        print(f"{med:8.1f} ms/image  x{med / base:.3f}  (min {min(r['ms']):.1f})  "
              f"max|diff| {diff:.1e}  [{code}]")


if __name__ == "__main__":
    main()
