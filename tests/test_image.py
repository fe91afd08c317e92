"""Image loading: every mode a user may hand us, and one clear error for bad files."""
import numpy as np
import pytest
from PIL import Image

from nstjax.errors import NstjaxError
from nstjax.image import fit_size, load_image, load_resized, save_image


@pytest.fixture(scope="module")
def photo(assets):
    return Image.open(assets / "data/content/chicago.jpg").convert("RGB").resize((90, 60))


def _ref(photo):
    return np.asarray(photo, np.float32) / 255.0


def test_rgb_roundtrip(tmp_path, photo):
    photo.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (60, 90, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, _ref(photo), atol=1e-6)
    save_image(img, tmp_path / "out" / "b.png")
    np.testing.assert_allclose(load_image(tmp_path / "out" / "b.png"), img, atol=1 / 255)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA"])
def test_modes_become_rgb(tmp_path, photo, mode):
    ext = "jpg" if mode == "CMYK" else "png"
    photo.convert(mode).save(tmp_path / f"m.{ext}")
    img = load_image(tmp_path / f"m.{ext}")
    assert img.shape == (60, 90, 3)
    ref = np.asarray(photo.convert(mode).convert("RGB"), np.float32) / 255.0
    assert np.abs(img - ref).mean() < 0.03


def test_transparent_pixels_composite_over_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "t.png")
    np.testing.assert_allclose(load_image(tmp_path / "t.png"), 1.0)


def test_16_bit_grayscale(tmp_path, photo):
    g16 = (np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    ref = np.asarray(photo.convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(img[..., 0], ref, atol=1e-4)
    np.testing.assert_allclose(img[..., 0], img[..., 2])


def test_exif_rotation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo.save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "r.jpg")
    assert img.shape == (90, 60, 3)
    rotated = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), np.float32) / 255.0
    assert np.abs(img - rotated).mean() < 0.03


def test_bad_files_raise_one_clear_error(tmp_path, assets):
    with pytest.raises(NstjaxError, match="missing.jpg.*not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "c.jpg").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(NstjaxError, match="c.jpg"):
        load_image(tmp_path / "c.jpg")
    data = (assets / "data/content/chicago.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(NstjaxError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")
    with pytest.raises(NstjaxError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(NstjaxError, match="extension"):
        save_image(np.zeros((4, 4, 3)), tmp_path / "x.nope")


def test_resize_keeps_aspect(assets):
    assert fit_size((474, 712), 256) == (170, 256)
    img = load_resized(assets / "data/content/chicago.jpg", 128)
    assert img.shape == (85, 128, 3)
