"""PyTorch reference implementations for the nstjax side-by-side CPU benchmarks.

Standalone: needs only torch, numpy and h5py (plus the standard library). It is
run from the benchmark environment made by ``benchmarks/setup_torch_env.sh``
(``.venv-bench``), never from the project's ``.venv``. Inputs are ``.npy``
files written by the JAX-side driver, so both sides see byte-identical data.

Usage
-----
Gatys optimisation (image optimisation against a frozen VGG-19)::

    .venv-bench/bin/python benchmarks/torch_ref.py gatys \\
        --content c.npy --style s.npy --steps 50 --optimizer adam|lbfgs \\
        --lr 0.02 --content-weight 1 --style-weight 1e4 --tv-weight 1e-4 \\
        --warmup 5 --out result.json [--out-image final.npy] \\
        [--content-layers relu4_2] [--style-layers relu1_1,relu2_1,...] \\
        [--backend eager,compile] [--memory-format contiguous,channels_last]

Feed-forward (Johnson et al.) training step::

    .venv-bench/bin/python benchmarks/torch_ref.py train \\
        --style s.npy --size 256 --batch 4 --steps 20 --warmup 3 \\
        --out result.json [--photos photos.npy] [--content-weight 1.0] \\
        [--style-weight 10.0] [--tv-weight 1e-6] [--vgg-call batched|separate] \\
        [--backend eager,compile] [--memory-format contiguous,channels_last]

Common options: ``--weights`` (default
``$NSTJAX_ASSETS/weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``),
``--threads`` (default: all cores), ``--seed``, ``--device cpu|cuda``.
On CUDA, cuDNN autotuning (``cudnn.benchmark``) and TF32 for convolutions and matmuls are on
(what XLA uses for float32 on the same GPU by default), timing synchronises the device once
after the timed loop (as the JAX side blocks once), ``train --amp bf16`` runs the loss under
``torch.autocast(bfloat16)``, and ``peak_device_mb`` is ``torch.cuda.max_memory_allocated``.

``--backend`` and ``--memory-format`` take comma-separated lists. With more
than one combination every combination runs in its own child process (so peak
RSS and torch.compile state are per variant); the JSON then carries all of them
under ``runs`` and copies the fastest one (lowest ``ms_per_step``) to the top
level, with ``selected_variant`` naming it.

Exact math (shared with the JAX side)
-------------------------------------
* Images are float32 RGB in [0, 1], HWC in the ``.npy`` files, NCHW here.
* ``preprocess(x) = BGR(x * 255) - [103.939, 116.779, 123.68]`` (mean in BGR).
* VGG-19 from the Keras ``notop`` HDF5 file: dataset
  ``block{b}_conv{c}/block{b}_conv{c}_W_1:0`` is HWIO (3,3,in,out), turned into
  OIHW; bias ``..._b_1:0``. Blocks of 2,2,4,4,4 3x3 convs (padding 1), ReLU
  after each conv, 2x2/2 max pool between blocks. Layers are named
  ``conv{b}_{c}`` / ``relu{b}_{c}``; the net is built only up to the deepest
  requested layer. VGG parameters are frozen.
* ``gram(F)`` with ``F`` reshaped to (C, H*W): ``F @ F.T / (C*H*W)`` (batched
  per image).
* ``content = sum_l w_l * mean((F_l(x) - F_l(c))**2)`` (mean over all elements).
* ``style = sum_l w_l * mean((gram_l(x) - gram_l(s))**2)``.
* ``tv`` on ``y = x * 255`` (RGB): ``mean((y[1:,:]-y[:-1,:])**2) +
  mean((y[:,1:]-y[:,:-1])**2)`` (means over all elements, batch included).
* ``total = cw * content + sw * style + tvw * tv``.

gatys: x starts at the content image. Default layers: content {relu4_2: 1},
style {relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: 1 each}; ``name[:weight]``
items override them. Targets are computed once (no_grad) before timing.
Adam: ``torch.optim.Adam(lr)``; after every step x is clamped to [0, 1] in
place. L-BFGS: ``torch.optim.LBFGS(lr=1, history_size=10, max_iter=1,
line_search_fn='strong_wolfe')``, no clamping; a step is one ``.step()`` call;
every closure call counts as one function evaluation (loss + gradient).
With max_iter=1 each ``.step()`` re-evaluates the closure at its start (torch
keeps no loss/gradient across calls), so a step costs 1 + line-search evals;
compare ``ms_per_func_eval`` as well as ``ms_per_step``.
``--warmup`` steps run untimed on a copy of x with their own optimizer, then x
and the optimizer are reset; N steps are timed with ``time.perf_counter``.
Losses are reported at the initial x and after N steps, each from a separate
no_grad forward pass.

train: pytorch/examples ``fast_neural_style`` TransformerNet (reflection-padded
convs, InstanceNorm2d(affine=True), 5 residual blocks, nearest x2 upsampling
convs; 1,679,235 parameters, asserted), input/output RGB in [0, 1] (raw output,
no activation). Per batch x: ``y = net(x)``; VGG features of
``preprocess(cat([y, x]))`` in one batched call, the x half detached (default;
``--vgg-call separate`` instead runs y alone, and x alone under no_grad only up
to the content layers: same losses, no VGG backward through the x half);
content on relu2_2 (``mean`` of squared difference); style over
relu1_1..relu5_1 against the style image's grams (computed once, broadcast
over the batch); tv on ``y * 255``; total as above, defaults cw=1.0, sw=10.0,
tvw=1e-6. Adam(lr=1e-3, fused=True where torch supports it) on the net's
parameters; VGG frozen.
Batches come from ``--photos`` (N,H,W,3) cycled in order (uint8 is divided by
255), or from a seeded uniform-random pool. After warmup the net and the
optimizer are reset to their initial state, so the first timed step sees the
same weights as an un-warmed run.

JSON keys
---------
``warmup_s`` is the wall time of the untimed warmup (it includes
torch.compile's compilation with ``--backend compile``).
Both modes: ``framework, torch_version, mode, backend, memory_format,
threads, seed, steps, warmup, warmup_s, ms_per_step (total_s / steps),
ms_per_step_median, ms_per_step_min, total_s, peak_rss_mb,
weights``; ``dynamo`` (unique_graphs, graph_breaks) with
``--backend compile``; for sweeps, ``runs`` and ``selected_variant``.
gatys adds: ``optimizer, lr, content_weight, style_weight, tv_weight,
content_layers, style_layers, content_shape, style_shape, func_evals,
func_evals_per_step, ms_per_func_eval, warmup_func_evals, loss_init,
loss_final`` (each loss dict: ``content, style, tv`` unweighted, ``total``
weighted).
train adds: ``size, batch, lr, content_weight, style_weight, tv_weight,
content_layers, style_layers, vgg_call, photos, n_params, adam_fused,
images_per_sec, loss_first, loss_last`` (dicts as above, from the forward pass of the first and
last timed step), ``loss_history`` (total per timed step).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VGG_MEAN_BGR = (103.939, 116.779, 123.68)
VGG_BLOCKS = (2, 2, 4, 4, 4)
VGG_WEIGHTS_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
DEFAULT_STYLE_LAYERS = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"
TRANSFORMER_NET_PARAMS = 1_679_235
DEV = torch.device("cpu")  # set from --device in run_one


def sync() -> None:
    """Wait for queued device work (CUDA is asynchronous; CPU eager is not)."""
    if DEV.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- VGG


def vgg_layer_order() -> list[str]:
    names = []
    for b, n in enumerate(VGG_BLOCKS, start=1):
        for c in range(1, n + 1):
            names += [f"conv{b}_{c}", f"relu{b}_{c}"]
        if b < len(VGG_BLOCKS):
            names.append(f"pool{b}")
    return names


class VGG19Features(nn.Module):
    """VGG-19 conv trunk up to the deepest requested layer; returns a dict."""

    def __init__(self, h5_path: str, layers: list[str]):
        super().__init__()
        order = vgg_layer_order()
        for name in layers:
            if name not in order:
                raise ValueError(f"unknown VGG-19 layer {name!r}")
        last = max(order.index(n) for n in layers)
        self.wanted = frozenset(layers)
        self.names: list[str] = []
        mods: list[nn.Module] = []
        with h5py.File(h5_path, "r") as f:
            for name in order[: last + 1]:
                if name.startswith("conv"):
                    b, c = name[4:].split("_")
                    grp = f"block{b}_conv{c}"
                    w = np.asarray(f[f"{grp}/{grp}_W_1:0"], dtype=np.float32)  # HWIO
                    bias = np.asarray(f[f"{grp}/{grp}_b_1:0"], dtype=np.float32)
                    conv = nn.Conv2d(w.shape[2], w.shape[3], 3, padding=1)
                    with torch.no_grad():
                        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
                        conv.bias.copy_(torch.from_numpy(bias))
                    mods.append(conv)
                elif name.startswith("relu"):
                    mods.append(nn.ReLU(inplace=False))
                else:
                    mods.append(nn.MaxPool2d(2, 2))
                self.names.append(name)
        self.layers = nn.ModuleList(mods)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
        """Features of ``layers`` (default: all requested at construction);
        stops after the deepest of them."""
        wanted = self.wanted if layers is None else frozenset(layers)
        out = {}
        for name, mod in zip(self.names, self.layers):
            x = mod(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> VGG input: BGR, *255, minus the BGR mean."""
    mean = x.new_tensor(VGG_MEAN_BGR).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean


def gram(feat: torch.Tensor) -> torch.Tensor:
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    y = x * 255.0
    dh = y[:, :, 1:, :] - y[:, :, :-1, :]
    dw = y[:, :, :, 1:] - y[:, :, :, :-1]
    return dh.square().mean() + dw.square().mean()


# ------------------------------------------------------------------ transformer


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        return self.conv2d(self.pad(x))


class UpsampleConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, ch, track_running_stats=False):
        super().__init__()
        self.conv1 = ConvLayer(ch, ch, 3, 1)
        self.in1 = nn.InstanceNorm2d(ch, affine=True, track_running_stats=track_running_stats)
        self.conv2 = ConvLayer(ch, ch, 3, 1)
        self.in2 = nn.InstanceNorm2d(ch, affine=True, track_running_stats=track_running_stats)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + x


class TransformerNet(nn.Module):
    """pytorch/examples fast_neural_style TransformerNet (same layout and names as nstjax).

    `channels`/`blocks` shrink it (test fixtures); `track_running_stats=True` gives the
    InstanceNorm running statistics that the state dicts of old torch versions carry.
    """

    def __init__(self, channels=(32, 64, 128), blocks=5, track_running_stats=False):
        super().__init__()
        c1, c2, c3 = channels

        def norm(ch):
            return nn.InstanceNorm2d(ch, affine=True, track_running_stats=track_running_stats)

        self.conv1, self.in1 = ConvLayer(3, c1, 9, 1), norm(c1)
        self.conv2, self.in2 = ConvLayer(c1, c2, 3, 2), norm(c2)
        self.conv3, self.in3 = ConvLayer(c2, c3, 3, 2), norm(c3)
        self.blocks = blocks
        for i in range(blocks):
            setattr(self, f"res{i + 1}", ResidualBlock(c3, track_running_stats))
        self.deconv1, self.in4 = UpsampleConvLayer(c3, c2, 3, 1, upsample=2), norm(c2)
        self.deconv2, self.in5 = UpsampleConvLayer(c2, c1, 3, 1, upsample=2), norm(c1)
        self.deconv3 = ConvLayer(c1, 3, 9, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        for i in range(self.blocks):
            y = getattr(self, f"res{i + 1}")(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


# ---------------------------------------------------------------------- helpers


def parse_layers(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, w = item.partition(":")
        out[name.strip()] = float(w) if w else 1.0
    if not out:
        raise ValueError(f"empty layer list {spec!r}")
    return out


def load_image(path: str) -> torch.Tensor:
    """(H,W,3) .npy -> (1,3,H,W) float32 tensor."""
    a = np.load(path)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{path}: expected (H,W,3), got {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_weights() -> str:
    assets = os.environ.get("NSTJAX_ASSETS", "")
    return os.path.join(assets, "weights", VGG_WEIGHTS_NAME) if assets else VGG_WEIGHTS_NAME


def to_format(t: torch.Tensor, memory_format: str) -> torch.Tensor:
    if memory_format == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def maybe_compile(fn, backend: str):
    if backend == "compile":
        return torch.compile(fn, dynamic=False)
    if backend != "eager":
        raise ValueError(f"unknown backend {backend!r}")
    return fn


def step_stats(step_s: list[float]) -> dict[str, float | None]:
    """Median and minimum per-step time (robust to a noisy, shared machine)."""
    if not step_s:
        return {"ms_per_step_median": None, "ms_per_step_min": None}
    ms = sorted(1000.0 * t for t in step_s)
    mid = len(ms) // 2
    med = ms[mid] if len(ms) % 2 else 0.5 * (ms[mid - 1] + ms[mid])
    return {"ms_per_step_median": med, "ms_per_step_min": ms[0]}


def dynamo_stats() -> dict[str, int] | None:
    """Graph count and graph breaks seen by torch.compile (diagnostic only)."""
    try:
        from torch._dynamo.utils import counters
        return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values()))}
    except Exception:  # private API; never fail a benchmark over it
        return None


def floats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}


# ------------------------------------------------------------------------ gatys


def run_gatys(args) -> dict:
    content_layers = parse_layers(args.content_layers)
    style_layers = parse_layers(args.style_layers)
    cw, sw, tvw = args.content_weight, args.style_weight, args.tv_weight
    mf = args.memory_format

    vgg = VGG19Features(args.weights, list({**content_layers, **style_layers})).to(DEV)
    if mf == "channels_last":
        vgg = vgg.to(memory_format=torch.channels_last)

    content = load_image(args.content).to(DEV)
    style = load_image(args.style).to(DEV)
    with torch.no_grad():
        fc = vgg(to_format(preprocess(content), mf))
        fs = vgg(to_format(preprocess(style), mf))
        c_targets = {l: fc[l].clone() for l in content_layers}
        s_targets = {l: gram(fs[l]) for l in style_layers}
    del fc, fs

    def loss_parts(x):
        feats = vgg(to_format(preprocess(x), mf))
        c = sum(w * (feats[l] - c_targets[l]).square().mean() for l, w in content_layers.items())
        s = sum(w * (gram(feats[l]) - s_targets[l]).square().mean() for l, w in style_layers.items())
        t = tv_loss(x)
        return cw * c + sw * s + tvw * t, c, s, t

    loss_fn = maybe_compile(loss_parts, args.backend)

    def eval_losses(x):
        with torch.no_grad():
            total, c, s, t = loss_fn(x)
        return floats({"content": c, "style": s, "tv": t, "total": total})

    def make_opt(x):
        if args.optimizer == "adam":
            return torch.optim.Adam([x], lr=args.lr)
        return torch.optim.LBFGS([x], lr=1, history_size=10, max_iter=1, line_search_fn="strong_wolfe")

    evals = [0]

    def run_steps(x, opt, n, times=None):
        times = [] if times is None else times
        if args.optimizer == "adam":
            for _ in range(n):
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                total = loss_fn(x)[0]
                evals[0] += 1
                total.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
                if DEV.type == "cpu":  # per-step times would need a sync per step on CUDA
                    times.append(time.perf_counter() - t)
        else:
            def closure():
                opt.zero_grad(set_to_none=True)
                total = loss_fn(x)[0]
                evals[0] += 1
                total.backward()
                return total

            for _ in range(n):
                t = time.perf_counter()
                opt.step(closure)
                if DEV.type == "cpu":
                    times.append(time.perf_counter() - t)
        sync()

    # Warmup (includes torch.compile's compilation) on a copy of x.
    t0 = time.perf_counter()
    xw = content.clone().requires_grad_(True)
    run_steps(xw, make_opt(xw), args.warmup)
    warmup_evals = evals[0]
    del xw
    loss_init = eval_losses(content.clone())  # also compiles the no_grad graph
    warmup_s = time.perf_counter() - t0

    x = content.clone().requires_grad_(True)
    opt = make_opt(x)
    evals[0] = 0
    step_s: list[float] = []
    t0 = time.perf_counter()
    run_steps(x, opt, args.steps, step_s)
    total_s = time.perf_counter() - t0
    n_evals = evals[0]

    x_final = x.detach()
    loss_final = eval_losses(x_final)
    if args.out_image:
        np.save(args.out_image, x_final[0].permute(1, 2, 0).contiguous().cpu().numpy())

    steps = max(args.steps, 1)
    return {
        "mode": "gatys",
        "optimizer": args.optimizer,
        "lr": args.lr if args.optimizer == "adam" else 1.0,
        "content_weight": cw,
        "style_weight": sw,
        "tv_weight": tvw,
        "content_layers": content_layers,
        "style_layers": style_layers,
        "content_shape": list(content.shape[2:]),
        "style_shape": list(style.shape[2:]),
        "steps": args.steps,
        "warmup": args.warmup,
        "warmup_s": warmup_s,
        "warmup_func_evals": warmup_evals,
        "total_s": total_s,
        "ms_per_step": 1000.0 * total_s / steps,
        **step_stats(step_s),
        "func_evals": n_evals,
        "func_evals_per_step": n_evals / steps,
        "ms_per_func_eval": 1000.0 * total_s / max(n_evals, 1),
        "peak_rss_mb": peak_rss_mb(),
        "loss_init": loss_init,
        "loss_final": loss_final,
    }


# ------------------------------------------------------------------------ train


def run_train(args) -> dict:
    content_layers = parse_layers(args.content_layers)
    style_layers = parse_layers(args.style_layers)
    cw, sw, tvw = args.content_weight, args.style_weight, args.tv_weight
    mf = args.memory_format
    B = args.batch

    vgg = VGG19Features(args.weights, list({**content_layers, **style_layers})).to(DEV)
    net = TransformerNet().to(DEV)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == TRANSFORMER_NET_PARAMS, n_params
    if mf == "channels_last":
        vgg = vgg.to(memory_format=torch.channels_last)
        net = net.to(memory_format=torch.channels_last)
    net.train()

    style = load_image(args.style).to(DEV)
    with torch.no_grad():
        fs = vgg(to_format(preprocess(style), mf))
        gram_style = {l: gram(fs[l]) for l in style_layers}  # (1,C,C), broadcasts over B
    del fs

    if args.photos:
        pool = np.load(args.photos)
        if pool.ndim != 4 or pool.shape[-1] != 3:
            raise ValueError(f"{args.photos}: expected (N,H,W,3), got {pool.shape}")
        if pool.dtype == np.uint8:
            pool = pool.astype(np.float32) / 255.0
        pool = np.asarray(pool, dtype=np.float32)
    else:
        rng = np.random.RandomState(args.seed)
        pool = rng.rand(max(4 * B, 8), args.size, args.size, 3).astype(np.float32)
    if pool.shape[0] < B:
        pool = np.concatenate([pool] * (-(-B // pool.shape[0])), axis=0)
    pool_t = to_format(torch.from_numpy(pool).permute(0, 3, 1, 2).to(DEV), mf)
    n_batches = pool_t.shape[0] // B
    batches = [pool_t[i * B:(i + 1) * B].clone(memory_format=torch.preserve_format) for i in range(n_batches)]
    del pool_t

    def loss_parts(x):
        y = net(x)
        if args.vgg_call == "batched":
            feats = vgg(to_format(preprocess(torch.cat([y, x], 0)), mf))
            fy = {l: f[:B] for l, f in feats.items()}
            fx = {l: feats[l][B:].detach() for l in content_layers}
        else:
            fy = vgg(to_format(preprocess(y), mf))
            with torch.no_grad():  # x only needs the content layers
                fx = vgg(to_format(preprocess(x), mf), content_layers)
        c = sum(w * (fy[l] - fx[l]).square().mean() for l, w in content_layers.items())
        s = sum(w * (gram(fy[l]) - gram_style[l]).square().mean() for l, w in style_layers.items())
        t = tv_loss(y)
        return cw * c + sw * s + tvw * t, c, s, t

    loss_fn = maybe_compile(loss_parts, args.backend)

    def make_opt():
        try:
            return torch.optim.Adam(net.parameters(), lr=args.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.Adam(net.parameters(), lr=args.lr)

    amp = args.amp == "bf16"

    def step(opt, x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=amp):
            parts = loss_fn(x)
        parts[0].backward()
        opt.step()
        return parts

    init_state = copy.deepcopy(net.state_dict())

    t0 = time.perf_counter()
    opt = make_opt()
    for i in range(args.warmup):
        step(opt, batches[i % n_batches])
    sync()
    warmup_s = time.perf_counter() - t0

    # Reset so the timed run starts from the same weights as an un-warmed one.
    net.load_state_dict(init_state)
    opt = make_opt()
    history: list[torch.Tensor] = []
    first = last = None
    step_s: list[float] = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        ts = time.perf_counter()
        total, c, s, t = step(opt, batches[i % n_batches])
        if DEV.type == "cpu":
            step_s.append(time.perf_counter() - ts)
        history.append(total.detach())
        if i == 0:
            first = (total.detach(), c.detach(), s.detach(), t.detach())
        last = (total.detach(), c.detach(), s.detach(), t.detach())
    sync()
    total_s = time.perf_counter() - t0

    def ld(v):
        return None if v is None else floats({"content": v[1], "style": v[2], "tv": v[3], "total": v[0]})

    steps = max(args.steps, 1)
    return {
        "mode": "train",
        "amp": args.amp,
        "size": list(batches[0].shape[2:]),
        "batch": B,
        "lr": args.lr,
        "content_weight": cw,
        "style_weight": sw,
        "tv_weight": tvw,
        "content_layers": content_layers,
        "style_layers": style_layers,
        "vgg_call": args.vgg_call,
        "photos": args.photos,
        "n_params": n_params,
        "adam_fused": bool(opt.defaults.get("fused")),
        "steps": args.steps,
        "warmup": args.warmup,
        "warmup_s": warmup_s,
        "total_s": total_s,
        "ms_per_step": 1000.0 * total_s / steps,
        **step_stats(step_s),
        "images_per_sec": B * args.steps / total_s if total_s > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "loss_first": ld(first),
        "loss_last": ld(last),
        "loss_history": [float(v) for v in history],
    }


# ------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp):
        sp.add_argument("--out", required=True, help="JSON result path")
        sp.add_argument("--steps", type=int, required=True)
        sp.add_argument("--weights", default=default_weights())
        sp.add_argument("--threads", type=int, default=available_cores(),
                        help="torch intra-op threads (default: all usable cores)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--backend", default="eager", help="comma list of eager,compile")
        sp.add_argument("--memory-format", default="contiguous",
                        help="comma list of contiguous,channels_last")
        sp.add_argument("--style", required=True, help="style image .npy (H,W,3)")
        sp.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    g = sub.add_parser("gatys", help="Gatys image optimisation")
    common(g)
    g.add_argument("--content", required=True, help="content image .npy (H,W,3)")
    g.add_argument("--optimizer", choices=("adam", "lbfgs"), default="adam")
    g.add_argument("--lr", type=float, default=0.02, help="Adam learning rate (L-BFGS uses lr=1)")
    g.add_argument("--content-weight", type=float, default=1.0)
    g.add_argument("--style-weight", type=float, default=1.0)
    g.add_argument("--tv-weight", type=float, default=0.0)
    g.add_argument("--content-layers", default="relu4_2")
    g.add_argument("--style-layers", default=DEFAULT_STYLE_LAYERS)
    g.add_argument("--warmup", type=int, default=5)
    g.add_argument("--out-image", default=None, help="save the final image (H,W,3) float32 .npy")

    t = sub.add_parser("train", help="feed-forward TransformerNet training step")
    common(t)
    t.add_argument("--size", type=int, default=256, help="random-batch image size (ignored with --photos)")
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--photos", default=None, help=".npy (N,H,W,3) content photos, cycled in order")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--content-weight", type=float, default=1.0)
    t.add_argument("--style-weight", type=float, default=10.0)
    t.add_argument("--tv-weight", type=float, default=1e-6)
    t.add_argument("--content-layers", default="relu2_2")
    t.add_argument("--style-layers", default=DEFAULT_STYLE_LAYERS)
    t.add_argument("--vgg-call", choices=("batched", "separate"), default="batched")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16: run the loss under torch.autocast(bfloat16)")
    return p


def run_one(args) -> dict:
    global DEV
    DEV = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if DEV.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    res = run_gatys(args) if args.mode == "gatys" else run_train(args)
    if DEV.type == "cuda":
        res["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["device_name"] = torch.cuda.get_device_name()
    if args.backend == "compile":
        res["dynamo"] = dynamo_stats()
    head = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "backend": args.backend,
        "memory_format": args.memory_format,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "seed": args.seed,
        "weights": args.weights,
    }
    return {**head, **res}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    formats = [m.strip() for m in args.memory_format.split(",") if m.strip()]
    for b in backends:
        if b not in ("eager", "compile"):
            raise SystemExit(f"unknown backend {b!r}")
    for m in formats:
        if m not in ("contiguous", "channels_last"):
            raise SystemExit(f"unknown memory format {m!r}")
    variants = list(itertools.product(backends, formats))

    if len(variants) == 1:
        args.backend, args.memory_format = variants[0]
        result = run_one(args)
    else:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for b, m in variants:
                out = os.path.join(tmp, f"{b}-{m}.json")
                child = [a for a in argv]
                child += ["--backend", b, "--memory-format", m, "--out", out]
                if args.mode == "gatys" and args.out_image:
                    child += ["--out-image", os.path.join(tmp, f"{b}-{m}.npy")]
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child])
                if proc.returncode != 0:
                    runs.append({"backend": b, "memory_format": m, "error": f"exit {proc.returncode}"})
                    continue
                with open(out) as f:
                    runs.append(json.load(f))
            ok = [r for r in runs if "error" not in r]
            if not ok:
                raise SystemExit("every variant failed")
            best = min(ok, key=lambda r: r["ms_per_step"])
            if args.mode == "gatys" and args.out_image:
                src = os.path.join(tmp, f"{best['backend']}-{best['memory_format']}.npy")
                np.save(args.out_image, np.load(src))
        result = {**best, "selected_variant": f"{best['backend']}/{best['memory_format']}", "runs": runs}

    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    summary = {k: result.get(k) for k in ("mode", "backend", "memory_format", "ms_per_step", "peak_rss_mb")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
