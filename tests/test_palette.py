"""The palette term: the colours of an image against the style image's, as the sliced Wasserstein
distance in RGB, computed without a sort and used by Gatys and the judge like any term."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import losses
from nstjax.gatys import GatysSettings, run_gatys
from nstjax.perceptual import Encoder, PerceptualLoss


@pytest.fixture(scope="module")
def photo(image):
    return image("content/chicago.jpg", 96)


@pytest.fixture(scope="module")
def style(image):
    return image("styles/mosaic.jpg", 256)


def sorted_swd(img: jax.Array, quantiles: jax.Array) -> jax.Array:
    """The textbook definition: sort each projection, compare with the style's quantile function."""
    p = img.reshape(-1, 3) @ jnp.asarray(255.0 * losses.PALETTE_DIRECTIONS.T)
    n, q = p.shape[0], quantiles.shape[0]
    at = jax.vmap(lambda col: jnp.interp((jnp.arange(n) + 0.5) / n, (jnp.arange(q) + 0.5) / q, col), 1, 1)
    return jnp.mean(jnp.square(jnp.sort(p, axis=0) - at(quantiles)))


def test_palette_loss_is_the_sliced_wasserstein_distance(photo, style):
    q = jnp.asarray(losses.palette_quantiles(style))
    x = jnp.asarray(photo)[None]
    got, want = float(losses.palette_loss(x, q)), float(sorted_swd(x[0], q))
    assert want > 100  # a blue-sky photo is far from the stained glass's creams
    assert got == pytest.approx(want, rel=0.02)
    g = jax.grad(lambda x: losses.palette_loss(x, q))(x)
    g_sorted = jax.grad(lambda x: sorted_swd(x[0], q))(x)
    cos = float(jnp.sum(g * g_sorted) / (jnp.linalg.norm(g) * jnp.linalg.norm(g_sorted)))
    assert cos > 0.99
    # The style against its own colours: nothing left to move.
    assert float(losses.palette_loss(jnp.asarray(style)[None], q)) < 1e-3 * want


def test_palette_targets_come_with_the_style_targets_only_when_used(vgg, photo, style, image):
    plain = PerceptualLoss(style_layers={"relu1_1": 1.0})
    enc = Encoder(vgg, plain.layers)
    assert "palette" not in plain.style_targets(enc, [style])
    reported = plain.reporting("palette")
    assert reported.weights["palette"] == 0.0 and reported.weights["style"] == plain.weights["style"]
    # Two styles blended: the style statistic is the blend of their quantile functions.
    other = image("styles/candy.jpg", 256)
    t = reported.style_targets(enc, [style, other], blend=[3.0, 1.0])
    want = 0.75 * losses.palette_quantiles(style) + 0.25 * losses.palette_quantiles(other)
    np.testing.assert_allclose(np.asarray(t["palette"]), want, rtol=1e-5, atol=1e-3)


def test_gatys_with_the_palette_takes_the_styles_colours(assets, vgg, photo, style):
    q = jnp.asarray(losses.palette_quantiles(style))
    base = {"content": 5.0, "style": 100.0, "tv": 1e-3}
    runs = {}
    for w in (0.0, 1e5):
        loss = PerceptualLoss(weights={**base, "palette": w}) if w else PerceptualLoss(weights=base).reporting("palette")
        runs[w] = run_gatys(vgg, photo, [style], GatysSettings(loss=loss, optimizer="adam", steps=30, log_every=30))
    assert "palette" in runs[0.0].final  # reported at weight 0, optimized only when weighted
    with_palette = float(losses.palette_loss(jnp.asarray(runs[1e5].image)[None], q))
    without = float(losses.palette_loss(jnp.asarray(runs[0.0].image)[None], q))
    assert runs[1e5].final["palette"] == pytest.approx(with_palette, rel=0.05)
    assert with_palette < 0.2 * without
    # ... at little cost to the rest of the objective.
    assert runs[1e5].final["content"] < 1.2 * runs[0.0].final["content"]


def test_patch_palette_ignores_one_pixel_fringes_and_sees_patches(photo, style):
    grey = np.full((64, 64, 3), 0.5, np.float32)
    q_grey = jnp.asarray(losses.patch_palette_quantiles(grey))
    # Red and cyan one-pixel stripes average to grey over a patch: far by pixels, on target by patches.
    stripes = np.zeros((1, 64, 64, 3), np.float32)
    stripes[:, :, ::2], stripes[:, :, 1::2] = (1.0, 0.0, 0.0), (0.0, 1.0, 1.0)
    assert float(losses.palette_loss(jnp.asarray(stripes), jnp.asarray(losses.palette_quantiles(grey)))) > 1000
    assert float(losses.patch_palette_loss(jnp.asarray(stripes), q_grey)) < 1e-3
    # Red and cyan in 16 px squares are colour held over patches: far by both.
    squares = np.zeros((1, 64, 64, 3), np.float32)
    cell = (np.arange(64)[:, None] // 16 + np.arange(64)[None] // 16) % 2 == 0
    squares[0][cell], squares[0][~cell] = (1.0, 0.0, 0.0), (0.0, 1.0, 1.0)
    assert float(losses.patch_palette_loss(jnp.asarray(squares), q_grey)) > 1000
    # On real images it is the palette of the blocks' averages, and the style is on its own target.
    q = jnp.asarray(losses.patch_palette_quantiles(style))
    x = jnp.asarray(photo)[None]
    h, w = photo.shape[0] // losses.PATCH_PX * losses.PATCH_PX, photo.shape[1] // losses.PATCH_PX * losses.PATCH_PX
    k = losses.PATCH_PX
    blocks = photo[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))
    assert float(losses.patch_palette_loss(x, q)) == pytest.approx(float(sorted_swd(jnp.asarray(blocks), q)), rel=0.02)
    s = jnp.asarray(style)[None]
    assert float(losses.patch_palette_loss(s, q)) < 1e-3 * float(losses.patch_palette_loss(x, q))
