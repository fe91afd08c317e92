"""One perceptual objective: a loss term added once is used by the Gatys optimizer and the trainer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nstjax import losses
from nstjax.config import LossConfig
from nstjax.errors import NstjaxError
from nstjax.gatys import GatysSettings, run_gatys
from nstjax.image import resize
from nstjax.networks import build_network
from nstjax.perceptual import Encoder, PerceptualLoss, Targets
from nstjax.training.data import load_val_images
from nstjax.training.trainer import Trainer, make_mesh, make_optimizer

LAYERS = dict(content_layers={"relu2_2": 1.0}, style_layers={"relu1_1": 1.0, "relu2_1": 1.0})


@pytest.fixture(scope="module")
def images(image):
    content = image("content/chicago.jpg", 48)
    return content, resize(image("styles/mosaic.jpg", 48), content.shape[:2])


@pytest.fixture
def chroma_term():
    """A term registered here, in the test: colourfulness (squared distance from each pixel's grey)."""

    @losses.term("test_chroma")
    def chroma(t: losses.TermInputs) -> jax.Array:
        return jnp.mean(jnp.square(t.image - jnp.mean(t.image, axis=-1, keepdims=True)))

    yield "test_chroma"
    del losses.TERMS["test_chroma"]


def _chroma(img: np.ndarray) -> float:
    return float(np.mean(np.square(img - img.mean(-1, keepdims=True))))


def test_evaluate_is_the_weighted_sum_of_its_terms(vgg, images):
    content, style = images
    loss = PerceptualLoss(**LAYERS, weights={"content": 2.0, "style": 30.0, "tv": 1e-3})
    enc = Encoder(vgg, loss.layers)
    targets = Targets(loss.content_targets(enc, content), loss.style_targets(enc, [style]))
    x = jnp.asarray(0.5 * (content + style))[None]
    t = {k: float(v) for k, v in loss.evaluate(x, enc.encode(x, loss.layers), targets).items()}
    assert set(t) == {"content", "style", "tv", "total"}
    assert t["content"] > 0 and t["style"] > 0 and t["tv"] > 0
    np.testing.assert_allclose(t["total"], 2.0 * t["content"] + 30.0 * t["style"] + 1e-3 * t["tv"], rtol=1e-5)
    # The style image against its own Gram targets: zero style loss.
    same = loss.evaluate(jnp.asarray(style)[None], enc.encode(jnp.asarray(style)[None], loss.layers), targets)
    assert float(same["style"]) < 1e-6 * t["content"]


def test_a_new_term_is_used_by_gatys_and_by_training(vgg, images, photos, chroma_term):
    content, style = images
    base = {"content": 5.0, "style": 100.0, "tv": 1e-3}
    # Gatys: the same run with and without the term; with a large weight it drains the colour.
    runs = {}
    for w in (0.0, 1e10):
        loss = PerceptualLoss(**LAYERS, weights={**base, chroma_term: w} if w else base)
        r = run_gatys(vgg, content, [style], GatysSettings(loss=loss, optimizer="adam", lr=0.02, steps=25,
                                                           log_every=25))
        runs[w] = r
    assert chroma_term in runs[1e10].final and chroma_term not in runs[0.0].final
    np.testing.assert_allclose(runs[1e10].final[chroma_term], _chroma(runs[1e10].image), rtol=0.05)
    assert _chroma(runs[1e10].image) < 0.5 * _chroma(runs[0.0].image)

    # Training: the trainer reports and optimizes the same term through the same objective.
    loss = PerceptualLoss(**LAYERS, weights={**base, chroma_term: 1e11})
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [style])
    model = build_network({"name": "johnson", "width": 0.125, "num_residual": 1}, rngs=nnx.Rngs(0))
    tx, _ = make_optimizer(1e-2, 10)
    trainer = Trainer(model, encoder, loss, tx, grams, make_mesh(jax.devices()[:1]))
    batch = trainer.put_batch(load_val_images(photos / "val", 32, limit=2))
    first = {k: float(v) for k, v in trainer.step(batch).items()}
    assert chroma_term in first
    np.testing.assert_allclose(first["total"], sum(w * first[k] for k, w in loss.weights.items()),
                               rtol=1e-4)
    for _ in range(8):
        last = trainer.step(batch)
    assert float(last[chroma_term]) < first[chroma_term]


def test_loss_config_fields_become_weights(chroma_term):
    cfg = LossConfig(content_layers=["relu4_2"], style_layers=["relu1_1", "relu2_1"], style_layer_weights=[1, 0.5],
                     content_weight=5.0, style_weight=100.0, tv_weight=0.0)
    loss = cfg.perceptual()
    assert loss.weights == {"content": 5.0, "style": 100.0, "tv": 0.0}
    assert loss.style_layers == {"relu1_1": 1.0, "relu2_1": 0.5} and loss.layers == ("relu1_1", "relu2_1", "relu4_2")
    cfg.test_chroma_weight = 2.0  # what one new `test_chroma_weight` field in LossConfig gives
    assert cfg.perceptual().weights[chroma_term] == 2.0
    with pytest.raises(NstjaxError, match="unknown loss term"):
        PerceptualLoss(weights={"nope": 1.0})
    with pytest.raises(NstjaxError, match="style_layer_weights"):
        LossConfig(content_layers=[], style_layers=["relu1_1"], style_layer_weights=[1, 2], content_weight=1,
                   style_weight=1, tv_weight=0).perceptual()
