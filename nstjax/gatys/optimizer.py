"""Gatys et al. (2015) style transfer: optimize the pixels of an image against VGG-19 losses.

One optimizer step is one AOT-compiled function (compiled once per image size), dispatched
asynchronously step after step; the per-step losses stay on the device until the end of a
chunk of `log_every` steps, so the host syncs once per chunk (progress bar, logging) and
nothing recompiles between steps.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nstjax.errors import NstjaxError
from nstjax.image import fit_size, resize
from nstjax.perceptual import Encoder, PerceptualLoss, Targets
from nstjax.vgg import VGG19, min_input_side

OPTIMIZERS = ("lbfgs", "adam")


@dataclasses.dataclass(frozen=True)
class GatysSettings:
    """Hyper-parameters of one optimization (defaults follow jcjohnson/neural-style)."""

    loss: PerceptualLoss = dataclasses.field(default_factory=PerceptualLoss)
    optimizer: str = "lbfgs"  # lbfgs | adam
    lr: float = 0.02  # Adam step size in [0, 1] pixel units
    lbfgs_memory: int = 10
    steps: int = 500
    log_every: int = 50

    def validate(self) -> None:
        if not self.loss.content_layers and not self.loss.style_layers:
            raise NstjaxError("loss: at least one content or style layer is needed")
        if self.optimizer not in OPTIMIZERS:
            raise NstjaxError(f"optimizer: expected 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.steps < 0:
            raise NstjaxError(f"steps: must be >= 0, got {self.steps}")
        if self.log_every < 1:
            raise NstjaxError(f"log_every: must be >= 1, got {self.log_every}")
        if self.lr <= 0:
            raise NstjaxError(f"lr: must be > 0, got {self.lr}")


@dataclasses.dataclass
class GatysResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    initial: dict[str, float]  # unweighted loss terms and the weighted total
    final: dict[str, float]
    steps: int
    run_seconds: float  # optimization wall time, compilation excluded
    compile_seconds: float
    history: list[tuple[int, float]]  # (step, total loss) for every step


Callback = Callable[[int, np.ndarray, dict[str, float]], None]


def check_sizes(loss: PerceptualLoss, content_hw: tuple[int, int], style_hws: Sequence[tuple[int, int]]) -> None:
    """One clear line (not a crash deep in XLA) when an image is too small for the loss layers."""
    need = min_input_side(loss.layers)
    for what, (h, w) in (("content.image", content_hw), *(("style.image", hw) for hw in style_hws)):
        if min(h, w) < need:
            raise NstjaxError(
                f"{what}: {w}x{h} px at this size, but the loss layers (down to {loss.layers[-1]}) need both "
                f"sides >= {need} px; use a larger size (or style_scale) or crop the image")


def _level_shapes(content_hw, style_hws, size: int, style_scale: float):
    return fit_size(content_hw, size), [fit_size(hw, max(16, round(style_scale * size))) for hw in style_hws]


def check_pyramid(loss: PerceptualLoss, content: np.ndarray, styles: Sequence[np.ndarray],
                  levels: Sequence[Level], style_scale: float) -> None:
    """Every level's image sizes, checked before any work."""
    if style_scale <= 0:
        raise NstjaxError(f"style_scale: must be > 0, got {style_scale}")
    for level in levels:
        check_sizes(loss, *_level_shapes(content.shape[:2], [s.shape[:2] for s in styles], level.size, style_scale))


class GatysProblem:
    """Targets and objective for one content size: encodes content and styles once."""

    def __init__(self, vgg: VGG19, content: np.ndarray, styles: Sequence[np.ndarray],
                 blend: Sequence[float] | None, settings: GatysSettings):
        settings.validate()
        self.s = settings
        self.loss = settings.loss
        check_sizes(self.loss, content.shape[:2], [s.shape[:2] for s in styles])
        self.shape = (1, *content.shape)
        # Frozen kernels laid out for this image size, once per problem.
        self.encoder = Encoder(vgg, self.loss.layers, input_shape=self.shape[:3])
        targets = Targets(self.loss.content_targets(self.encoder, content),
                          self.loss.style_targets(self.encoder, styles, blend))
        self.consts = (self.encoder.params, targets)

    def terms(self, x: jax.Array, consts) -> dict[str, jax.Array]:
        """Unweighted loss terms and the weighted total for image batch x (1, H, W, 3)."""
        encoder_params, targets = consts
        return self.loss.evaluate(x, self.encoder(encoder_params, x, self.loss.layers), targets)

    def objective(self, x: jax.Array, consts) -> jax.Array:
        return self.terms(x, consts)["total"]

    def make_optimizer(self) -> optax.GradientTransformation:
        if self.s.optimizer == "adam":
            return optax.adam(self.s.lr)
        return optax.lbfgs(memory_size=self.s.lbfgs_memory)

    def compile(self, tx: optax.GradientTransformation, x: jax.Array, opt_state):
        """AOT-compile one optimizer step for this image size (once per size).

        One step per call, dispatched asynchronously: the host never waits on a step, and
        XLA:CPU runs a plain jitted step about twice as fast as the same step inside a
        device-side while loop (measured), so a fori_loop over steps would cost more than
        it saves in dispatch.
        """
        lbfgs = self.s.optimizer == "lbfgs"
        donate = (0, 1) if jax.default_backend() != "cpu" else ()

        def step(x, opt_state, consts):
            f = partial(self.objective, consts=consts)
            if lbfgs:
                v, g = optax.value_and_grad_from_state(f)(x, state=opt_state)
                upd, opt_state = tx.update(g, opt_state, x, value=v, grad=g, value_fn=f)
                x = optax.apply_updates(x, upd)
            else:
                v, g = jax.value_and_grad(f)(x)
                upd, opt_state = tx.update(g, opt_state, x)
                x = jnp.clip(optax.apply_updates(x, upd), 0.0, 1.0)  # projected Adam
            return x, opt_state, v

        return jax.jit(step, donate_argnums=donate).lower(x, opt_state, self.consts).compile()


def run_gatys(vgg: VGG19, content: np.ndarray, styles: Sequence[np.ndarray], settings: GatysSettings,
              *, init: np.ndarray | None = None, blend: Sequence[float] | None = None,
              callback: Callback | None = None, step_offset: int = 0) -> GatysResult:
    """Optimize one image at the content's size. `init` defaults to the content image."""
    problem = GatysProblem(vgg, content, styles, blend, settings)
    x = jnp.asarray(content if init is None else init, jnp.float32)[None]
    if x.shape != problem.shape:
        raise NstjaxError(f"init image shape {x.shape[1:]} != content shape {problem.shape[1:]}")
    terms_fn = jax.jit(problem.terms)
    initial = {k: float(v) for k, v in terms_fn(x, problem.consts).items()}
    tx = problem.make_optimizer()
    # The step donates x and the optimizer state (off CPU). optax may hand out one buffer for
    # two state leaves (L-BFGS does on GPU), which donation rejects, so each leaf gets its own.
    x, opt_state = jax.tree.map(jnp.copy, (x, tx.init(x)))

    t0 = time.perf_counter()
    run = problem.compile(tx, x, opt_state)
    compile_seconds = time.perf_counter() - t0

    history: list[tuple[int, float]] = []
    done = 0
    t0 = time.perf_counter()
    while done < settings.steps:
        n = min(settings.log_every, settings.steps - done)
        values = []
        for _ in range(n):  # asynchronous dispatch: no host sync inside a chunk
            x, opt_state, v = run(x, opt_state, problem.consts)
            values.append(v)
        vals = np.asarray(jax.device_get(values))  # the one host sync per chunk
        history += [(step_offset + done + i, float(v)) for i, v in enumerate(vals)]
        done += n
        if callback is not None:
            terms = {k: float(v) for k, v in terms_fn(x, problem.consts).items()}
            callback(step_offset + done, np.asarray(x[0]), terms)
    jax.block_until_ready(x)
    run_seconds = time.perf_counter() - t0
    final = {k: float(v) for k, v in terms_fn(x, problem.consts).items()}
    image = np.clip(np.asarray(x[0]), 0.0, 1.0)
    if not np.isfinite(final["total"]):
        raise NstjaxError("optimization diverged (loss is not finite): lower lr or the loss weights")
    return GatysResult(image, initial, final, settings.steps, run_seconds, compile_seconds, history)


@dataclasses.dataclass
class Level:
    """One pyramid level: output long side and optimizer steps."""

    size: int
    steps: int


def make_levels(size: int, pyramid: Sequence[int], steps: int | Sequence[int]) -> list[Level]:
    """Validate the coarse-to-fine schedule: strictly increasing sizes ending at `size`."""
    sizes = [int(s) for s in pyramid] + [int(size)]
    for s in sizes:
        if s <= 0:
            raise NstjaxError(f"size/pyramid: image sizes must be positive, got {s}")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise NstjaxError(f"pyramid: sizes must increase up to size={size}, got {sizes}")
    if isinstance(steps, (int, np.integer)):
        per = [int(steps)] * len(sizes)
    else:
        per = [int(s) for s in steps]
        if len(per) != len(sizes):
            raise NstjaxError(f"steps: {len(per)} values for {len(sizes)} pyramid levels {sizes}")
    if any(s < 0 for s in per):
        raise NstjaxError(f"steps: must be >= 0, got {per}")
    return [Level(a, b) for a, b in zip(sizes, per)]


def stylize_pyramid(vgg: VGG19, content: np.ndarray, styles: Sequence[np.ndarray], levels: Sequence[Level],
                    settings: GatysSettings, *, init: str | np.ndarray = "content", blend=None,
                    style_scale: float = 1.0, seed: int = 0,
                    callback: Callback | None = None) -> tuple[np.ndarray, list[GatysResult]]:
    """Coarse-to-fine Gatys: each level starts from the previous result, upsampled.

    `content` and `styles` are full-resolution arrays; each level resizes them (the style to
    `style_scale` times the level's long side), so large outputs get their global structure
    cheaply at low resolution and only refine texture at high resolution.
    """
    check_pyramid(settings.loss, content, styles, levels, style_scale)
    results: list[GatysResult] = []
    x: np.ndarray | None = None
    offset = 0
    for level in levels:
        c_hw, s_hws = _level_shapes(content.shape[:2], [s.shape[:2] for s in styles], level.size, style_scale)
        c = resize(content, c_hw)
        ss = [resize(s, hw) for s, hw in zip(styles, s_hws)]
        if x is not None:
            start = resize(x, c.shape[:2])
        elif isinstance(init, np.ndarray):
            start = resize(init, c.shape[:2])
        elif init == "content":
            start = c
        elif init == "noise":
            rng = np.random.default_rng(seed)
            start = np.clip(0.5 + 0.15 * rng.standard_normal(c.shape), 0.0, 1.0).astype(np.float32)
        else:
            raise NstjaxError(f"init: expected 'content', 'noise' or an image path, got {init!r}")
        res = run_gatys(vgg, c, ss, dataclasses.replace(settings, steps=level.steps), init=start,
                        blend=blend, callback=callback, step_offset=offset)
        offset += level.steps
        results.append(res)
        x = res.image
    assert x is not None
    return x, results
