"""Image decoding on malformed bytes: only nstjax's own one-line errors come out (fuzzed)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from nstjax import image as image_mod
from nstjax.errors import NstjaxError
from nstjax.image import load_image
from nstjax.training.data import DecodeCropFlip, Encoded

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)


def _seeds() -> list[bytes]:
    """Small valid files of each format the project reads, from a real photo."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    out = []
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        photo.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):  # flipped bytes anywhere, headers included
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


def _load(tmp_path, data: bytes) -> None:
    p = tmp_path / "x.img"
    p.write_bytes(data)
    try:
        arr = load_image(p, what="fuzz")
    except NstjaxError as e:
        assert "\n" not in str(e) and "x.img" in str(e)
        return
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.float32


@FUZZ
@given(data=damaged_images())
def test_load_image_on_damaged_files(tmp_path, data):
    _load(tmp_path, data)


@FUZZ
@given(data=st.binary(min_size=0, max_size=2048))
def test_load_image_on_random_bytes(tmp_path, data):
    _load(tmp_path, data)


@FUZZ
@given(data=damaged_images())
def test_training_decoder_skips_what_it_cannot_read(data):
    out = DecodeCropFlip(16).random_map(Encoded("fuzz", data), np.random.default_rng(0))
    assert out.dtype == np.uint8 and (out.shape == (16, 16, 3) or out.size == 0)  # an image, or the skip marker


def test_pixel_budget_refuses_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP in a file of a few tens of KB
    assert bomb.stat().st_size < 200_000
    with pytest.raises(NstjaxError, match=r"20000x20000 is 400 MP, over the \d+ MP budget") as e:
        load_image(bomb, what="content.image")
    assert "NSTJAX_MAX_PIXELS" in str(e.value)
    assert DecodeCropFlip(16).random_map(Encoded("bomb", bomb.read_bytes()), np.random.default_rng(0)).size == 0
    monkeypatch.setattr(image_mod, "MAX_PIXELS", 100)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(NstjaxError, match="budget"):
        load_image(small)
