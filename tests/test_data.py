"""Training-data pipeline on the real photo set: determinism, resume, bad files, TFDS, device."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from nstjax.training.data import load_val_images, make_dataset
from nstjax.training.prefetch import prefetch_to_device
from nstjax.config import DataConfig, compose, load
from nstjax.errors import NstjaxError

SIZE, BATCH = 64, 4


def folder_cfg(path: Path, **kw) -> DataConfig:
    fields = dict(name="folder", path=str(path), val_path=str(path), size=SIZE, workers=0, threads=2, prefetch=2)
    return DataConfig(**(fields | kw))


def coco_cfg(**overrides) -> DataConfig:
    """`data=coco` composed as `python -m nstjax.train data=coco` composes it."""
    cfg = compose("train", ["data=coco", *(f"data.{k}={v}" for k, v in overrides.items())])
    return load(DataConfig, cfg.data)


def take(data, n: int, state=None) -> list[np.ndarray]:
    it = iter(data)
    try:
        if state is not None:
            it.set_state(state)
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def identity(img: np.ndarray) -> tuple:
    """Which photo a whole-image crop came from, insensitive to the random flip."""
    return tuple(np.round(img.mean(axis=(0, 1)), 3)) + (round(float(img[:, 0].mean() + img[:, -1].mean()), 3),)


@pytest.fixture(scope="module")
def train(photos: Path) -> Path:
    return photos / "train"


def test_batches_are_deterministic_and_well_formed(train):
    a = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=0), 2)
    b = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=0), 2)
    for x, y in zip(a, b):
        assert x.shape == (BATCH, SIZE, SIZE, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0][0], a[0][1])  # different photos within a batch


def test_different_seed_gives_different_batches(train):
    a = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=0), 1)[0]
    b = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=1), 1)[0]
    assert not np.array_equal(a, b)


def test_resume_from_json_state_continues_exactly(train):
    data = make_dataset(folder_cfg(train), batch_size=BATCH, seed=3)
    it = iter(data)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    expected = [next(it), next(it)]
    it.close()
    resumed = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=3), 2, state=state)
    for x, y in zip(expected, resumed):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(expected[0], take(data, 1)[0])  # a fresh iterator starts over


def test_every_epoch_visits_each_photo_once_in_a_new_order(photos):
    # The Kodak photos are square, so a crop is the whole photo and photos are identifiable.
    data = make_dataset(folder_cfg(photos / "val", size=16), batch_size=BATCH, seed=0)
    assert data.num_examples == 24
    images = np.concatenate(take(data, 12))
    ids = [identity(im) for im in images]
    first, second = ids[:24], ids[24:]
    assert len(set(first)) == 24 and set(first) == set(second)
    assert first != second


def test_corrupt_truncated_and_empty_files_are_skipped_and_counted(train, tmp_path, caplog):
    good = sorted(train.glob("*.jpg"))[:6]
    for p in good:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "truncated.jpg").write_bytes(good[0].read_bytes()[:3000])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image, not listed")
    data = make_dataset(folder_cfg(tmp_path), batch_size=BATCH, seed=0)
    assert data.num_examples == 9
    with caplog.at_level(logging.WARNING, logger="nstjax.training.data"):
        it = iter(data)
        batches = [next(it) for _ in range(6)]  # 24 good images = exactly 4 epochs of 6
        skipped = it.skipped
        it.close()
    assert all(b.shape == (BATCH, SIZE, SIZE, 3) and np.isfinite(b).all() for b in batches)
    assert 9 <= skipped <= 12 and data.skipped == skipped  # 3 bad files in each of 3-4 epochs
    for name in ("corrupt.jpg", "truncated.jpg", "empty.png"):
        assert name in caplog.text


def test_folder_of_only_bad_files_fails_clearly(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(NstjaxError, match="no readable image"):
        take(make_dataset(folder_cfg(tmp_path), batch_size=BATCH, seed=0), 1)


@pytest.mark.parametrize("kind", ["missing", "empty", "no_images", "file"])
def test_bad_folder_fails_with_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "photos"
    if kind != "missing":
        path.mkdir()
    if kind == "no_images":
        (path / "readme.txt").write_text("x")
    if kind == "file":
        path = path / "x.jpg"
        path.write_bytes(b"x")
    with pytest.raises(NstjaxError) as e:
        make_dataset(folder_cfg(path), batch_size=BATCH, seed=0)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_invalid_settings_fail_clearly(train):
    with pytest.raises(NstjaxError, match="data.size"):
        make_dataset(folder_cfg(train, size=0), batch_size=BATCH, seed=0)
    with pytest.raises(NstjaxError, match="batch_size"):
        make_dataset(folder_cfg(train), batch_size=0, seed=0)


def test_coco_without_prepared_data_says_how_to_prepare(tmp_path):
    cfg = coco_cfg(data_dir=tmp_path)
    with pytest.raises(NstjaxError) as e:
        make_dataset(cfg, batch_size=BATCH, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "python -m nstjax.data prepare coco --dir DIR" in msg and "data=folder" in msg


@pytest.fixture(scope="module")
def prepared_coco(train, tmp_path_factory) -> Path:
    """A real TFDS 'coco/2017' array_record dataset (10 real photos), written without TF."""
    tfds = pytest.importorskip("tensorflow_datasets")
    files = sorted(train.glob("coco*.jpg"))[:10]

    class Coco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.1.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]

        def _info(self):
            features = {"image": tfds.features.Image(encoding_format="jpeg"), "image/id": np.int64}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, p in enumerate(files):
                yield i, {"image": str(p), "image/id": i}

    data_dir = tmp_path_factory.mktemp("tfds")
    Coco(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_coco_reads_prepared_tfds_array_record(prepared_coco):
    cfg = coco_cfg(data_dir=prepared_coco, size=SIZE, threads=2)
    data = make_dataset(cfg, batch_size=BATCH, seed=0)
    assert data.num_examples == 10
    a, b = take(data, 3), take(make_dataset(cfg, batch_size=BATCH, seed=0), 3)
    for x, y in zip(a, b):
        assert x.shape == (BATCH, SIZE, SIZE, 3) and x.dtype == np.float32 and x.std() > 0.05
        np.testing.assert_array_equal(x, y)
    assert data.skipped == 0


def test_worker_processes_give_the_same_batches_and_resume(train):
    serial = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=5), 4)
    data = make_dataset(folder_cfg(train, workers=1), batch_size=BATCH, seed=5)
    it = iter(data)
    try:
        got = [next(it), next(it)]
        state = json.loads(json.dumps(it.get_state()))
        got += [next(it), next(it)]
    finally:
        it.close()
    for x, y in zip(serial, got):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(NstjaxError, match="data.workers"):
        take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=5), 1, state=state)


def test_load_val_images_is_sorted_deterministic_and_centre_cropped(photos):
    val = photos / "val"
    a = load_val_images(val, 32, limit=5)
    assert a.shape == (5, 32, 32, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, load_val_images(val, 32, limit=5))
    first = sorted(p for p in val.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[0]
    np.testing.assert_array_equal(a[0], load_val_images(first, 32)[0])
    assert load_val_images(val, 32).shape[0] == 24
    wide = load_val_images(sorted((photos / "train").glob("*.jpg"))[0], 48)
    assert wide.shape == (1, 48, 48, 3)
    with pytest.raises(NstjaxError, match="nowhere"):
        load_val_images(photos / "nowhere", 32)


def test_prefetch_to_device_matches_host_batches_and_keeps_resume_exact(train):
    host = take(make_dataset(folder_cfg(train), batch_size=BATCH, seed=7), 5)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    dev = prefetch_to_device(iter(make_dataset(folder_cfg(train), batch_size=BATCH, seed=7)), 2, sharding)
    got = [next(dev), next(dev)]
    state = json.loads(json.dumps(dev.get_state()))  # position of the batches *returned*
    got.append(next(dev))
    dev.close()
    for x, y in zip(got, host):
        assert isinstance(x, jax.Array) and x.sharding == sharding
        np.testing.assert_array_equal(np.asarray(x), y)
    resumed = prefetch_to_device(iter(make_dataset(folder_cfg(train), batch_size=BATCH, seed=7)), 2)
    resumed.set_state(state)
    for y in host[2:5]:
        np.testing.assert_array_equal(np.asarray(next(resumed)), y)
    resumed.close()


def test_configs_share_fields_and_defaults_point_at_assets(assets, monkeypatch):
    monkeypatch.setenv("NSTJAX_ASSETS", str(assets))
    folder = load(DataConfig, compose("train", ["data=folder"]).data)
    coco = load(DataConfig, compose("train", ["data=coco"]).data)
    assert set(vars(folder)) == set(vars(coco))
    assert (folder.name, coco.name, coco.tfds_name, coco.split) == ("folder", "coco", "coco/2017", "train")
    assert folder.size == coco.size == 256 and coco.data_dir is None
    # Defaults point into the configured assets dir only, never into a checkout or ../shared.
    assert Path(folder.path) == assets / "data" / "photos" / "train" and folder.val_path is coco.val_path is None
    assert make_dataset(folder, batch_size=2, seed=0).num_examples == 1909
    monkeypatch.delenv("NSTJAX_ASSETS")
    bare = load(DataConfig, compose("train", ["data=folder"]).data)
    assert bare.path is None
    with pytest.raises(NstjaxError, match="data.path is not set"):
        make_dataset(bare, batch_size=2, seed=0)


def test_validation_photos_are_held_out_of_the_training_source(train):
    data = make_dataset(folder_cfg(train), batch_size=BATCH, seed=0, holdout=8)
    assert data.num_examples == 1909 - 8 and len(data.held_out) == 8
    assert set(data.held_out.indices).isdisjoint(data.source.indices)
    other = make_dataset(folder_cfg(train), batch_size=BATCH, seed=9, holdout=8)
    assert other.held_out.indices == data.held_out.indices  # fixed, whatever the seed
    val = data.validation_images()
    assert val.shape == (8, SIZE, SIZE, 3) and val.dtype == np.float32 and val.std() > 0.05
    names = {data.held_out[i].name for i in range(8)}
    assert len({n.split("_")[0] for n in names}) > 1  # spread over the source, not its first 8 files


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_any_image_mode_decodes_to_rgb(train, tmp_path, mode):
    from PIL import Image

    from nstjax.training.data import decode_short_side

    with Image.open(sorted(train.glob("*.jpg"))[0]) as im:
        im = im.convert("RGB").convert(mode) if mode != "I;16" else im.convert("L").convert("I;16")
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    im.save(path)
    out = decode_short_side(path.read_bytes(), 40)
    assert out.mode == "RGB" and min(out.size) == 40


def test_exif_orientation_is_applied(train, tmp_path):
    from PIL import Image

    from nstjax.training.data import decode_short_side

    src = next(p for p in sorted(train.glob("*.jpg")) if Image.open(p).width > Image.open(p).height)
    with Image.open(src) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        im.save(tmp_path / "rotated.jpg", exif=exif)
        w, h = im.size
    out = decode_short_side((tmp_path / "rotated.jpg").read_bytes(), 64)
    assert out.height > out.width and w > h


def test_data_resize_crops_windows_of_the_photo_at_that_scale(photos):
    from nstjax.training.data import DecodeCropFlip, Encoded, decode_short_side

    f = sorted((photos / "train").iterdir())[0]
    item = Encoded(f.name, f.read_bytes())
    for resize in (None, 4 * SIZE):
        scaled = np.asarray(decode_short_side(item.data, resize or SIZE), np.int16)
        crop = np.asarray(DecodeCropFlip(SIZE, resize).random_map(item, np.random.default_rng(1)), np.int16)
        assert crop.shape == (SIZE, SIZE, 3)
        # The crop is a window of the photo at the `resize` scale (possibly mirrored), pixel for pixel.
        found = any(np.array_equal(scaled[y:y + SIZE, x:x + SIZE], c)
                    for c in (crop, crop[:, ::-1]) for y in range(scaled.shape[0] - SIZE + 1)
                    for x in range(scaled.shape[1] - SIZE + 1))
        assert found, resize
    with pytest.raises(NstjaxError, match="data.resize=32 is below data.size=64"):
        folder_cfg(photos / "train", resize=32)
