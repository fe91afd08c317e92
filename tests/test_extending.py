"""The README's "Extending nstjax" examples, run as written: a loss term, a network, a data
source and an export format, each used end to end through the registry it extends."""
from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from nstjax import losses
from nstjax.config import DataConfig
from nstjax.gatys import GatysSettings, run_gatys
from nstjax.networks import NETWORKS, build_network
from nstjax.serving.artifact import read_artifact
from nstjax.serving.exporting import export_model
from nstjax.serving.formats import FORMATS
from nstjax.serving.loading import load_stylizer
from nstjax.training.checkpoint import Checkpointer
from nstjax.training.data import SOURCES, load_val_images, make_dataset
from nstjax.training.trainer import Trainer, make_mesh
from nstjax.perceptual import Encoder, PerceptualLoss

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Extending nstjax"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def ns():
    """The four examples executed in order, in one namespace; registries restored afterwards."""
    blocks = readme_examples()
    assert len(blocks) == 4
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
        yield namespace
    finally:
        losses.TERMS.pop("chroma", None)
        NETWORKS.pop("tiny", None)
        SOURCES.pop("listfile", None)
        FORMATS.pop("mlir", None)


def test_new_loss_term_drives_gatys(ns, vgg, image):
    content = image("content/chicago.jpg", 40)
    style = image("styles/mosaic.jpg", 40)
    loss = ns["loss"]
    r = run_gatys(vgg, content, [style], GatysSettings(loss=loss, optimizer="adam", steps=20, log_every=20))
    assert "chroma" in r.final and r.final["chroma"] < r.initial["chroma"]
    plain = run_gatys(vgg, content, [style], GatysSettings(loss=PerceptualLoss(), optimizer="adam", steps=20,
                                                           log_every=20))
    assert np.std(r.image, axis=-1).mean() < np.std(plain.image, axis=-1).mean()


def test_new_network_trains_exports_and_loads(ns, vgg, photos, tmp_path, image):
    model = build_network({"name": "tiny", "features": 4}, rngs=nnx.Rngs(0))
    assert isinstance(model, ns["TinyNet"])
    loss = PerceptualLoss(content_layers={"relu2_2": 1.0}, style_layers={"relu1_1": 1.0, "relu2_1": 1.0},
                          weights={"content": 1.0, "style": 10.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [image("styles/mosaic.jpg", 48)])
    trainer = Trainer(model, encoder, loss, optax.adam(1e-2), grams, make_mesh(jax.devices()[:1]))
    batch = trainer.put_batch(load_val_images(photos / "val", 32, limit=2))
    first = float(trainer.step(batch)["total"])
    for _ in range(5):
        last = float(trainer.step(batch)["total"])
    assert last < first
    # Saved as the trainer saves, exported and loaded back by name: no change to export needed.
    config = {"model": {"name": "tiny", "features": 4}}
    with Checkpointer(tmp_path / "ck", save_every=1) as ck:
        ck.save(6, trainer.state(jax.random.key(0)), data_state={}, config=config, metrics={}, force=True)
    export_model(tmp_path / "ck", tmp_path / "tiny.npz")
    photo = load_val_images(photos / "val", 32, limit=1)
    want = trainer.stylize(photo)
    got = np.clip(load_stylizer(tmp_path / "tiny.npz")(photo), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The new export format, on the new network.
    meta = export_model(tmp_path / "ck", tmp_path / "tiny.mlir.npz", kind="mlir")
    _, header, payloads = read_artifact(tmp_path / "tiny.mlir.npz")
    assert meta["mlir"] == header["mlir"] and payloads["mlir"].startswith(b"module")
    assert load_stylizer(tmp_path / "tiny.mlir.npz").backend == "params"  # no loader: rebuilt


def test_new_data_source_feeds_the_pipeline(ns, photos, tmp_path):
    files = sorted((photos / "train").glob("*.jpg"))[:5]
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(map(str, [*files, tmp_path / "missing.jpg"])))
    data = make_dataset(DataConfig(name="listfile", path=str(listing), val_path=str(photos / "val"), size=32),
                        batch_size=2, seed=0)
    assert data.num_examples == 6
    it = iter(data)
    try:
        batches = [next(it) for _ in range(6)]  # 12 good images: two epochs and part of a third
    finally:
        it.close()
    assert all(b.shape == (2, 32, 32, 3) and b.std() > 0.05 for b in batches)
    assert data.skipped in (2, 3)  # the missing file, once per epoch started
