"""A small builder of ONNX graphs (`onnx.helper`) for the ops nstjax's networks export to.

The ops are chosen for wide runtime support: no Resize/Upsample (pytorch/examples' ONNX users
broke on Upsample's scale factors), so nearest x2 is Concat + DepthToSpace; padding is an
explicit reflect Pad; shapes that depend on the image are computed in the graph from Shape, so
batch, height and width stay dynamic. The graph works in NCHW, as ONNX's Conv does.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The default ONNX opset: Shape(start, end) needs 15; 17 is supported by every current runtime.
OPSET = 17
INPUT = "image"  # float32 [batch, height, width, 3], NHWC RGB in [0, 1]
OUTPUT = "stylized"  # float32, the same shape
DIMS = ("batch", "height", "width", 3)


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """What a network's ONNX builder returns: the graph, its opset and the smallest image side
    it accepts (a reflect Pad needs every pad smaller than the side it pads)."""

    graph: onnx.GraphProto
    opset: int
    min_side: int


class GraphBuilder:
    """Appends nodes and initializers; every op method returns the name of its output."""

    def __init__(self, params: Mapping[str, np.ndarray]) -> None:
        self.params = params
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._reflect: list[tuple[int, int]] = []  # (pad, downsampling) of every fixed reflect Pad
        self._multiple = 1  # what pad_to_multiple pads the input to

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: Any, name: str | None = None, dtype: Any = np.float32) -> str:
        name = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(values, dtype=np.int64)

    def param(self, name: str, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> str:
        """A network parameter as a float32 initializer named by its nstjax path."""
        return self.const(transform(np.asarray(self.params[name], np.float32)), name)

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(op_type), **attrs))
        return out

    # ------------------------------------------------------------------ layers (NCHW)

    def reflect_pad(self, x: str, pad: int, downsampling: int) -> str:
        """Reflect-pad H and W by `pad`; `downsampling` is the stage's size relative to the
        padded input, recorded for `min_side`."""
        if pad == 0:
            return x
        self._reflect.append((pad, downsampling))
        return self.op("Pad", x, self.ints([0, 0, pad, pad, 0, 0, pad, pad]), mode="reflect")

    def conv(self, x: str, prefix: str, stride: int = 1) -> str:
        """A VALID conv with nstjax's HWIO kernel `<prefix>/kernel` (OIHW in ONNX) and bias."""
        kernel = self.param(f"{prefix}/kernel", lambda k: np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        k = self.params[f"{prefix}/kernel"].shape
        return self.op("Conv", x, kernel, self.param(f"{prefix}/bias"), kernel_shape=[k[0], k[1]],
                       strides=[stride, stride])

    def instance_norm(self, x: str, prefix: str, epsilon: float) -> str:
        return self.op("InstanceNormalization", x, self.param(f"{prefix}/scale"), self.param(f"{prefix}/bias"),
                       epsilon=epsilon)

    def upsample_nearest2x(self, x: str) -> str:
        """Nearest x2: four copies along channels, then DepthToSpace DCR puts copy i*2+j of
        channel c at (2h+i, 2w+j), so every output pixel is its input pixel (no Resize)."""
        return self.op("DepthToSpace", self.op("Concat", x, x, x, x, axis=1), blocksize=2, mode="DCR")

    def pad_to_multiple(self, x: str, multiple: int) -> tuple[str, Callable[[str], str]]:
        """Reflect-pad H and W up to a multiple, computed from the input's Shape, the extra split
        as `nstjax.ops.pad.pad_to_multiple` splits it (top = extra // 2); returns the padded
        tensor and a function cropping a same-size result back."""
        hw = self.op("Shape", x, start=2, end=4)
        padded = self.op("Mul", self.op("Div", self.op("Add", hw, self.ints([multiple - 1])), self.ints([multiple])),
                         self.ints([multiple]))
        extra = self.op("Sub", padded, hw)
        top = self.op("Div", extra, self.ints([2]))
        bottom = self.op("Sub", extra, top)
        zeros = self.ints([0, 0])
        pads = self.op("Concat", zeros, top, zeros, bottom, axis=0)
        xp = self.op("Pad", x, pads, mode="reflect")

        def crop(y: str) -> str:
            return self.op("Slice", y, top, self.op("Add", top, hw), self.ints([2, 3]))

        self._multiple = multiple
        return xp, crop

    # ------------------------------------------------------------------ result

    def min_side(self) -> int:
        """The smallest H (and W) for which every reflect Pad, padded-to-a-multiple, is valid."""
        m = self._multiple

        def ok(h: int) -> bool:
            extra = (-h) % m
            padded = h + extra
            return extra - extra // 2 < h and all(padded // s > p for p, s in self._reflect)

        h = 1
        while not all(ok(h + i) for i in range(2 * m)):  # `extra` cycles with h, so check a window
            h += 1
        return h

    def finish(self, name: str, inp: str = INPUT, out: str = OUTPUT, opset: int = OPSET) -> OnnxGraph:
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info(inp, TensorProto.FLOAT, list(DIMS))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(DIMS))], initializer=self.initializers)
        return OnnxGraph(graph, opset, self.min_side())
