"""The config schema: one typed dataclass per config node, checked once at the boundary.

`conf/` (Hydra YAML, shipped as `nstjax.conf`) holds every value; the dataclasses here hold
the types (Hydra refuses `steps=abc` while composing) and the value checks (`__post_init__`,
run when `load` turns a composed config into these objects). Library code receives these
typed objects, never a raw config. Registered in Hydra's ConfigStore as `<name>_schema` and
used as the first entry of each primary config's defaults list.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, List, Optional, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nstjax.errors import NstjaxError

T = TypeVar("T")
CONFIG_MODULE = "nstjax.conf"
OUTPUT_IMAGE_HINT = "use an image extension such as .png or .jpg"


# --------------------------------------------------------------------------- checks


def _positive(value: float, setting: str, minimum: float = 1) -> None:
    if value < minimum:
        raise NstjaxError(f"{setting} must be >= {minimum}, got {value}")


def _one_of(value: str, setting: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NstjaxError(f"{setting}: expected one of {', '.join(choices)}, got {value!r}")


def _finite(value: float, setting: str) -> None:
    if not math.isfinite(value):
        raise NstjaxError(f"{setting} must be a finite number, got {value}")


def as_list(value: Any) -> list:
    """A scalar or a list setting as a list (`style.image=a.jpg` or `style.image=[a.jpg,b.jpg]`)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --------------------------------------------------------------------------- shared groups


@dataclass
class StyleConfig:
    name: str = MISSING
    image: Any = MISSING  # one path/asset name, or a list of them
    blend_weights: Optional[List[float]] = None
    multi: bool = False  # several images: one network for all of them, each its own style (not a blend)

    def __post_init__(self) -> None:
        self.image = [str(p) for p in as_list(self.image)]
        if not self.image:
            raise NstjaxError("style.image: no style image given")
        if self.multi:
            if len(self.image) < 2:
                raise NstjaxError("style.multi=true needs two or more style images in style.image")
            if self.blend_weights is not None:
                raise NstjaxError("style.blend_weights: a blend of styles and style.multi=true (one network, "
                                  "each image its own style) exclude each other; set one")
            names = self.names()
            if len(set(names)) != len(names):
                raise NstjaxError(f"style.image: style.multi=true names each style by its file name, and "
                                  f"these repeat: {names}")

    def names(self) -> list[str]:
        """Each style image's name: its file name without the extension."""
        return [Path(p).stem for p in self.image]


@dataclass
class LossConfig:
    """Perceptual loss: layers, per-layer weights, and `<term>_weight` per term of
    `nstjax.losses.TERMS` (a new term adds one such field)."""

    content_layers: List[str] = MISSING
    content_layer_weights: Optional[List[float]] = None
    style_layers: List[str] = MISSING
    style_layer_weights: Optional[List[float]] = None
    content_weight: float = MISSING
    style_weight: float = MISSING
    tv_weight: float = MISSING
    palette_weight: float = 0.0  # the style's colours (sliced Wasserstein in RGB); 0: off, no cost
    patch_palette_weight: float = 0.0  # the same on 4x4-averaged blocks: colours held over patches
    sw_style_weight: float = 0.0  # the style layers' whole feature distributions (sliced Wasserstein)
    moments_weight: float = 0.0  # the style layers' channel means and deviations (Huang & Belongie 2017)

    def perceptual(self):  # -> nstjax.perceptual.PerceptualLoss (validates layers and weights)
        from nstjax.perceptual import PerceptualLoss

        return PerceptualLoss.from_config(self)


@dataclass
class TrainLossConfig(LossConfig):
    style_size: Optional[int] = None  # style image long side for the Gram targets (None: as is)

    def __post_init__(self) -> None:
        if self.style_size is not None:
            _positive(self.style_size, "loss.style_size")


VGG_POOLING = ("max", "avg")
VGG_CONV_IMPLS = ("auto", "xla", "flipped", "winograd")


@dataclass
class VggConfig:
    weights: Optional[str] = None
    pooling: str = MISSING
    conv_impl: str = MISSING

    def __post_init__(self) -> None:
        _one_of(self.pooling, "vgg.pooling", VGG_POOLING)
        _one_of(self.conv_impl, "vgg.conv_impl", VGG_CONV_IMPLS)


@dataclass
class RuntimeConfig:
    compilation_cache: Optional[str] = None
    cache_min_compile_seconds: float = MISSING
    host_malloc_cache: bool = MISSING
    gpu_triton_gemm: Optional[bool] = None
    cpu_dots: str = "auto"

    def __post_init__(self) -> None:
        from nstjax.ops.cpu_kernels import CHOICES

        _one_of(self.cpu_dots, "runtime.cpu_dots", CHOICES)


WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    mode: str = MISSING
    project: str = "nstjax"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of(self.mode, "wandb.mode", WANDB_MODES)


# --------------------------------------------------------------------------- stylize


@dataclass
class ContentConfig:
    image: str = MISSING


COLOR_MODES = ("none", "luminance", "histogram")


@dataclass
class StylizeConfig:
    content: ContentConfig = MISSING
    style: StyleConfig = MISSING
    output: str = MISSING
    size: int = MISSING
    pyramid: List[int] = MISSING
    steps: Any = MISSING  # an int, or one per pyramid level
    optimizer: str = MISSING
    lr: float = MISSING
    lbfgs_memory: int = MISSING
    init: str = MISSING
    seed: int = MISSING
    style_scale: float = MISSING
    color: str = MISSING
    log_every: int = MISSING
    image_every: int = MISSING
    loss: LossConfig = MISSING
    vgg: VggConfig = MISSING
    runtime: RuntimeConfig = MISSING
    wandb: WandbConfig = MISSING
    assets_dir: Optional[str] = None

    def __post_init__(self) -> None:
        from nstjax.image import OUTPUT_EXTENSIONS

        if not any(self.output.lower().endswith(e) for e in OUTPUT_EXTENSIONS):
            raise NstjaxError(f"output {self.output!r}: {OUTPUT_IMAGE_HINT}")
        _one_of(self.color, "color", COLOR_MODES)
        steps = as_list(self.steps)
        if not steps or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise NstjaxError(f"steps: expected an integer or a list of integers, got {self.steps!r}")
        self.steps = self.steps if isinstance(self.steps, int) else steps
        _positive(self.image_every, "image_every", 0)

    def gatys(self):  # -> nstjax.gatys.GatysSettings, validated
        from nstjax.gatys import GatysSettings

        s = GatysSettings(loss=self.loss.perceptual(), optimizer=self.optimizer, lr=self.lr,
                          lbfgs_memory=self.lbfgs_memory, steps=0, log_every=self.log_every)
        s.validate()
        return s


# --------------------------------------------------------------------------- train


@dataclass
class DataConfig:
    """A training data source (`data=folder` or `data=coco`; `nstjax.training.data.SOURCES`)."""

    name: str = MISSING
    path: Optional[str] = None
    tfds_name: Optional[str] = None
    split: Optional[str] = None
    data_dir: Optional[str] = None
    val_path: Optional[str] = None  # None: hold out train.samples images of the training source
    size: int = MISSING
    resize: Optional[int] = None  # short side before the random crop; None: `size`
    workers: int = 0
    threads: int = 4
    prefetch: int = 2

    def __post_init__(self) -> None:
        for key, minimum in (("size", 1), ("workers", 0), ("threads", 0), ("prefetch", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise NstjaxError(f"data.{key} must be an integer >= {minimum}, got {value!r}")
        if self.resize is not None and self.resize < self.size:
            raise NstjaxError(f"data.resize={self.resize} is below data.size={self.size}: the short side must "
                              "hold a whole crop (null resizes to data.size)")


LR_SCHEDULES = ("constant", "cosine")
NONFINITE_POLICIES = ("skip", "rollback", "stop")


@dataclass
class TrainLoopConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    lr_schedule: str = MISSING
    warmup: int = MISSING
    clip_norm: Optional[float] = None
    seed: int = MISSING
    log_every: int = MISSING
    sample_every: int = MISSING
    samples: int = MISSING
    val_sizes: List[int] = dataclasses.field(default_factory=list)  # long sides the outputs are judged at
    save_every: int = MISSING
    keep_last: int = MISSING
    ckpt_dir: str = MISSING
    resume: bool = MISSING
    async_checkpoint: bool = MISSING
    nonfinite: str = MISSING  # skip | rollback | stop


    def __post_init__(self) -> None:
        _positive(self.steps, "train.steps")
        _positive(self.batch_size, "train.batch_size")
        if not self.lr > 0:
            raise NstjaxError(f"train.lr must be > 0, got {self.lr}")
        _finite(self.lr, "train.lr")
        _one_of(self.lr_schedule, "train.lr_schedule", LR_SCHEDULES)
        _one_of(self.nonfinite, "train.nonfinite", NONFINITE_POLICIES)
        for key in ("warmup", "log_every", "save_every", "sample_every"):
            _positive(getattr(self, key), f"train.{key}", 0)
        _positive(self.samples, "train.samples")
        for side in self.val_sizes:
            _positive(side, "train.val_sizes", 16)
        _positive(self.keep_last, "train.keep_last")


DISTRIBUTED_MODES = ("auto", "true", "false")


@dataclass
class DistributedConfig:
    """jax.distributed: `auto` starts it on a detected multi-process cluster (or when a
    coordinator is given); unset fields are auto-detected by JAX."""

    enabled: str = MISSING  # auto | true | false
    coordinator_address: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[List[int]] = None
    cpu_collectives: str = "gloo"  # cross-process collectives for CPU devices
    timeout_seconds: int = 300

    def __post_init__(self) -> None:
        self.enabled = str(self.enabled).lower()
        _one_of(self.enabled, "distributed.enabled", DISTRIBUTED_MODES)
        if self.num_processes is not None:
            _positive(self.num_processes, "distributed.num_processes")
        if self.process_id is not None and self.process_id < 0:
            raise NstjaxError(f"distributed.process_id must be >= 0, got {self.process_id}")


@dataclass
class TrainConfig:
    run_name: str = MISSING
    style: StyleConfig = MISSING
    model: Any = MISSING  # the network's own config, checked by its registry entry (nstjax.networks)
    data: DataConfig = MISSING
    loss: TrainLossConfig = MISSING
    train: TrainLoopConfig = MISSING
    vgg: VggConfig = MISSING
    runtime: RuntimeConfig = MISSING
    wandb: WandbConfig = MISSING
    distributed: DistributedConfig = MISSING
    assets_dir: Optional[str] = None

    def __post_init__(self) -> None:
        from nstjax.networks import NETWORKS, model_config

        self.model = model_config(self.model)
        if NETWORKS[self.model.name].any_style:  # learns from a list of styles; no per-style rows
            if not self.style.multi:
                raise NstjaxError(f"model.name={self.model.name} learns to stylize with any style image from "
                                  "several: set style.multi=true with two or more images (e.g. style=presets)")
            if getattr(self.model, "fixed_style", False):
                raise NstjaxError("model.fixed_style=true: a network with a style folded in does not train")
            if getattr(self.model, "content_target", None) == "adain" and list(self.loss.content_layers) != ["relu4_1"]:
                raise NstjaxError(f"model.content_target=adain judges content at relu4_1 only, but loss.content_layers="
                                  f"{list(self.loss.content_layers)}: set loss.content_layers=[relu4_1] (experiment=adain "
                                  "does) or model.content_target=photo")
            return
        n = len(self.style.image) if self.style.multi else 1
        have = int(getattr(self.model, "num_styles", 1))
        if n > 1:  # the network's style count and names come from the style list
            if not hasattr(self.model, "num_styles"):
                raise NstjaxError(f"style.multi=true: model.name={self.model.name} draws a single style")
            if have not in (1, n):
                raise NstjaxError(f"model.num_styles={have}, but style.multi=true lists {n} style images")
            self.model = model_config(dataclasses.asdict(self.model) | {"num_styles": n,
                                                                       "style_names": self.style.names()})
        elif have > 1:
            raise NstjaxError(f"model.num_styles={have}: a multi-style network trains with style.multi=true "
                              f"and {have} images in style.image")


# --------------------------------------------------------------------------- export / infer


def checkpoint_step(value: Any) -> int | str | None:
    """`step=latest|best|N` -> None (latest), "best" or N."""
    if value is None or str(value) == "latest":
        return None
    if str(value) == "best":
        return "best"
    try:
        n = int(str(value))
    except ValueError:
        raise NstjaxError(f"step: expected latest, best or a step number, got {value!r}") from None
    if n < 0:
        raise NstjaxError(f"step: must be >= 0, got {n}")
    return n


@dataclass
class ExportConfig:
    checkpoint: Optional[str] = None
    step: Optional[str] = None  # latest | best | N (checkpoint directories)
    output: Optional[str] = None
    format: str = MISSING
    platforms: Optional[List[str]] = None
    params_dtype: str = "float32"  # float16 halves an .npz artifact; loaded back as float32
    model_style: Any = None  # multi-style networks: a style's name/index or a mix {name: weight}; None: all (params)
    runtime: RuntimeConfig = MISSING

    def __post_init__(self) -> None:
        self.step = checkpoint_step(self.step)
        _one_of(self.params_dtype, "params_dtype", ("float32", "float16"))
        if not self.checkpoint:
            raise NstjaxError("checkpoint: not set; pass checkpoint=runs/<run_name>/checkpoints")
        if not self.output:
            raise NstjaxError("output: not set; pass output=NAME.nstjax.npz (NAME.onnx with format=onnx)")
        if self.platforms is not None:
            self.platforms = [str(p).lower() for p in self.platforms] or None
            bad = [p for p in self.platforms or [] if p not in ("cpu", "cuda", "rocm", "tpu")]
            if bad:
                raise NstjaxError(f"platforms: unknown {bad}; choose from cpu, cuda, rocm, tpu")


INFER_COLOR_MODES = ("none", "luminance")
INFER_DTYPES = ("auto", "model", "float32", "bfloat16", "float16")  # compute dtypes (serving.loading.compute_dtype)


@dataclass
class InferConfig:
    model_path: Optional[str] = None
    step: Optional[str] = None  # latest | best | N (checkpoint directories)
    input: Optional[str] = None
    output: Optional[str] = None
    size: Optional[int] = None
    net_size: Optional[int] = None  # long side the network runs at; outputs resized back (stroke scale)
    batch: int = MISSING
    color: str = MISSING
    fps: Optional[float] = None
    stablehlo: bool = MISSING
    dtype: str = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU) | model | float32 | bfloat16 | float16
    alpha: float = MISSING  # style strength: 1 the network's output, 0 the photo
    tile: Any = None  # overlapping tiles of this many px, or "auto" (from memory_budget); None: whole images
    memory_budget: Optional[float] = None  # MB for tile=auto; None: $NSTJAX_MEMORY_BUDGET, else half the free memory
    start: float = 0.0  # video: first second to stylize
    duration: Optional[float] = None  # video: seconds to stylize from `start` (None: to the end)
    overlap: int = 64  # tile overlap, blended with feathered weights
    overwrite: bool = MISSING  # folder outputs that exist are skipped unless true
    model_style: Any = None  # multi-style networks: a style's name or index, or a mix {name: weight}
    runtime: Optional[RuntimeConfig] = None

    def __post_init__(self) -> None:
        self.step = checkpoint_step(self.step)
        for key, hint in (("model_path", "an artifact from nstjax.export or runs/<run_name>/checkpoints"),
                          ("input", "an image, a directory, an animated GIF or a video"),
                          ("output", "an image file, a directory, or an animation/video file")):
            if getattr(self, key) in (None, ""):
                raise NstjaxError(f"{key}: not set; pass {key}=PATH ({hint})")
        if self.size is not None and self.size < 1:
            raise NstjaxError(f"size: expected a positive long side in pixels or null, got {self.size!r}")
        if self.net_size is not None and self.net_size < 16:
            raise NstjaxError(f"net_size: expected a long side of at least 16 px or null, got {self.net_size!r}")
        if self.batch < 1:
            raise NstjaxError(f"batch: expected a positive integer, got {self.batch!r}")
        _one_of(self.color, "color", INFER_COLOR_MODES)
        _one_of(self.dtype, "dtype", INFER_DTYPES)
        if self.tile is not None and self.tile != "auto":
            try:
                self.tile = int(self.tile)
            except (TypeError, ValueError):
                raise NstjaxError(f"tile: expected a tile size in px, auto or null, got {self.tile!r}") from None
            if self.tile < 16 or self.tile <= 2 * self.overlap:
                raise NstjaxError(f"tile={self.tile}, overlap={self.overlap}: need tile >= 16 and tile > 2 * overlap >= 0")
        if self.overlap < 0:
            raise NstjaxError(f"overlap: expected px >= 0, got {self.overlap}")
        if self.memory_budget is not None and not (self.memory_budget > 0 and math.isfinite(self.memory_budget)):
            raise NstjaxError(f"memory_budget: expected a positive number of MB or null, got {self.memory_budget!r}")
        if self.start < 0 or (self.duration is not None and not self.duration > 0):
            raise NstjaxError(f"start={self.start}, duration={self.duration}: need start >= 0 and duration > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise NstjaxError(f"alpha: the style strength must be in [0, 1], got {self.alpha}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise NstjaxError(f"fps: expected a positive number or null, got {self.fps!r}")


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvalPhotosConfig:
    path: Optional[str] = None  # a photo or a folder of photos (recursive)
    limit: Optional[int] = None  # the first N photos (sorted by name)

    def __post_init__(self) -> None:
        if not self.path:
            raise NstjaxError("data.path: not set; pass data.path=PHOTO_OR_FOLDER")
        if self.limit is not None:
            _positive(self.limit, "data.limit")


GATYS_OPTIMIZERS = ("lbfgs", "adam")


@dataclass
class EvaluateConfig:
    model_path: Optional[str] = None
    step: Optional[str] = None  # latest | best | N (checkpoint directories)
    data: EvalPhotosConfig = MISSING
    sizes: List[int] = MISSING  # long sides the outputs are judged at
    square: bool = MISSING  # centre square crops (as training validation) or the photos' own aspect
    net_size: Optional[int] = None  # the network runs at this long side, outputs resized to each size (as infer)
    style_scale: float = MISSING  # style targets from the style image at style_scale x the long side
    style: Optional[StyleConfig] = None  # None: the style the model was trained on
    model_style: Any = None  # multi-style networks: the style (name/index/mix {name: weight}) judged
    loss: Optional[TrainLossConfig] = None
    loss_from_model: bool = MISSING  # judge with the model's own training loss and VGG pooling, if recorded
    gatys_steps: int = MISSING  # > 0: also optimize each photo with Gatys on the same loss (the reference)
    gatys_optimizer: str = MISSING
    output: Optional[str] = None  # JSON report
    images: Optional[str] = None  # directory for photo | network | Gatys strips
    vgg: VggConfig = MISSING
    runtime: Optional[RuntimeConfig] = None
    assets_dir: Optional[str] = None

    def __post_init__(self) -> None:
        self.step = checkpoint_step(self.step)
        if not self.model_path:
            raise NstjaxError("model_path: not set; pass model_path=ARTIFACT|CHECKPOINT_DIR|.pth")
        if not self.sizes:
            raise NstjaxError("sizes: give at least one long side, e.g. sizes=[512,1024]")
        for side in self.sizes:
            _positive(side, "sizes", 16)
        if self.net_size is not None:
            _positive(self.net_size, "net_size", 16)
        if not self.style_scale > 0:
            raise NstjaxError(f"style_scale must be > 0, got {self.style_scale}")
        _positive(self.gatys_steps, "gatys_steps", 0)
        _one_of(self.gatys_optimizer, "gatys_optimizer", GATYS_OPTIMIZERS)
        if self.output and not self.output.lower().endswith(".json"):
            raise NstjaxError(f"output {self.output!r}: the report is JSON; use a name ending in .json")


SCHEMAS: dict[str, type] = {"stylize": StylizeConfig, "train": TrainConfig, "export": ExportConfig,
                            "infer": InferConfig, "evaluate": EvaluateConfig}


# --------------------------------------------------------------------------- loading


# Brackets of list overrides become parentheses: Orbax cannot checkpoint under a glob character
# (training/checkpoint.py), and a '/' in a value would nest folders (or escape the sweep dir).
_FOLDER_SAFE = str.maketrans({"[": "(", "]": ")", "*": "_", "?": "_", "/": "_", "\\": "_"})


def folder_name(overrides: str) -> str:
    """Hydra's override string (e.g. ``loss.style_layer_weights=[1000,10,10,1],model.width=0.25``)
    -> the same text, safe as one folder name for checkpoints."""
    return str(overrides).translate(_FOLDER_SAFE)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent); the YAML files name them."""
    from hydra.core.config_store import ConfigStore

    # ${nstjax.assets:data/photos/train}: a path in the assets dir ($NSTJAX_ASSETS), or null.
    OmegaConf.register_new_resolver(
        "nstjax.assets", lambda sub: str(Path(os.environ["NSTJAX_ASSETS"]).expanduser() / sub)
        if os.environ.get("NSTJAX_ASSETS") else None, replace=True)
    # ${nstjax.folder:${hydra.job.override_dirname}}: a sweep job's overrides as one folder name
    OmegaConf.register_new_resolver("nstjax.folder", folder_name, replace=True)
    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)


def _flat(e: BaseException) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return " ".join(line.strip() for line in str(msg).splitlines() if line.strip())


def load(schema: type[T], values: Mapping[str, Any] | DictConfig) -> T:
    """Composed (or plain) config values -> the checked, typed `schema` object.

    Wrong types, missing values and bad values all become one NstjaxError line.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]  # runs __post_init__ checks
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise NstjaxError(f"{key}: {_flat(e)}" if key else _flat(e)) from None


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the CLIs do (for tests, notebooks and the README's examples).

    Interpolations that need a running Hydra job (`${hydra:...}`) stay unresolved.
    """
    from hydra import compose as hydra_compose, initialize_config_module

    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def to_dict(settings: Any) -> dict[str, Any]:
    """A settings object as plain JSON-able data (what checkpoints, artifacts and W&B store)."""
    return dataclasses.asdict(settings)
