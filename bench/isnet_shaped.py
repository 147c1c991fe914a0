"""A full-size IS-Net-shaped ONNX segmenter with random weights, for timing matting where no real weights are.

rembg's ``isnet-general-use`` is IS-Net (Qin et al., "Highly Accurate Dichotomous Image Segmentation", 2022): a
stride-2 stem and a max-pool, then a U of six residual U-blocks (RSU-7, 6, 5, 4, 4F, 4F) down and five up, side
outputs upsampled to the 1024 x 1024 input. The graph built here has that architecture's layers, channels,
dilations and resolutions, with each convolution's batch norm folded into it (as onnxruntime does when it
loads the real file), so it runs the same arithmetic; its weights are random (He-scaled), so its masks mean
nothing and only its time and memory stand for the real model's. Speed does not depend on weight values.

Usage: .venv/bin/python bench/isnet_shaped.py OUT.onnx   (then pass its path under U2NET_HOME to the matting)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIDE = 1024
# (height, in, mid, out) of each RSU block; height 0 is an RSU-4F (dilated, no pooling).
ENCODER = [(7, 64, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512), (0, 512, 256, 512),
           (0, 512, 256, 512)]
DECODER = [(0, 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64), (7, 128, 16, 64)]


class _Graph:
    """Nodes and initialisers of an ONNX graph, with the spatial side of every tensor tracked."""

    def __init__(self, seed: int):
        self.nodes, self.weights, self.side = [], {}, {}
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.params = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, *, dilation: int = 1, stride: int = 1, relu: bool = True) -> str:
        from onnx import helper

        w, b = self.name("w"), self.name("b")
        self.weights[w] = (self.rng.standard_normal((cout, cin, 3, 3), np.float32) * np.float32(np.sqrt(2 / (9 * cin))))
        self.weights[b] = np.zeros(cout, np.float32)
        self.params += cout * cin * 9 + cout
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[3, 3], strides=[stride, stride],
                                           pads=[dilation] * 4, dilations=[dilation, dilation]))
        self.side[y] = self.side[x] // stride
        if not relu:
            return y
        z = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [z]))
        self.side[z] = self.side[y]
        return z

    def pool(self, x: str) -> str:
        from onnx import helper

        y = self.name("pool")
        self.nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1))
        self.side[y] = -(-self.side[x] // 2)
        return y

    def up(self, x: str, side: int) -> str:
        from onnx import helper

        scales = self.name("scales")
        factor = side / self.side[x]
        self.weights[scales] = np.array([1.0, 1.0, factor, factor], np.float32)
        y = self.name("up")
        self.nodes.append(helper.make_node("Resize", [x, "", scales], [y], mode="linear"))
        self.side[y] = side
        return y

    def join(self, op: str, a: str, b: str) -> str:
        from onnx import helper

        y = self.name(op.lower())
        self.nodes.append(helper.make_node(op, [a, b], [y], **({"axis": 1} if op == "Concat" else {})))
        self.side[y] = self.side[a]
        return y

    def rsu(self, x: str, height: int, cin: int, mid: int, cout: int) -> str:
        """A residual U-block: a U of 3 x 3 convolutions (pooled, or dilated for RSU-4F) added to its input's."""
        hin = self.conv(x, cin, cout)
        dilated = height == 0
        depth = 4 if dilated else height
        encoded, h = [], hin
        for level in range(depth - 1):
            h = self.conv(h if level == 0 or dilated else self.pool(h), cout if level == 0 else mid, mid,
                          dilation=2 ** level if dilated else 1)
            encoded.append(h)
        h = self.conv(h, mid, mid, dilation=2 ** (depth - 1) if dilated else 2)
        for level in reversed(range(depth - 1)):
            skip = encoded[level]
            if self.side[h] != self.side[skip]:
                h = self.up(h, self.side[skip])
            h = self.conv(self.join("Concat", h, skip), 2 * mid, cout if level == 0 else mid,
                          dilation=2 ** level if dilated else 1)
        return self.join("Add", h, hin)


def build_isnet_shaped(path: Path, seed: int = 0) -> tuple[Path, int]:
    """Write the IS-Net-shaped model (input ``input_image`` 1x3x1024x1024 -> six 1x1x1024x1024 side outputs, the
    first the mask) to `path`; returns (path, parameter count)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(seed)
    g.side["input_image"] = SIDE
    h = g.pool(g.conv("input_image", 3, 64, stride=2, relu=False))
    stages = []
    for index, (height, cin, mid, cout) in enumerate(ENCODER):
        if index:
            h = g.pool(h)
        h = g.rsu(h, height, cin, mid, cout)
        stages.append(h)
    decoded = [stages[-1]]
    for (height, cin, mid, cout), skip in zip(DECODER, reversed(stages[:-1])):
        h = g.rsu(g.join("Concat", g.up(h, g.side[skip]), skip), height, cin, mid, cout)
        decoded.append(h)
    outputs = []
    for h, channels in zip(reversed(decoded), (64, 64, 128, 256, 512, 512)):
        side = g.up(g.conv(h, channels, 1, relu=False), SIDE)
        out = g.name("mask")
        g.nodes.append(helper.make_node("Sigmoid", [side], [out]))
        outputs.append(out)
    graph = helper.make_graph(
        g.nodes, "isnet_shaped",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, SIDE, SIDE]) for name in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in g.weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path, g.params


if __name__ == "__main__":
    out, count = build_isnet_shaped(Path(sys.argv[1]))
    print(f"{out}: {count:,} parameters, {out.stat().st_size / 1e6:.1f} MB")
