"""Winograd F(4x4, 3x3) and the frozen (input-gradient-only) convolutions of the loss network."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import winograd
from nstjax.errors import NstjaxError
from nstjax.image import load_resized
from nstjax.vgg import FrozenConv, frozen_conv, frozen_kernels, load_vgg19


def direct(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 13, 22, 8, 16), (1, 4, 4, 3, 5), (1, 1, 5, 4, 4), (3, 17, 9, 16, 8),
                                   (1, 48, 44, 8, 8)])  # the last one has >= SMALL_TILE_COUNT tiles
def test_winograd_equals_direct_convolution(shape):
    b, h, w, ci, co = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    k = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
    ref = direct(x, jnp.asarray(k))
    out = winograd.conv3x3(x, jnp.asarray(winograd.kernel_transform(k)))
    assert out.shape == ref.shape
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    assert err < 1e-5, err


@pytest.mark.parametrize("use_winograd", [False, True])
def test_frozen_conv_gradient_equals_autodiff(use_winograd):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 11, 14, 32)), jnp.float32)
    k = rng.standard_normal((3, 3, 32, 24)).astype(np.float32)
    r = jnp.asarray(rng.standard_normal((2, 11, 14, 24)), jnp.float32)
    k_t = np.ascontiguousarray(np.swapaxes(k[::-1, ::-1], 2, 3))
    if use_winograd:
        fz = FrozenConv(jnp.asarray(winograd.kernel_transform(k)), jnp.asarray(winograd.kernel_transform(k_t)))
    else:
        fz = FrozenConv(jnp.asarray(k), jnp.asarray(k_t))
    g_ref = jax.grad(lambda x: jnp.sum(jnp.tanh(direct(x, jnp.asarray(k))) * r))(x)
    g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(frozen_conv(x, *fz)) * r)))(x)
    err = float(jnp.abs(g - g_ref).max() / jnp.abs(g_ref).max())
    assert err < (1e-4 if use_winograd else 1e-5), err  # F(4x4, 3x3) rounds slightly more


@pytest.fixture(scope="module")
def photo(assets):
    return jnp.asarray(load_resized(assets / "data/content/chicago.jpg", 96))[None]


def test_frozen_vgg_matches_plain_vgg_on_a_real_photo(assets, photo):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1"]
    plain = load_vgg19(assets_dir=str(assets), conv_impl="xla")
    assert frozen_kernels(plain, layers) is None
    ref = plain(photo, layers)
    fast = load_vgg19(assets_dir=str(assets), conv_impl="winograd")
    frozen = frozen_kernels(fast, layers)
    assert frozen_kernels(fast, layers) is frozen  # computed once, reused (e.g. by pyramid levels)
    # Winograd where the layer has >= 128 channels, direct convolutions on the 64-channel ones.
    assert frozen["conv1_2"].fwd.shape == (3, 3, 64, 64) and frozen["conv2_1"].fwd.shape == (36, 64, 128)
    assert "conv5_2" not in frozen  # nothing past the deepest requested layer
    feats = jax.jit(lambda x, fz: fast(x, layers, fz))(photo, frozen)
    for name in layers:
        err = float(jnp.abs(feats[name] - ref[name]).max() / jnp.abs(ref[name]).max())
        assert err < 1e-4, (name, err)

    # Gradient of a style-like objective w.r.t. the image: same direction and size.
    def objective(vgg, fz):
        return lambda x: sum(jnp.mean(f ** 2) for f in vgg(x, layers, fz).values())

    g_ref = jax.grad(objective(plain, None))(photo)
    g = jax.jit(jax.grad(objective(fast, frozen)))(photo)
    err = float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref))
    assert err < 1e-3, err  # measured 2.5e-4 through 13 layers forward and back


def test_unknown_conv_impl_is_an_error(assets):
    with pytest.raises(NstjaxError, match="vgg.conv_impl"):
        load_vgg19(assets_dir=str(assets), conv_impl="fft")
