"""The loss network: the real ImageNet VGG-19 weights, loaded and behaving like VGG."""
import numpy as np
import pytest

from nstjax.errors import NstjaxError
from nstjax.losses import gram
from nstjax.vgg import BLOCKS, CHANNELS, layer_order, load_vgg19, read_h5_weights


def test_registry_checksum_matches_shared_file(assets):
    from nstjax import assets as A

    path = A.resolve(A.VGG19_NAME, assets=str(assets), download=False)
    assert A.sha256_of(path) == A.REGISTRY[A.VGG19_NAME].sha256


def test_loaded_weights(vgg):
    assert float(vgg.convs["conv1_1"].bias[0]) == pytest.approx(0.7301776)
    cin = 3
    for b, (n, cout) in enumerate(zip(BLOCKS, CHANNELS), 1):
        for c in range(1, n + 1):
            assert vgg.convs[f"conv{b}_{c}"].kernel.shape == (3, 3, cin, cout)
            cin = cout
    n_params = sum(int(np.prod(c.kernel.shape)) + int(np.prod(c.bias.shape)) for c in vgg.convs.values())
    assert n_params == 20_024_384  # VGG-19 convolutional trunk


def test_features_of_a_real_photo(vgg, image):
    img = image("content/chicago.jpg", 128)
    feats = vgg(img[None], ["relu1_1", "relu3_1", "relu5_1", "pool4"])
    h, w = img.shape[:2]
    assert feats["relu1_1"].shape == (1, h, w, 64)
    assert feats["relu3_1"].shape == (1, h // 4, w // 4, 256)
    assert feats["pool4"].shape == (1, h // 16, w // 16, 512)
    for f in feats.values():
        assert np.isfinite(np.asarray(f)).all() and float(f.min()) >= 0.0
    # ImageNet features are sparse but alive: a real photo activates a fraction of relu5_1 units.
    active = float((feats["relu5_1"] > 0).mean())
    assert 0.02 < active < 0.7


def test_style_statistics_identify_the_painting(vgg, image):
    """Gram matrices of two halves of one painting are closer than those of two paintings."""
    a = image("styles/starry_night.jpg", 256)
    b = image("styles/mosaic.jpg", 256)
    h = min(a.shape[0], b.shape[0])
    a_left, a_right, b_left = a[:h, :128], a[:h, 128:256], b[:h, :128]
    g = {k: gram(vgg(x[None], ["relu3_1"])["relu3_1"]) for k, x in
         {"al": a_left, "ar": a_right, "bl": b_left}.items()}
    same = float(np.mean((g["al"] - g["ar"]) ** 2))
    diff = float(np.mean((g["al"] - g["bl"]) ** 2))
    assert same * 3 < diff


def test_avg_pooling_changes_deep_features(assets, vgg, image):
    avg = load_vgg19(assets_dir=str(assets), pooling="avg")
    img = image("content/amber.jpg", 64)[None]
    fm, fa = vgg(img, ["relu3_1"])["relu3_1"], avg(img, ["relu3_1"])["relu3_1"]
    assert fm.shape == fa.shape and not np.allclose(fm, fa)


def test_bad_inputs(tmp_path, assets):
    with pytest.raises(NstjaxError, match="unknown VGG-19 layer"):
        from nstjax.vgg import check_layers
        check_layers(["relu6_1"])
    bad = tmp_path / "w.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(NstjaxError, match="w.h5"):
        read_h5_weights(bad)
    with pytest.raises(NstjaxError, match="pooling"):
        load_vgg19(assets_dir=str(assets), pooling="min")
    assert layer_order()[0] == "conv1_1" and layer_order()[-1] == "relu5_4"
