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

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torch"


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class UpsampleConvLayer(ConvLayer):
    def forward(self, x):
        return super().forward(nn.functional.interpolate(x, mode="nearest", scale_factor=2))


class ResidualBlock(nn.Module):
    def __init__(self, ch, stats):
        super().__init__()
        self.conv1, self.conv2 = ConvLayer(ch, ch, 3, 1), ConvLayer(ch, ch, 3, 1)
        self.in1 = nn.InstanceNorm2d(ch, affine=True, track_running_stats=stats)
        self.in2 = nn.InstanceNorm2d(ch, affine=True, track_running_stats=stats)

    def forward(self, x):
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """pytorch/examples' layout and names, at 1/8 of its channels."""

    def __init__(self, c=(4, 8, 16), blocks=2, stats=False):
        super().__init__()
        c1, c2, c3 = c
        norm = lambda ch: nn.InstanceNorm2d(ch, affine=True, track_running_stats=stats)  # noqa: E731
        self.conv1, self.in1 = ConvLayer(3, c1, 9, 1), norm(c1)
        self.conv2, self.in2 = ConvLayer(c1, c2, 3, 2), norm(c2)
        self.conv3, self.in3 = ConvLayer(c2, c3, 3, 2), norm(c3)
        for i in range(blocks):
            setattr(self, f"res{i + 1}", ResidualBlock(c3, stats))
        self.blocks = blocks
        self.deconv1, self.in4 = UpsampleConvLayer(c3, c2, 3, 1), norm(c2)
        self.deconv2, self.in5 = UpsampleConvLayer(c2, c1, 3, 1), norm(c1)
        self.deconv3 = ConvLayer(c1, 3, 9, 1)

    def forward(self, x):
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for i in range(self.blocks):
            y = getattr(self, f"res{i + 1}")(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def main() -> None:
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():  # non-trivial norms, so a swapped scale/bias cannot go unnoticed
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), OUT / "tiny_zip.pth")
    old = TransformerNet(stats=True)
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
