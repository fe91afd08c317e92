"""Judging stylizations where users look at them: the perceptual losses at the output's own size.

A network trained on small crops is run on 512-1024 px photos, and its loss on the training
crops says little about how it looks there. `Judge` scores (photo, output) pairs at any size
with a `PerceptualLoss`, the style targets taken from the style image(s) resized to
`style_scale` times the output's long side: the convention of the Gatys optimizer, so a Gatys
result of the same photo at the same size is judged by the same numbers and shows what the
loss can reach. Every report includes the `palette` term (the colours' distance to the
style's) whatever its weight. `edge_correlation` checks that the layout of the scene is kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from nstjax.errors import NstjaxError
from nstjax.image import fit_size, resize
from nstjax.losses import Features
from nstjax.perceptual import Encoder, PerceptualLoss, Targets
from nstjax.vgg import min_input_side


def square_crop(img: np.ndarray, side: int) -> np.ndarray:
    """Short side resized to `side`, then the centre `side` x `side` square."""
    h, w = img.shape[:2]
    s = side / min(h, w)
    img = resize(img, (max(side, round(h * s)), max(side, round(w * s))))
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return img[y : y + side, x : x + side]


def at_long_side(img: np.ndarray, side: int, square: bool) -> np.ndarray:
    """A photo as users run it at `side` px: long side `side` (or a centred square of it)."""
    return square_crop(img, side) if square else resize(img, fit_size(img.shape[:2], side))


def edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the grey image (central differences)."""
    g = np.asarray(img, np.float32).mean(-1)
    gx, gy = np.zeros_like(g), np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1] = g[2:] - g[:-2]
    return np.hypot(gx, gy)


def edge_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two images' edge maps (b resized to a's shape first)."""
    if a.shape[:2] != b.shape[:2]:
        b = resize(b, a.shape[:2])
    ea, eb = edges(a).ravel(), edges(b).ravel()
    if ea.std() == 0 or eb.std() == 0:
        return 0.0
    return float(np.corrcoef(ea, eb)[0, 1])


def layout_scores(photos: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean edge correlation of each output with its own photo, and with the next photo: a
    stylization keeps the scene when the first is far above the second."""
    own = [edge_correlation(y, x) for x, y in zip(photos, outputs)]
    n = len(photos)
    other = [edge_correlation(outputs[i], photos[(i + 1) % n]) for i in range(n)] if n > 1 else [0.0]
    return {"edge_corr_own": float(np.mean(own)), "edge_corr_other": float(np.mean(other))}


class Judge:
    """Scores outputs against their photos with one `PerceptualLoss` at any image size.

    `encoder_params` (default: the encoder's own) and `sharding` let a trainer pass the copies
    it already holds on its mesh; every compiled function is compiled once per image shape.
    """

    def __init__(self, encoder: Encoder, loss: PerceptualLoss, styles: Sequence[np.ndarray],
                 blend: Sequence[float] | None = None, *, style_scale: float = 1.0,
                 encoder_params: Any = None, sharding: Any = None) -> None:
        if not style_scale > 0:
            raise NstjaxError(f"style_scale: must be > 0, got {style_scale}")
        self.encoder, self.loss = encoder, loss.reporting("palette")
        self.styles, self.blend, self.style_scale = list(styles), blend, float(style_scale)
        self.params = encoder.params if encoder_params is None else encoder_params
        self.sharding = sharding
        self._grams: dict[int, Features] = {}
        self._terms = jax.jit(self._terms_fn)
        self._photo_terms = jax.jit(self._photo_terms_fn)

    def style_side(self, side: int) -> int:
        return max(16, round(self.style_scale * side))

    def grams(self, side: int) -> Features:
        """Style targets for outputs of long side `side` (computed once per side)."""
        if side not in self._grams:
            need = min_input_side(self.loss.layers)
            styles = [resize(s, fit_size(s.shape[:2], self.style_side(side))) for s in self.styles]
            for s in styles:
                if min(s.shape[:2]) < need:
                    raise NstjaxError(f"style image at {s.shape[1]}x{s.shape[0]} px (for {side} px outputs) is too "
                                      f"small for the loss layers (both sides >= {need} px); judge at a larger size")
            grams = self.loss.style_targets(self.encoder, styles, self.blend)
            self._grams[side] = grams if self.sharding is None else jax.device_put(grams, self.sharding)
        return self._grams[side]

    def _terms_fn(self, params, grams, x, y):
        names = self.loss.content_names
        fx = self.encoder(params, x, names) if names else {}
        return self.loss.evaluate(y, self.encoder(params, y, self.loss.layers), Targets(fx, grams))

    def _photo_terms_fn(self, params, grams, x):
        fx = self.encoder(params, x, self.loss.layers)
        return self.loss.evaluate(x, fx, Targets(fx, grams))

    def _put(self, img: np.ndarray) -> jax.Array:
        x = np.asarray(img, np.float32)[None]
        return jax.device_put(x, self.sharding) if self.sharding is not None else jax.numpy.asarray(x)

    def score(self, photo: np.ndarray, output: np.ndarray) -> dict[str, float]:
        """Loss terms (and the weighted total) of one output against its (H, W, 3) photo."""
        need = min_input_side(self.loss.layers)
        if min(photo.shape[:2]) < need:
            raise NstjaxError(f"photo at {photo.shape[1]}x{photo.shape[0]} px is too small for the loss layers "
                              f"(both sides >= {need} px)")
        grams = self.grams(max(photo.shape[:2]))
        out = np.clip(np.asarray(output, np.float32), 0.0, 1.0)
        terms = self._terms(self.params, grams, self._put(photo), self._put(out))
        return {k: float(v) for k, v in jax.device_get(terms).items()}

    def photo_terms(self, photo: np.ndarray) -> dict[str, float]:
        """The photo's own loss terms (style, palette): the baselines a stylization must beat."""
        grams = self.grams(max(photo.shape[:2]))
        terms = self._photo_terms(self.params, grams, self._put(photo))
        return {k: float(v) for k, v in jax.device_get(terms).items()}

    def photo_style(self, photo: np.ndarray) -> float:
        return self.photo_terms(photo)["style"]

    def report(self, photos: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict[str, float]:
        """Mean terms over photos, the photos' own style and palette losses, the style loss's
        reduction and the layout."""
        if not photos or len(photos) != len(outputs):
            raise NstjaxError(f"judge: {len(photos)} photos for {len(outputs)} outputs")
        scores = [self.score(x, y) for x, y in zip(photos, outputs)]
        return summarise(photos, outputs, scores, [self.photo_terms(x) for x in photos])


def summarise(photos: Sequence[np.ndarray], outputs: Sequence[np.ndarray], scores: Sequence[dict[str, float]],
              own: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean terms over photos, the photos' own style/palette losses, the reduction, the layout."""
    out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    out["photo_style"] = float(np.mean([o["style"] for o in own]))
    out["photo_palette"] = float(np.mean([o["palette"] for o in own]))
    out["style_loss_reduction"] = out["photo_style"] / max(out["style"], 1e-30)
    return out | layout_scores(photos, outputs)


class StyleJudges:
    """The judge of a network of several styles: one `Judge` per style, photo i judged
    against style i mod num_styles (the style the trainer draws it in), one report for all."""

    def __init__(self, judges: Sequence[Judge]) -> None:
        self.judges = list(judges)

    def grams(self, side: int) -> list[Features]:
        return [j.grams(side) for j in self.judges]

    def report(self, photos: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict[str, float]:
        if not photos or len(photos) != len(outputs):
            raise NstjaxError(f"judge: {len(photos)} photos for {len(outputs)} outputs")
        judge = lambda i: self.judges[i % len(self.judges)]  # noqa: E731
        scores = [judge(i).score(x, y) for i, (x, y) in enumerate(zip(photos, outputs))]
        return summarise(photos, outputs, scores, [judge(i).photo_terms(x) for i, x in enumerate(photos)])
