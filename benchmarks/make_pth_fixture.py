"""Write the torch fixtures of tests/test_torch_import.py with real torch (benchmark env only).

    .venv-bench/bin/python benchmarks/make_pth_fixture.py $NSTJAX_ASSETS/data/photos/val/kodak24_kodim01.jpg

A small pytorch/examples fast_neural_style TransformerNet (channels 4/8/16, 2 residual blocks,
random weights) saved as a state dict in torch's zip format and in its legacy format with
InstanceNorm running statistics (as the published 2017 models have), plus torch's output on a
real photo: pixels in 0..255 in and out, exactly as pytorch/examples' stylize does.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_ref import TransformerNet  # noqa: E402  (the one torch TransformerNet of the benchmarks)

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torch"


def main() -> None:
    torch.manual_seed(0)
    net = TransformerNet(channels=(4, 8, 16), blocks=2).eval()  # 1/8 of its channels
    with torch.no_grad():  # non-trivial norms, so a swapped scale/bias cannot go unnoticed
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), OUT / "tiny_zip.pth")
    old = TransformerNet(channels=(4, 8, 16), blocks=2, track_running_stats=True)
    old.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        for m in old.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.running_mean.uniform_(-1, 1)  # present in old files, unused by the model
    torch.save(old.state_dict(), OUT / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    photo = Image.open(sys.argv[1]).convert("RGB").resize((52, 44), Image.Resampling.BICUBIC)  # not multiples of 4
    x = np.asarray(photo, np.float32) / 255.0
    with torch.no_grad():
        y = net(torch.from_numpy(x).permute(2, 0, 1)[None] * 255.0)[0].permute(1, 2, 0).numpy() / 255.0
    np.savez(OUT / "tiny_io.npz", input=x, torch_output=y.astype(np.float32), torch_version=torch.__version__)
    print("wrote", *sorted(p.name for p in OUT.iterdir()), "with torch", torch.__version__)


if __name__ == "__main__":
    main()
