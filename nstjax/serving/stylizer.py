"""A loaded network as a callable: `Stylizer(images) -> images`, one executable per shape."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nstjax import trees
from nstjax.errors import NstjaxError
from nstjax.ops.pad import Crop, pad_to_multiple, padded_size


class NetworkRunner:
    """The graph of a network built abstractly (no init compute) from its model config.

    Shared per model config (`runner_for`), together with its compiled executables, so loading
    the same network twice in one process (checkpoint, then artifact) compiles once.
    """

    def __init__(self, model_cfg: Any) -> None:
        import jax
        from flax import nnx

        from nstjax.networks import NETWORKS, build_network, model_config

        self.config = model_config(model_cfg)
        self.size_multiple = NETWORKS[self.config.name].size_multiple
        abstract = nnx.eval_shape(lambda: build_network(self.config, rngs=nnx.Rngs(0)))
        self.graphdef, state = nnx.split(abstract, nnx.Param)
        flat = trees.flatten(state, drop_variable_value=True)
        self.names = list(flat)
        self.specs = flat
        self.treedef = jax.tree.structure(state)
        self.executables: dict[tuple[int, ...], Any] = {}

    def check(self, flat: Mapping[str, Any], where: str, hint: str) -> None:
        problems = trees.mismatches(self.specs, flat, have_name=where, want_name=f"model {self.config.name}",
                                    check_dtype=True)
        if problems:
            raise NstjaxError(f"{where}: params do not match the model: {trees.summarise(problems)}; {hint}")

    def apply(self, flat: Mapping[str, Any], x: Any) -> Any:
        """Pure function of (flat params, NHWC batch): the network's forward pass."""
        import jax
        from flax import nnx

        state = jax.tree.unflatten(self.treedef, [flat[n] for n in self.names])
        return nnx.merge(self.graphdef, state)(x)

    def serve(self, flat: Mapping[str, Any], x: Any) -> Any:
        """`apply` as inference runs it: on CPU a batch goes through one image at a time inside
        the executable (XLA:CPU's convolutions run faster per image at batch 1; README,
        "Inference on CPU"); elsewhere the whole batch at once."""
        import jax

        if x.shape[0] == 1 or jax.default_backend() != "cpu":
            return self.apply(flat, x)
        return jax.lax.map(lambda xi: self.apply(flat, xi[None])[0], x)


_RUNNERS: dict[str, NetworkRunner] = {}


def runner_for(model_cfg: Any) -> NetworkRunner:
    import dataclasses

    from nstjax.networks import model_config

    cfg = model_config(model_cfg)
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if key not in _RUNNERS:
        _RUNNERS[key] = NetworkRunner(cfg)
    return _RUNNERS[key]


def _fingerprint(params: Mapping[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(params):
        v = np.asarray(params[name])
        h.update(f"{name}{v.shape}{v.dtype}".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


class Stylizer:
    """A loaded network: `stylizer(images)` maps (B, H, W, 3) or (H, W, 3) float32 in [0, 1]
    to the raw float32 network output of the same shape (not clipped, as the model returns it).

    One XLA executable per input shape, compiled on first use and cached (`compile_seconds`
    records how long each took); `compile` compiles ahead of timing. With `fold_params` on CPU
    the parameters are compiled into the executable as constants: XLA then computes everything
    that depends on them alone (the Winograd, phase and width-blocked kernels of
    nstjax/ops/) once at compile time instead of in every call. With `pad_multiple`, the
    function takes sides that are multiples of it (an exported function with symbolic sides)
    and the Stylizer reflect-pads on the host and crops back, as the network does itself.
    """

    def __init__(self, fn: Callable, params: Mapping[str, Any], *, meta: dict[str, Any], backend: str,
                 pad_multiple: int = 1, min_padded_side: int = 1, fold_params: bool = False,
                 cache: dict[tuple, Any] | None = None) -> None:
        import jax

        self._fold = fold_params and jax.default_backend() == "cpu"
        self._fn = jax.jit(fn)
        self._params = jax.device_put(dict(params))
        self._param_spec = {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in self._params.items()}
        # Executables with folded params are shared only between equal params.
        self._key_prefix = (_fingerprint(params),) if self._fold else ()
        self._cache: dict[tuple, Any] = {} if cache is None else cache
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.meta = meta
        self.backend = backend  # the artifact kind that runs: "params" (rebuilt flax model), "stablehlo", ...
        self.pad_multiple = pad_multiple
        self.min_padded_side = min_padded_side

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.meta.get("model", {}))

    def device_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the executable sees for an input batch shape (after host padding)."""
        b, h, w, c = shape
        return (b, padded_size(h, self.pad_multiple), padded_size(w, self.pad_multiple), c)

    def is_compiled(self, shape: tuple[int, ...]) -> bool:
        return self._key_prefix + self.device_shape(tuple(int(s) for s in shape)) in self._cache

    def compile(self, shape: tuple[int, ...]) -> Any:
        """The compiled executable for an input batch shape (taking the params first unless they
        are folded in; `_run` calls it either way)."""
        key = self.device_shape(tuple(int(s) for s in shape))
        exe = self._cache.get(self._key_prefix + key)
        if exe is None:
            t0 = time.perf_counter()
            exe = self._compile(key, shape)
            self.compile_seconds[key] = time.perf_counter() - t0
            self._cache[self._key_prefix + key] = exe
        return exe

    def _run(self, exe: Any, x: Any) -> Any:
        return exe(x) if self._fold else exe(self._params, x)

    def memory_analysis(self, shape: tuple[int, ...], keep: bool = True) -> Any:
        """XLA's memory analysis of the executable for `shape` (`tile=auto`); with `keep=False`
        a shape not compiled yet is compiled for this question only, not cached."""
        key = self.device_shape(tuple(int(s) for s in shape))
        if keep or self._key_prefix + key in self._cache:
            return self.compile(shape).memory_analysis()
        return self._compile(key, shape).memory_analysis()

    def _compile(self, key: tuple[int, ...], shape: tuple[int, ...]) -> Any:
        import jax

        if min(key[1:3]) < self.min_padded_side:
            raise NstjaxError(
                f"image {shape[1]}x{shape[2]} is too small for the {self.backend} artifact (both sides "
                f"must be >= {self.min_padded_side - self.pad_multiple + 1} px); use a larger size= "
                "or a params artifact")
        x = jax.ShapeDtypeStruct(key, np.float32)
        if self._fold:
            params = {n: np.asarray(v) for n, v in self._params.items()}
            lowered = jax.jit(lambda images: self._fn(params, images)).lower(x)
        else:
            lowered = self._fn.lower(self._param_spec, x)
        if jax.default_backend() == "cpu":
            from nstjax.ops.cpu_kernels import FLAG, forward_options

            try:
                return lowered.compile(forward_options())
            except jax.errors.JaxRuntimeError as e:  # a jaxlib without the option: its defaults
                if FLAG not in str(e):
                    raise
        return lowered.compile()

    def on_device(self, images: Any) -> Any:
        """The network on a (B, H, W, 3) float32 batch already on the device, the output left
        there (a jax.Array): no host copies, for pipelines that keep frames on the accelerator.
        `__call__` is this plus the copies (and host padding for padded artifacts)."""
        if self.pad_multiple > 1 and (images.shape[1] % self.pad_multiple or images.shape[2] % self.pad_multiple):
            raise NstjaxError(f"on_device: this {self.backend} artifact takes sides that are multiples of "
                              f"{self.pad_multiple}, got {images.shape[1]}x{images.shape[2]}; pad first or call it")
        return self._run(self.compile(images.shape), images)

    def __call__(self, images: Any) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] < 1 or x.shape[2] < 1:
            raise NstjaxError(f"expected images of shape (B, H, W, 3) or (H, W, 3), got {x.shape}")
        exe = self.compile(x.shape)
        crop: Crop | None = None
        if self.pad_multiple > 1:
            x, crop = pad_to_multiple(x, self.pad_multiple)
        y = np.asarray(self._run(exe, x))
        if crop is not None:
            y = crop(y)
        return y[0] if single else y
