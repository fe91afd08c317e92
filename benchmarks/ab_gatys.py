"""A/B of nstjax code variants on the Gatys step, in one process, alternating short chunks.

Each argument is a Python snippet run before its variant's loss network and step are built
(modules are available as V = nstjax.vgg, W = nstjax.ops.winograd, L = nstjax.losses), e.g.

    python benchmarks/ab_gatys.py "W.OUT_MAJOR_MAX_TILES = 0" "pass"        # README: -7.4% at 256 px
    SIZE=512 ROUNDS=8 CHUNK=2 python benchmarks/ab_gatys.py "W.OUT_MAJOR_MAX_TILES = 0" "pass"

Chunks of CHUNK Adam steps alternate between the variants for ROUNDS rounds, so drift on a
shared machine hits every variant alike; the median ms/step per variant is printed, relative to
the first. Use it to decide a change; bench_gatys.py is the comparison with PyTorch. Host
malloc is set up as `nstjax.stylize` does (runtime.host_malloc_cache); MALLOC=default skips that.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from nstjax import losses as L  # noqa: F401  (for the snippets)
from nstjax import vgg as V
from nstjax.gatys import GatysProblem, GatysSettings
from nstjax.ops import winograd as W  # noqa: F401
from nstjax.image import load_resized
from nstjax.runtime import retain_host_memory


def main() -> None:
    variants = sys.argv[1:]
    if not variants or variants[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    assets = Path(os.environ.get("NSTJAX_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    try:
        size, rounds, chunk = (int(os.environ.get(k, d)) for k, d in (("SIZE", 256), ("ROUNDS", 16), ("CHUNK", 3)))
    except ValueError as e:
        raise SystemExit(f"ab_gatys: SIZE, ROUNDS and CHUNK must be integers ({e})") from None
    if min(size, rounds, chunk) < 1:
        raise SystemExit("ab_gatys: SIZE, ROUNDS and CHUNK must be >= 1")
    if os.environ.get("MALLOC") != "default":
        retain_host_memory()  # before the CPU backend starts its threads
    content = load_resized(assets / "data/content/chicago.jpg", size)
    style = load_resized(assets / "data/styles/mosaic.jpg", size)
    settings = GatysSettings(optimizer="adam", lr=0.02)  # neural-style's loss (PerceptualLoss defaults)
    runs = []
    for code in variants:
        try:
            exec(code, globals())
        except Exception as e:  # a typo in a snippet: one line, not a traceback
            raise SystemExit(f"ab_gatys: variant {code!r}: {type(e).__name__}: {e}") from None
        problem = GatysProblem(V.load_vgg19(), content, [style], None, settings)  # a fresh network per variant
        tx = problem.make_optimizer()
        x = jnp.asarray(content)[None]
        opt_state = tx.init(x)
        step = problem.compile(tx, x, opt_state)
        for _ in range(3):  # warm up
            x, opt_state, _ = step(x, opt_state, problem.consts)
        jax.block_until_ready(x)
        runs.append({"step": step, "x": x, "opt": opt_state, "consts": problem.consts, "ms": []})
    for _ in range(rounds):
        for r in runs:
            t = time.perf_counter()
            for _ in range(chunk):
                r["x"], r["opt"], _ = r["step"](r["x"], r["opt"], r["consts"])
            jax.block_until_ready(r["x"])
            r["ms"].append(1000 * (time.perf_counter() - t) / chunk)
    base = statistics.median(runs[0]["ms"])
    for code, r in zip(variants, runs):
        med = statistics.median(r["ms"])
        print(f"{med:8.1f} ms/step  x{med / base:.3f}  (min {min(r['ms']):.0f}, {rounds * chunk} steps)  [{code}]")


if __name__ == "__main__":
    main()
