"""Gatys optimization on real photos and paintings at small sizes: it must really stylize."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import color
from nstjax.errors import NstjaxError
from nstjax.gatys import GatysSettings, make_levels, run_gatys, stylize_pyramid
from nstjax.image import resize
from nstjax.losses import gram, tv_loss
from nstjax.perceptual import PerceptualLoss


@pytest.fixture(scope="module")
def content(image):
    return image("content/chicago.jpg", 64)


@pytest.fixture(scope="module")
def style(image):
    return image("styles/mosaic.jpg", 64)


def edges(img: np.ndarray) -> np.ndarray:
    g = img.mean(-1)
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1] = g[2:] - g[:-2]
    return np.hypot(gx, gy)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_losses_basic_math():
    f = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    g = np.asarray(gram(f))[0]
    x = f.reshape(6, 4)
    np.testing.assert_allclose(g, x.T @ x / 24, rtol=1e-5)
    assert float(tv_loss(np.full((1, 5, 5, 3), 0.3, np.float32))) == 0.0


@pytest.mark.parametrize("optimizer,steps", [("lbfgs", 40), ("adam", 60)])
def test_stylizes_real_photo(vgg, content, style, optimizer, steps):
    s = GatysSettings(optimizer=optimizer, steps=steps, log_every=20, lr=0.03)
    r = run_gatys(vgg, content, [style], s)
    assert r.image.shape == content.shape and 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert r.final["style"] < r.initial["style"] / 10
    assert r.final["total"] < r.initial["total"] / 5
    assert [h[0] for h in r.history] == list(range(steps))
    # The content's structure survives: output edges correlate with the photo's edges far more
    # than the painting's edges (resized to the same shape) do.
    e_out, e_content = edges(r.image), edges(content)
    e_style = edges(resize(style, content.shape[:2]))
    assert corr(e_out, e_content) > 0.3
    assert corr(e_out, e_content) > corr(e_style, e_content) + 0.2


def test_no_recompilation_between_chunks(vgg, content, style, caplog):
    s = GatysSettings(optimizer="adam", steps=9, log_every=3)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        run_gatys(vgg, content, [style], s)
        compiles_9 = sum("Compiling jit(step)" in r.getMessage() for r in caplog.records)
    assert compiles_9 == 1, [r.getMessage() for r in caplog.records]


def test_luminance_transfer_keeps_content_chroma(vgg, content, style):
    r = run_gatys(vgg, content, [style], GatysSettings(optimizer="adam", steps=10, log_every=10))
    out = color.transfer_luminance(r.image, content)
    yiq_out, yiq_c = color.rgb_to_yiq(out), color.rgb_to_yiq(content)
    # Equal up to gamut clipping of a few saturated pixels.
    assert np.abs(yiq_out[..., 1:] - yiq_c[..., 1:]).mean() < 0.003
    # ...while the stylized image's own chroma is clearly different from the photo's.
    assert np.abs(color.rgb_to_yiq(r.image)[..., 1:] - yiq_c[..., 1:]).mean() > 0.02


def test_histogram_matching_matches_mean_and_covariance(content, style):
    m = color.match_color_histogram(style, content)
    c = content.reshape(-1, 3)
    mm = m.reshape(-1, 3)
    np.testing.assert_allclose(mm.mean(0), c.mean(0), atol=0.02)
    # Covariance moves most of the way to the photo's (clipping to [0, 1] keeps it from exact).
    cov_c = np.cov(c, rowvar=False)
    err_matched = np.abs(np.cov(mm, rowvar=False) - cov_c).sum()
    err_before = np.abs(np.cov(style.reshape(-1, 3), rowvar=False) - cov_c).sum()
    assert err_matched < 0.35 * err_before


def test_pyramid_blend_and_noise_init(vgg, style, image):
    big = image("content/hoovertowernight.jpg", 200)
    other = image("styles/candy.jpg", 64)
    levels = make_levels(64, [32], [8, 4])
    img, results = stylize_pyramid(vgg, big, [style, other], levels,
                                   GatysSettings(optimizer="adam", log_every=4),
                                   init="noise", blend=[3, 1], seed=1)
    assert img.shape == (34, 64, 3)
    assert [r.image.shape[1] for r in results] == [32, 64]
    assert results[0].final["total"] < results[0].initial["total"]
    again, _ = stylize_pyramid(vgg, big, [style, other], levels, GatysSettings(optimizer="adam", log_every=4),
                               init="noise", blend=[3, 1], seed=1)
    np.testing.assert_allclose(img, again, atol=1e-5)  # seeded: reproducible


def test_bad_settings(vgg, content, style):
    with pytest.raises(NstjaxError, match="pyramid"):
        make_levels(64, [128], 10)
    with pytest.raises(NstjaxError, match="positive"):
        make_levels(0, [], 10)
    with pytest.raises(NstjaxError, match="steps"):
        make_levels(64, [32], [1, 2, 3])
    with pytest.raises(NstjaxError, match="blend_weights"):
        run_gatys(vgg, content, [style], GatysSettings(steps=1), blend=[1, 2])
    with pytest.raises(NstjaxError, match="optimizer"):
        run_gatys(vgg, content, [style], GatysSettings(optimizer="sgd"))
    with pytest.raises(NstjaxError, match="style_layers"):
        run_gatys(vgg, content, [style], GatysSettings(loss=PerceptualLoss(style_layers={"relu9_9": 1.0})))


def test_gram_hand_written_gradient_matches_autodiff():
    from nstjax.losses import _gram

    f = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 7, 5, 6)))
    target = jax.random.normal(jax.random.key(1), (2, 6, 6))
    want = jax.grad(lambda z: jnp.sum((_gram(z) - target) ** 2))(f)
    got = jax.grad(lambda z: jnp.sum((gram(z) - target) ** 2))(f)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    got16 = jax.grad(lambda z: jnp.sum((gram(z) - target) ** 2))(f.astype(jnp.bfloat16))
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(want))))
