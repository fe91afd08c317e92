"""Feed-forward style training (Johnson et al. 2016): perceptual loss, data-parallel step.

The train step is one jit-compiled function over a 1-D device mesh with axis 'data': the batch
is sharded over every local device (NamedSharding), parameters and optimizer state are
replicated, and XLA's SPMD partitioner inserts the gradient all-reduce (a mean over the
global batch), so one step on N devices equals the same global batch on one device.

A network of several styles (conditional instance norm, `style.multi=true`) draws style
`(step * B + i) mod num_styles` for image i of step `step`'s batch: every style gets the same
share of the images, and each image is judged against its own style's targets (stacked
along a leading style axis). What the network is told about style i is row i of
`conditions`: a one-hot row for conditional instance norm, the style image's statistics for
an any-style network (AdaIN), which then learns from every style of the list.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nstjax.errors import NstjaxError
from nstjax.perceptual import Encoder, PerceptualLoss, Targets


def make_mesh(devices=None) -> Mesh:
    """A 1-D 'data' mesh over every device of every process (or the given devices)."""
    devices = devices if devices is not None else jax.devices()
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


class Trainer:
    """Holds the compiled, sharded train step and the model's graph definition."""

    def __init__(self, model: nnx.Module, encoder: Encoder, loss: PerceptualLoss, tx: optax.GradientTransformation,
                 grams: Mapping[str, jax.Array], mesh: Mesh, num_styles: int = 1,
                 conditions: np.ndarray | None = None):
        if not loss.style_layers:
            raise NstjaxError("loss.style_layers: a style network needs at least one style layer")
        self.loss = loss
        self.num_styles = int(num_styles)  # > 1: `grams` leaves have a leading style axis
        if conditions is None and self.num_styles > 1:
            conditions = np.eye(self.num_styles, dtype=np.float32)  # conditional norm: style i's row
        if conditions is not None and len(conditions) != self.num_styles:
            raise NstjaxError(f"{len(conditions)} style conditions for {self.num_styles} styles")
        self.encoder = encoder
        self.mesh = mesh
        self.tx = tx
        self.repl = NamedSharding(mesh, P())
        self.data_sharding = NamedSharding(mesh, P("data"))
        self.graphdef, params = nnx.split(model, nnx.Param)
        self.params = jax.device_put(params, self.repl)
        self.opt_state = jax.device_put(tx.init(self.params), self.repl)
        # (loss network params, style targets, per-style network inputs or None)
        self.consts = jax.device_put((encoder.params, dict(grams), conditions), self.repl)
        self._step = jax.jit(self._train_step, donate_argnums=(0, 1),
                             in_shardings=(self.repl, self.repl, self.data_sharding, self.repl, self.repl),
                             out_shardings=(self.repl, self.repl, self.repl))
        self._eval = jax.jit(self._eval_terms, in_shardings=(self.repl, self.data_sharding, self.repl),
                             out_shardings=self.repl)
        self._stylize = jax.jit(self._apply, out_shardings=self.repl)  # (params, x, first_style, conditions)
        self._photo_style = jax.jit(self._photo_terms)

    # ---- pure functions (traced once) -------------------------------------------------
    def style_ids(self, first: Any, batch: int) -> jax.Array:
        """The styles of a batch's images: (first + i) mod num_styles."""
        return (first + jnp.arange(batch, dtype=jnp.int32)) % self.num_styles

    def _apply(self, params, x, first_style, conditions):
        model = nnx.merge(self.graphdef, params)
        if conditions is None:
            return model(x)
        return model(x, conditions[self.style_ids(first_style, x.shape[0])])

    def _evaluate(self, y, fy, fx, grams, first_style) -> dict[str, jax.Array]:
        """The objective of a batch: per image against its own style's targets when there
        are several styles (the mean over images, as the single-style batch objective)."""
        if self.num_styles == 1:
            return self.loss.evaluate(y, fy, Targets(fx, grams))
        own = jax.tree.map(lambda g: g[self.style_ids(first_style, y.shape[0])], grams)
        one = lambda a: a[:, None]  # noqa: E731  (B, ...) -> (B, 1, ...): a batch of one per image
        terms = jax.vmap(lambda y1, fy1, fx1, g1: self.loss.evaluate(y1, fy1, Targets(fx1, g1)))(
            one(y), jax.tree.map(one, fy), jax.tree.map(one, fx), own)
        return jax.tree.map(jnp.mean, terms)

    def _terms(self, params, x, consts, first_style=0) -> dict[str, jax.Array]:
        encoder_params, grams, conditions = consts
        y = self._apply(params, x, first_style, conditions)
        fy = self.encoder(encoder_params, y, self.loss.layers)  # one pass for every loss on y
        names = self.loss.content_names
        fx = self._network_content_targets(params, x, first_style, conditions) if names else {}
        if fx is None:  # content targets: the photo's own features, a shallow pass only
            fx = jax.lax.stop_gradient(self.encoder(encoder_params, x, names))
        return self._evaluate(y, fy, fx, grams, first_style)

    def _network_content_targets(self, params, x, first_style, conditions) -> dict[str, jax.Array] | None:
        """A network that says what its content should match (AdaIN: its own stylized
        features) supplies the content targets; None: the photo's features."""
        model = nnx.merge(self.graphdef, params)
        if conditions is None or not hasattr(model, "content_targets"):
            return None
        return model.content_targets(x, conditions[self.style_ids(first_style, x.shape[0])],
                                     self.loss.content_names)

    def _photo_terms(self, x, consts) -> dict[str, jax.Array]:
        encoder_params, grams, _ = consts
        fx = self.encoder(encoder_params, x, self.loss.layers)
        return self._evaluate(x, fx, fx, grams, 0)

    def _train_step(self, params, opt_state, x, consts, step):
        first_style = step * x.shape[0]  # unused (traced away) for a single-style network

        def f(p):
            t = self._terms(p, x, consts, first_style)
            return t["total"], t

        (_, terms), grads = jax.value_and_grad(f, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient skips the update on the device: no host sync per step,
        # and the parameters (hence every checkpoint) stay finite.
        finite = jnp.isfinite(terms["total"]) & jnp.isfinite(grad_norm)
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        terms["grad_norm"] = grad_norm
        terms["nonfinite"] = jnp.logical_not(finite).astype(jnp.int32)
        return keep(new_params, params), keep(new_opt_state, opt_state), terms

    def _eval_terms(self, params, x, consts):
        return self._terms(params, x, consts)

    # ---- stateful API -----------------------------------------------------------------
    def step(self, batch: jax.Array, index: int = 0) -> dict[str, jax.Array]:
        """Optimizer step number `index` on a global batch (sharded over 'data'): the step
        number picks the styles of a multi-style network's images. Returns device scalars."""
        self.params, self.opt_state, terms = self._step(self.params, self.opt_state, batch, self.consts,
                                                        np.int32(index % max(self.num_styles, 1)))
        return terms

    def evaluate(self, batch: jax.Array) -> dict[str, float]:
        return {k: float(v) for k, v in self._eval(self.params, batch, self.consts).items()}

    def stylize(self, images: np.ndarray, first_style: int = 0) -> np.ndarray:
        """The network's outputs for host images (the same on every process), on every process;
        a multi-style network draws image i in style (first_style + i) mod num_styles."""
        x = jax.device_put(images, self.repl)
        out = self._stylize(self.params, x, np.int32(first_style), self.consts[2])
        return np.clip(np.asarray(out), 0.0, 1.0)

    def put_batch(self, batch: np.ndarray) -> jax.Array:
        """A global batch that every process holds whole (e.g. the validation photos)."""
        return jax.device_put(batch, self.data_sharding)

    def state(self, rng: jax.Array) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "rng": rng}

    def load_state(self, state: dict[str, Any]) -> None:
        self.params = jax.device_put(state["params"], self.repl)
        self.opt_state = jax.device_put(state["opt_state"], self.repl)

    def params_finite(self) -> bool:
        """Whether every parameter is finite (one host sync: for checkpoint time, not per step)."""
        return bool(jax.device_get(_all_finite(self.params)))

    def photo_style_loss(self, batch: jax.Array) -> float:
        """Style loss of the photos themselves (no network): the baseline a stylizer must beat."""
        return float(self._photo_style(batch, self.consts)["style"])


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
