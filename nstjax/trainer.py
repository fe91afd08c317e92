"""Feed-forward style training (Johnson et al. 2016): perceptual loss, data-parallel step.

The train step is one jit-compiled function over a 1-D device mesh with axis 'data': the batch
is sharded over every local device (NamedSharding), parameters and optimizer state are
replicated, and XLA's SPMD partitioner inserts the gradient all-reduce (a mean over the
global batch), so one step on N devices equals the same global batch on one device.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nstjax import losses as L
from nstjax.errors import NstjaxError
from nstjax.vgg import VGG19, check_layers, frozen_kernels, layer_order


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """Weights and layers of the Johnson et al. perceptual loss."""

    content_layers: Mapping[str, float]
    style_layers: Mapping[str, float]
    content_weight: float
    style_weight: float
    tv_weight: float

    def validate(self) -> None:
        check_layers(self.content_layers, "loss.content_layers")
        check_layers(self.style_layers, "loss.style_layers")
        if not self.style_layers:
            raise NstjaxError("loss.style_layers: a style network needs at least one style layer")


def make_mesh(devices=None) -> Mesh:
    devices = devices if devices is not None else jax.local_devices()
    return Mesh(np.asarray(devices), ("data",))


def check_batch(batch_size: int, n_devices: int) -> None:
    if batch_size < 1:
        raise NstjaxError(f"train.batch_size must be >= 1, got {batch_size}")
    if batch_size % n_devices:
        raise NstjaxError(f"train.batch_size={batch_size} is not divisible by the {n_devices} devices; "
                          f"use a multiple of {n_devices}")


def make_optimizer(lr: float, steps: int, schedule: str = "constant", warmup: int = 0,
                   clip_norm: float | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with an optional warmup/cosine schedule; also returns the schedule for logging."""
    if lr <= 0:
        raise NstjaxError(f"train.lr must be > 0, got {lr}")
    if schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1), lr * 0.01)
    else:
        raise NstjaxError(f"train.lr_schedule: expected constant or cosine, got {schedule!r}")
    if warmup and schedule == "constant":
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*parts, optax.adam(sched)), sched


def style_targets(vgg: VGG19, style_images: list[np.ndarray], layers: Mapping[str, float],
                  blend: list[float] | None = None) -> dict[str, jax.Array]:
    """Gram targets of the style image(s), computed once before training (blend-averaged)."""
    from nstjax.gatys import encode, normalized_blend

    blend = normalized_blend(blend, len(style_images))
    graphdef, state = nnx.split(vgg)
    frozen = frozen_kernels(vgg, layers)  # same convolutions as the training loss (cached there)
    out: dict[str, jax.Array] = {}
    for w, img in zip(blend, style_images):
        feats = encode(graphdef, state, frozen, jnp.asarray(img)[None], tuple(layers))
        for k in layers:
            out[k] = out.get(k, 0.0) + w * L.gram(feats[k])
    return out


class Trainer:
    """Holds the compiled, sharded train step and the model's graph definition."""

    def __init__(self, model: nnx.Module, vgg: VGG19, loss: PerceptualLoss, tx: optax.GradientTransformation,
                 grams: Mapping[str, jax.Array], mesh: Mesh):
        loss.validate()
        self.loss = loss
        self.mesh = mesh
        self.tx = tx
        self.repl = NamedSharding(mesh, P())
        self.data_sharding = NamedSharding(mesh, P("data"))
        self.graphdef, params = nnx.split(model, nnx.Param)
        self.vgg_graphdef, vgg_state = nnx.split(vgg)
        order = layer_order()
        self.content_layers = tuple(sorted(loss.content_layers, key=order.index))
        self.style_layers = tuple(sorted(set(loss.style_layers) | set(loss.content_layers), key=order.index))
        self.params = jax.device_put(params, self.repl)
        self.opt_state = jax.device_put(tx.init(self.params), self.repl)
        frozen = frozen_kernels(vgg, self.style_layers)  # once: Winograd/input-gradient kernels
        self.consts = jax.device_put((vgg_state, frozen, dict(grams)), self.repl)
        self._step = jax.jit(self._train_step, donate_argnums=(0, 1),
                             in_shardings=(self.repl, self.repl, self.data_sharding, self.repl),
                             out_shardings=(self.repl, self.repl, self.repl))
        self._eval = jax.jit(self._eval_terms, in_shardings=(self.repl, self.data_sharding, self.repl),
                             out_shardings=self.repl)
        self._stylize = jax.jit(self._apply)

    # ---- pure functions (traced once) -------------------------------------------------
    def _apply(self, params, x):
        return nnx.merge(self.graphdef, params)(x)

    def _terms(self, params, x, consts) -> dict[str, jax.Array]:
        vgg_state, frozen, grams = consts
        vgg = nnx.merge(self.vgg_graphdef, vgg_state)
        y = self._apply(params, x)
        fy = vgg(y, self.style_layers, frozen)  # one pass for every loss on y
        fx = jax.lax.stop_gradient(vgg(x, self.content_layers, frozen))  # content targets: shallow pass only
        c = L.content_loss(fy, fx, self.loss.content_layers) if self.loss.content_layers else jnp.zeros(())
        s = L.style_loss(fy, grams, self.loss.style_layers)
        tv = L.tv_loss(y)
        total = self.loss.content_weight * c + self.loss.style_weight * s + self.loss.tv_weight * tv
        return {"content": c, "style": s, "tv": tv, "total": total}

    def _train_step(self, params, opt_state, x, consts):
        def f(p):
            t = self._terms(p, x, consts)
            return t["total"], t

        (_, terms), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        terms["grad_norm"] = optax.global_norm(grads)
        return params, opt_state, terms

    def _eval_terms(self, params, x, consts):
        return self._terms(params, x, consts)

    # ---- stateful API -----------------------------------------------------------------
    def step(self, batch: jax.Array) -> dict[str, jax.Array]:
        """One optimizer step on a global batch (sharded over 'data'). Returns device scalars."""
        self.params, self.opt_state, terms = self._step(self.params, self.opt_state, batch, self.consts)
        return terms

    def evaluate(self, batch: jax.Array) -> dict[str, float]:
        return {k: float(v) for k, v in self._eval(self.params, batch, self.consts).items()}

    def stylize(self, images: np.ndarray | jax.Array) -> np.ndarray:
        return np.clip(np.asarray(self._stylize(self.params, jnp.asarray(images))), 0.0, 1.0)

    def put_batch(self, batch: np.ndarray) -> jax.Array:
        return jax.device_put(batch, self.data_sharding)

    def state(self, rng: jax.Array) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "rng": rng}

    def load_state(self, state: dict[str, Any]) -> None:
        self.params = jax.device_put(state["params"], self.repl)
        self.opt_state = jax.device_put(state["opt_state"], self.repl)

    def photo_style_loss(self, batch: jax.Array) -> float:
        """Style loss of the photos themselves (no network): the baseline a stylizer must beat."""
        if not hasattr(self, "_photo_style"):
            def f(x, consts):
                vgg = nnx.merge(self.vgg_graphdef, consts[0])
                feats = vgg(x, tuple(self.loss.style_layers), consts[1])
                return L.style_loss(feats, consts[2], self.loss.style_layers)
            self._photo_style = jax.jit(f)
        return float(self._photo_style(batch, self.consts))
