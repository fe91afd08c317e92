"""Winograd F(4x4, 3x3) and the frozen (input-gradient-only) convolutions of the loss network."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax.ops import winograd
from nstjax.errors import NstjaxError
from nstjax.image import load_resized
from nstjax.vgg import FROZEN_KINDS, FrozenConv, conv_input_sizes, frozen_kernels, frozen_conv, load_vgg19


def direct(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("out_major", [False, True])
@pytest.mark.parametrize("shape", [(2, 13, 22, 8, 16), (1, 4, 4, 3, 5), (1, 1, 5, 4, 4), (3, 17, 9, 16, 8),
                                   (1, 48, 44, 8, 8)])  # the last one has >= OUT_MAJOR_MAX_TILES tiles
def test_winograd_equals_direct_convolution(shape, out_major):
    b, h, w, ci, co = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    k = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
    ref = direct(x, jnp.asarray(k))
    u = winograd.kernel_transform(k, out_major=out_major)
    assert u.shape == ((36, co, ci) if out_major else (36, ci, co))
    out = jax.jit(winograd.conv3x3, static_argnums=2)(x, jnp.asarray(u), out_major)
    assert out.shape == ref.shape
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    assert err < 1e-5, err


@pytest.mark.parametrize("kind", FROZEN_KINDS)
def test_frozen_conv_gradient_equals_autodiff(kind):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 11, 14, 32)), jnp.float32)
    k = rng.standard_normal((3, 3, 32, 24)).astype(np.float32)
    r = jnp.asarray(rng.standard_normal((2, 11, 14, 24)), jnp.float32)
    k_t = np.ascontiguousarray(np.swapaxes(k[::-1, ::-1], 2, 3))
    if kind != "direct":
        k_f, k_t = (winograd.kernel_transform(a, out_major=kind == "winograd_out_major") for a in (k, k_t))
    else:
        k_f = k
    fz = FrozenConv(jnp.asarray(k_f), jnp.asarray(k_t), kind)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.tanh(direct(x, jnp.asarray(k))) * r))(x)
    # The FrozenConv goes through jit as an argument: its kind is static, its kernels are not.
    g = jax.jit(jax.grad(lambda x, fz: jnp.sum(jnp.tanh(frozen_conv(x, fz.fwd, fz.bwd, fz.kind)) * r)))(x, fz)
    err = float(jnp.abs(g - g_ref).max() / jnp.abs(g_ref).max())
    assert err < (1e-4 if kind != "direct" else 1e-5), err  # F(4x4, 3x3) rounds slightly more


@pytest.fixture(scope="module")
def photo(assets):
    return jnp.asarray(load_resized(assets / "data/content/chicago.jpg", 96))[None]


def test_frozen_vgg_matches_plain_vgg_on_a_real_photo(assets, photo):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1"]
    plain = load_vgg19(assets_dir=str(assets), conv_impl="xla")
    assert frozen_kernels(plain, layers) is None
    ref = plain(photo, layers)
    fast = load_vgg19(assets_dir=str(assets), conv_impl="winograd")
    frozen = frozen_kernels(fast, layers, input_shape=photo.shape[:3])
    again = frozen_kernels(fast, layers, input_shape=photo.shape[:3])
    assert all(again[k] is frozen[k] for k in frozen)  # computed once, reused (e.g. by pyramid levels)
    # Winograd where the layer has >= 128 channels, direct convolutions on the 64-channel ones;
    # at 64x96 px every Winograd layer has < OUT_MAJOR_MAX_TILES tiles (conv2_1: 8x12 = 96 tiles).
    assert frozen["conv1_2"].kind == "direct" and frozen["conv1_2"].fwd.shape == (3, 3, 64, 64)
    assert frozen["conv2_1"].kind == "winograd_out_major" and frozen["conv2_1"].fwd.shape == (36, 128, 64)
    assert "conv5_2" not in frozen  # nothing past the deepest requested layer
    # Without a shape (the trainer's batches) the default layout; a layout change replaces the cached one.
    default = frozen_kernels(fast, layers)
    assert default["conv2_1"].kind == "winograd" and default["conv2_1"].fwd.shape == (36, 64, 128)
    assert default["conv1_2"] is frozen["conv1_2"]
    # Gradient of a style-like objective w.r.t. the image: same direction and size.
    def objective(vgg, fz):
        return lambda x: sum(jnp.mean(f ** 2) for f in vgg(x, layers, fz).values())

    g_ref = jax.grad(objective(plain, None))(photo)
    for fz in (frozen, default):  # both Winograd layouts
        feats = jax.jit(lambda x, fz: fast(x, layers, fz))(photo, fz)
        for name in layers:
            err = float(jnp.abs(feats[name] - ref[name]).max() / jnp.abs(ref[name]).max())
            assert err < 1e-4, (name, err)
        g = jax.jit(jax.grad(objective(fast, fz)))(photo)
        err = float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref))
        assert err < 1e-3, err  # measured 2.5e-4 through 13 layers forward and back


def test_conv_input_sizes_follow_the_pools():
    # A 256 px Gatys image (170x256): conv4_x at 21x32 and conv5_1 at 10x16, i.e. 48 and 12 tiles.
    sizes = conv_input_sizes(170, 256, ["conv1_2", "conv2_1", "conv4_2", "conv5_1"])
    assert sizes == {"conv1_2": (170, 256), "conv2_1": (85, 128), "conv4_2": (21, 32), "conv5_1": (10, 16)}
    assert winograd.tile_count(1, *sizes["conv4_2"]) == 48 and winograd.tile_count(1, *sizes["conv5_1"]) == 12


def test_unknown_conv_impl_is_an_error(assets):
    with pytest.raises(NstjaxError, match="vgg.conv_impl"):
        load_vgg19(assets_dir=str(assets), conv_impl="fft")
