"""ms per AdaIN training step (width 0.5, four 256 px styles, 128 px photos, batch 4) on this machine:
    NSTJAX_ASSETS=../shared python benchmarks/bench_adain.py LABEL"""
import sys
import time

import jax
import optax
from flax import nnx
from nstjax.networks import build_network, NETWORKS, model_config
from nstjax.perceptual import Encoder, PerceptualLoss
from nstjax.training.data import load_val_images
from nstjax.training.loop import stack_targets
from nstjax.training.trainer import Trainer, make_mesh
from nstjax.image import load_image
from nstjax.vgg import load_vgg19
from nstjax.networks.adain import style_view
A = "/work/shared"
vgg = load_vgg19(assets_dir=A)
L = {"relu1_1": 300., "relu2_1": 30., "relu3_1": 10., "relu4_1": 1.}
loss = PerceptualLoss({"relu4_1": 1.0}, L, {"content": 1.0, "style": 0.0, "tv": 0.0, "moments": 1.0})
enc = Encoder(vgg, loss.layers)
cfg = model_config({"name": "adain", "width": 0.5, "style_size": 256})
names = ("candy", "mosaic", "udnie", "la_muse")
sty = [load_image(f"{A}/data/styles/{n}.jpg") for n in names]
per = [loss.style_targets(enc, [style_view(s, 256)]) for s in sty]
model = build_network(cfg, rngs=nnx.Rngs(0)); NETWORKS["adain"].from_loss_network(model, vgg)
cond = NETWORKS["adain"].conditions(model, cfg, sty)
tr = Trainer(model, enc, loss, optax.adam(1e-4), stack_targets(per), make_mesh(), num_styles=4, conditions=cond)
photos = tr.put_batch(load_val_images(f"{A}/data/photos/train", 128, limit=4))
for i in range(3): jax.block_until_ready(tr.step(photos, i))
ts = []
for i in range(8):
    t = time.perf_counter(); jax.block_until_ready(tr.step(photos, i)); ts.append(time.perf_counter() - t)
print(sys.argv[1], "ms/step median %.0f" % (1000 * sorted(ts)[4]), [round(1000 * x) for x in ts])
