"""Johnson et al.'s TransformerNet as an ONNX graph, op for op as `johnson.TransformerNet`.

Registered as the network's ONNX builder (`NetworkSpec.onnx`); `python -m nstjax.export
format=onnx` calls it with the trained parameters. Always float32: a model trained with a
bfloat16 compute dtype exports its float32 parameters.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from nstjax.networks.johnson import SIZE_MULTIPLE, JohnsonConfig

if TYPE_CHECKING:
    from nstjax.ops.onnx_graph import OnnxGraph

EPSILON = 1e-5  # as networks.johnson.instance_norm (torch.nn.InstanceNorm2d's)


def build_onnx(cfg: JohnsonConfig, params: Mapping[str, np.ndarray]) -> OnnxGraph:
    from nstjax.ops.onnx_graph import INPUT, OUTPUT, GraphBuilder

    g = GraphBuilder(params)
    scale = float(cfg.pixel_scale)

    def conv(x: str, name: str, kernel: int, stride: int = 1, downsampling: int = 1) -> str:
        return g.conv(g.reflect_pad(x, kernel // 2, downsampling), f"{name}/conv", stride)

    def norm_relu(x: str, name: str) -> str:
        return g.op("Relu", g.instance_norm(x, name, EPSILON))

    x = g.op("Transpose", INPUT, perm=[0, 3, 1, 2])  # NHWC -> NCHW
    if scale != 1.0:
        x = g.op("Mul", x, g.const(scale))
    x, crop = g.pad_to_multiple(x, SIZE_MULTIPLE)
    y = norm_relu(conv(x, "conv1", 9), "in1")
    y = norm_relu(conv(y, "conv2", 3, stride=2), "in2")
    y = norm_relu(conv(y, "conv3", 3, stride=2, downsampling=2), "in3")
    for i in range(cfg.num_residual):
        r = f"res/{i}"
        z = norm_relu(conv(y, f"{r}/conv1", 3, downsampling=4), f"{r}/in1")
        z = g.instance_norm(conv(z, f"{r}/conv2", 3, downsampling=4), f"{r}/in2", EPSILON)
        y = g.op("Add", y, z)
    y = norm_relu(conv(g.upsample_nearest2x(y), "deconv1/conv", 3, downsampling=2), "in4")
    y = norm_relu(conv(g.upsample_nearest2x(y), "deconv2/conv", 3), "in5")
    y = crop(conv(y, "deconv3", 9))
    if scale != 1.0:
        y = g.op("Div", y, g.const(scale))
    g.op("Transpose", y, perm=[0, 2, 3, 1], out=OUTPUT)  # NCHW -> NHWC
    return g.finish("nstjax_johnson")
