"""The sliced Wasserstein style term (Heitz et al. 2021): the style layers' whole feature
distributions, matched without a sort, with targets computed from the style's VGG features."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import losses
from nstjax.gatys import GatysSettings, run_gatys
from nstjax.perceptual import Encoder, PerceptualLoss

LAYERS = ("relu1_1", "relu2_1", "relu3_1")


@pytest.fixture(scope="module")
def photo(image):
    return image("content/chicago.jpg", 128)


@pytest.fixture(scope="module")
def style(image):
    return image("styles/mosaic.jpg", 192)


def sorted_swd(f: jax.Array, quantiles: jax.Array) -> jax.Array:
    """The textbook definition: sort each projection, compare with the style's quantile function,
    in units of the style's variance along the directions."""
    c = f.shape[-1]
    p = f.reshape(-1, c) @ jnp.asarray(losses.sw_directions(c))
    n, q = p.shape[0], quantiles.shape[0]
    at = jax.vmap(lambda col: jnp.interp((jnp.arange(n) + 0.5) / n, (jnp.arange(q) + 0.5) / q, col), 1, 1)
    return jnp.mean(jnp.square(jnp.sort(p, axis=0) - at(quantiles))) / jnp.mean(jnp.var(quantiles, axis=0))


def test_sw_loss_is_the_sliced_wasserstein_distance_of_vgg_features(vgg, photo, style):
    enc = Encoder(vgg, LAYERS)
    q = {k: jnp.asarray(v) for k, v in losses.feature_quantiles(enc.encode(jnp.asarray(style)[None], LAYERS)).items()}
    x = jnp.asarray(photo)[None]
    for layer in LAYERS:
        f = enc.encode(x, LAYERS)[layer]
        assert q[layer].shape == (losses.SW_QUANTILES, f.shape[-1])
        got, want = float(losses.sliced_wasserstein_loss(f, q[layer])), float(sorted_swd(f[0], q[layer]))
        assert want > 0.05, layer  # a photo's features are far from the stained glass's
        assert got == pytest.approx(want, rel=0.05), layer
        g = jax.grad(lambda f: losses.sliced_wasserstein_loss(f, q[layer]))(f)
        g_sorted = jax.grad(lambda f: sorted_swd(f[0], q[layer]))(f)
        cos = float(jnp.sum(g * g_sorted) / (jnp.linalg.norm(g) * jnp.linalg.norm(g_sorted)))
        assert cos > 0.98, layer
        # The style against its own features: close to nothing left to move.
        own = enc.encode(jnp.asarray(style)[None], LAYERS)[layer]
        assert float(losses.sliced_wasserstein_loss(own, q[layer])) < 0.02 * want, layer


def test_sw_targets_come_from_the_style_features_blended(vgg, style, image):
    plain = PerceptualLoss(style_layers=dict.fromkeys(LAYERS, 1.0))
    enc = Encoder(vgg, plain.layers)
    assert "sw_style" not in plain.style_targets(enc, [style])
    used = PerceptualLoss(style_layers=dict.fromkeys(LAYERS, 1.0),
                          weights={**plain.weights, "sw_style": 10.0})
    other = image("styles/candy.jpg", 160)
    t = used.style_targets(enc, [style, other], blend=[3.0, 1.0])
    assert set(t["sw_style"]) == set(LAYERS)
    for k in LAYERS:
        qa = losses.feature_quantiles(enc.encode(jnp.asarray(style)[None], LAYERS))[k]
        qb = losses.feature_quantiles(enc.encode(jnp.asarray(other)[None], LAYERS))[k]
        np.testing.assert_allclose(np.asarray(t["sw_style"][k]), 0.75 * qa + 0.25 * qb, rtol=1e-4, atol=1e-2)
    # The Gram targets are what they were without the term.
    for k in LAYERS:
        np.testing.assert_allclose(np.asarray(t[k]), np.asarray(plain.style_targets(enc, [style, other], [3.0, 1.0])[k]),
                                   rtol=1e-6)


def test_gatys_with_the_sw_term_matches_the_feature_distributions(vgg, photo, style):
    base = {"content": 5.0, "style": 100.0, "tv": 1e-3}
    layers = dict.fromkeys(LAYERS, 1.0)
    runs = {}
    for w in (0.0, 1e8):
        loss = PerceptualLoss(style_layers=layers, weights={**base, "sw_style": w}) if w else \
            PerceptualLoss(style_layers=layers, weights=base).reporting("sw_style", "palette")
        if w:
            loss = loss.reporting("palette")
        runs[w] = run_gatys(vgg, photo, [style], GatysSettings(loss=loss, optimizer="adam", steps=40, log_every=40))
    plain, sw = runs[0.0].final, runs[1e8].final
    assert "sw_style" in plain  # reported at weight 0, optimized only when weighted
    assert sw["sw_style"] < 0.5 * plain["sw_style"]
    # Matching the whole distribution brings the style's colours, which the Gram matrices alone do not.
    assert sw["palette"] < 0.7 * plain["palette"]
    assert sw["content"] < 2.0 * plain["content"]
