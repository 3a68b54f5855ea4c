"""Run an ONNX graph with torch operators, so an OCR model runs on a GPU.

The PP-OCR det/rec graphs that rapidocr bundles (opset 11) are convolutions,
SVTR attention and their glue: about 25 operator types. :class:`OnnxModule`
holds the graph's initializers as tensors and runs its nodes in order, each
through the torch function in ``_OPS`` for its type. It is an interpreter, not
a converter: shapes may change from call to call (a page's size, a batch of
text lines of some width), as in onnxruntime. Chains of nodes that torch
computes in one call (a convolution and its bias, GELU, LayerNorm) run as one
(:mod:`evalsuite.ocr.onnx_fusion`), and Identity nodes not at all.

Integer tensors (shapes, axes, slice bounds) stay on the CPU, so computing a
shape never waits for the GPU. An operator outside ``_OPS``, or an attribute
the interpreter does not implement, is refused when the module is built, with
the node and the file named.

>>> import onnx
>>> from onnx import helper
>>> node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2, beta=0.5)
>>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
...                           [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
>>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
>>> OnnxModule(model)(torch.tensor([-5.0, 1.0])).tolist()
[0.0, 0.699999988079071]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

Op = Callable[..., Any]  # (attributes, *inputs) -> output or tuple of outputs
_OPS: dict[str, Op] = {}


def _op(*names: str):
    def register(fn: Op) -> Op:
        for name in names:
            _OPS[name] = fn
        return fn
    return register


def _ints(value) -> list[int]:
    """A shape, axes or bounds input (a CPU int64 tensor) as Python ints."""
    return [int(v) for v in value.reshape(-1).tolist()]


def _same_upper(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """ONNX ``auto_pad=SAME_UPPER`` padding (before, after) of one spatial axis: the output
    has ``ceil(size / stride)`` positions, any odd padding goes at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(a: dict, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]):
    """Padding of a conv or pool node as (symmetric per axis, or None; F.pad list for the rest)."""
    if a.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER"):
        pairs = [_same_upper(size, k, s, d) for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
        if a["auto_pad"] == b"SAME_LOWER":
            pairs = [(after, before) for before, after in pairs]
    else:
        pads = a.get("pads", [0] * 2 * len(kernel))
        pairs = list(zip(pads[: len(kernel)], pads[len(kernel):]))
    if all(before == after for before, after in pairs):
        return [before for before, _ in pairs], None
    return [0] * len(kernel), [p for before, after in reversed(pairs) for p in (before, after)]


@_op("Conv")
def _conv(a, x, w, b=None):
    kernel = list(w.shape[2:])
    strides, dilations = a.get("strides", [1] * len(kernel)), a.get("dilations", [1] * len(kernel))
    padding, explicit = _spatial_padding(a, x, kernel, strides, dilations)
    if explicit is not None:
        x = F.pad(x, explicit)
    return F.conv2d(x, w, b, strides, padding, dilations, a.get("group", 1))


@_op("ConvTranspose")
def _conv_transpose(a, x, w, b=None):
    if any(a.get("pads", [0])) or a.get("auto_pad", b"NOTSET") != b"NOTSET" or "output_shape" in a:
        raise NotImplementedError("ConvTranspose with padding")
    return F.conv_transpose2d(x, w, b, a.get("strides", 1), 0, a.get("output_padding", 0),
                              a.get("group", 1), a.get("dilations", 1))


def _pool_geometry(a, x):
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * len(kernel))
    return kernel, strides, *_spatial_padding(a, x, kernel, strides, [1] * len(kernel))


@_op("MaxPool")
def _max_pool(a, x):
    kernel, strides, padding, explicit = _pool_geometry(a, x)
    if explicit is not None:
        x = F.pad(x, explicit, value=-math.inf)
    return F.max_pool2d(x, kernel, strides, padding, ceil_mode=bool(a.get("ceil_mode", 0)))


@_op("AveragePool")
def _average_pool(a, x):
    kernel, strides, padding, explicit = _pool_geometry(a, x)
    if explicit is not None:
        raise NotImplementedError("AveragePool with asymmetric padding")
    return F.avg_pool2d(x, kernel, strides, padding, ceil_mode=bool(a.get("ceil_mode", 0)),
                        count_include_pad=bool(a.get("count_include_pad", 0)))


@_op("GlobalAveragePool")
def _global_average_pool(a, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("BatchNormalization")
def _batch_norm(a, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


@_op("Resize")
def _resize(a, x, roi=None, scales=None, sizes=None):
    if (a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric"
            or a.get("nearest_mode", b"round_prefer_floor") != b"floor"):
        raise NotImplementedError("Resize other than nearest, asymmetric, floor")
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=_ints(sizes)[2:], mode="nearest")
    factors = [float(s) for s in scales.reshape(-1).tolist()]
    if factors[:2] != [1.0, 1.0] or any(f != int(f) for f in factors[2:]):
        raise NotImplementedError(f"Resize by scales {factors}: only integer spatial factors")
    return F.interpolate(x, scale_factor=factors[2:], mode="nearest")  # integer factors: index // factor


@_op("HardSigmoid")
def _hard_sigmoid(a, x):
    return (x * a.get("alpha", 0.2) + a.get("beta", 0.5)).clamp_(0.0, 1.0)


@_op("Softmax")
def _softmax(a, x):
    axis = a.get("axis", 1) % x.dim()  # opset < 13: softmax over the dims from `axis` on, flattened
    if axis == x.dim() - 1:
        return torch.softmax(x, dim=-1)
    return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


@_op("ReduceMean")
def _reduce_mean(a, x):
    axes = a.get("axes", list(range(x.dim())))
    return x.mean(dim=tuple(axes), keepdim=bool(a.get("keepdims", 1)))


@_op("Transpose")
def _transpose(a, x):
    return x.permute(*a.get("perm", list(reversed(range(x.dim())))))


@_op("Reshape")
def _reshape(a, x, shape):
    dims = _ints(shape)
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])  # 0: keep that dim (allowzero=0)


@_op("Squeeze")
def _squeeze(a, x):
    axes = a.get("axes")
    return x.squeeze() if axes is None else x.squeeze(tuple(axes))


@_op("Unsqueeze")
def _unsqueeze(a, x):
    for axis in sorted(d % (x.dim() + len(a["axes"])) for d in a["axes"]):
        x = x.unsqueeze(axis)
    return x


@_op("Concat")
def _concat(a, *xs):
    return torch.cat(xs, dim=a["axis"])


@_op("Shape")
def _shape(a, x):
    return torch.tensor(x.shape, dtype=torch.int64)  # on the CPU: shapes are host data


@_op("Slice")
def _slice(a, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise NotImplementedError("Slice with a negative step")
        index[axis] = slice(start, min(end, x.shape[axis]), step)  # ends past the axis (INT64_MAX) clip
    return x[tuple(index)]


_OPS.update({
    "Identity": lambda a, x: x,
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "Pow": lambda a, x, y: torch.pow(x, y),
    "MatMul": lambda a, x, y: torch.matmul(x, y),
    "Relu": lambda a, x: torch.relu(x),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Erf": lambda a, x: torch.erf(x),
})

# Operators that only evalsuite's fusions emit (:mod:`evalsuite.ocr.onnx_fusion`): ONNX's later
# Gelu and LayerNormalization, and MatMulAdd (x @ w + b with w stored as [out, in]). A file's node
# of these types is refused: at opsets 11/12 they are not ONNX's.
_FUSED = {
    "Gelu": lambda a, x: F.gelu(x),
    "LayerNormalization": lambda a, x, scale, bias: F.layer_norm(x, x.shape[a["axis"]:], scale, bias,
                                                                 a["epsilon"]),
    "MatMulAdd": lambda a, x, weight, bias: F.linear(x, weight, bias),
}
_OPS.update(_FUSED)

# attributes whose values the interpreter reads; any other attribute on a node is refused
_KNOWN_ATTRIBUTES = {
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "ConvTranspose": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", "output_padding"},
    "MaxPool": {"auto_pad", "ceil_mode", "kernel_shape", "pads", "strides"},
    "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"},
    "BatchNormalization": {"epsilon", "momentum"},  # momentum: training only
    "Resize": {"coordinate_transformation_mode", "mode", "nearest_mode"},
    "HardSigmoid": {"alpha", "beta"},
    "Softmax": {"axis"},
    "ReduceMean": {"axes", "keepdims"},
    "Transpose": {"perm"},
    "Squeeze": {"axes"},
    "Unsqueeze": {"axes"},
    "Concat": {"axis"},
}


class _Node(NamedTuple):
    where: str  # file, index, type and name: the prefix of its errors
    op: str  # its operator: the file's, or the one a fusion put in its place
    fn: Op
    attributes: dict[str, Any]
    inputs: list[str]  # "" for an omitted optional input (trailing ones dropped)
    outputs: list[str]
    free: list[str]  # values no later node reads, dropped after this one


class OnnxModule(torch.nn.Module):
    """An ONNX model (``onnx.ModelProto`` or a path) as a torch module: ``module(*inputs)`` takes
    the graph's inputs as tensors, in order, and returns its first output.

    Float constants become buffers (``.to(device)`` moves them); integer ones, which
    describe shapes, stay on the CPU. With ``fuse`` (by default, unless
    ``EVALSUITE_ONNX_FUSION=0``), chains of nodes that torch runs in one call are run as
    one (:mod:`evalsuite.ocr.onnx_fusion`).
    """

    def __init__(self, model: Any, source: str | None = None, fuse: bool | None = None):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        from . import onnx_fusion
        from .onnx_fusion import GraphNode

        fuse = onnx_fusion.ENABLED if fuse is None else fuse

        if isinstance(model, (str, Path)):
            source, model = str(model), onnx.load(str(model))
        self.source = source or "<onnx model>"
        opsets = {o.domain: o.version for o in model.opset_import}
        if opsets.get("", opsets.get("ai.onnx", 0)) > 12:
            raise ValueError(f"{self.source}: opset {opsets} is not supported (the interpreter implements "
                             "opset-11/12 semantics: Squeeze/Unsqueeze axes as attributes, 2-D Softmax)")
        graph = model.graph
        constants = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in constants]
        self.output_names = [o.name for o in graph.output]
        nodes: list[GraphNode] = []
        for index, node in enumerate(graph.node):
            where = f"{self.source}: node {index} ({node.op_type} {node.name!r})"
            if node.op_type == "Constant":
                constants[node.output[0]] = torch.from_numpy(numpy_helper.to_array(node.attribute[0].t).copy())
                continue
            if node.op_type not in _OPS or node.op_type in _FUSED or node.domain not in ("", "ai.onnx"):
                raise NotImplementedError(f"{where}: operator {node.domain or 'ai.onnx'}.{node.op_type} "
                                          "is not implemented by evalsuite's ONNX interpreter")
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            unknown = set(attributes) - _KNOWN_ATTRIBUTES.get(node.op_type, set())
            if unknown:
                raise NotImplementedError(f"{where}: attributes {sorted(unknown)} are not implemented")
            nodes.append(GraphNode(node.op_type, list(node.input), list(node.output), attributes, where))
        if fuse:
            nodes = onnx_fusion.fuse(nodes, constants, self.output_names)
        read = {name for node in nodes for name in node.inputs} | set(self.output_names)
        self._constants: dict[str, torch.Tensor | str] = {}  # a tensor, or the name of a float buffer
        for name, tensor in constants.items():
            if name in read:  # an unfused chain's constants (a conv bias, say) are no longer read
                self._hold(name, tensor)
        self._values: dict[str, Any] | None = None  # the constants where they are now (see forward)
        self._nodes: list[_Node] = []
        for node in nodes:
            inputs = list(node.inputs)
            while inputs and not inputs[-1]:
                inputs.pop()
            self._nodes.append(_Node(node.where, node.op, _OPS[node.op], node.attributes, inputs, node.outputs, []))
        last_use = {}  # value name -> index of the last node that reads it
        for index, node in enumerate(self._nodes):
            last_use.update((name, index) for name in node.inputs if name)
        for name, index in last_use.items():
            if name not in self.output_names and name not in self._constants:
                self._nodes[index].free.append(name)

    def _hold(self, name: str, tensor: torch.Tensor) -> None:
        """Keep a constant: a float one as a buffer (it moves with the module), an integer one on the CPU."""
        if tensor.is_floating_point():
            buffer = f"c{len(self._buffers)}"
            self.register_buffer(buffer, tensor)
            self._constants[name] = buffer
        else:
            self._constants[name] = tensor

    def _apply(self, fn, *args, **kwargs):
        self._values = None  # buffers are new tensors after .to(), .half() & co.
        return super()._apply(fn, *args, **kwargs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"{self.source} takes {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        if self._values is None:
            self._values = {"": None} | {name: self._buffers[value] if isinstance(value, str) else value
                                         for name, value in self._constants.items()}
        values = self._values | dict(zip(self.input_names, inputs))
        for where, _, fn, attributes, names, outputs, free in self._nodes:
            try:
                result = fn(attributes, *[values[name] for name in names])
            except NotImplementedError as error:
                raise NotImplementedError(f"{where}: {error}") from None
            if len(outputs) == 1:
                values[outputs[0]] = result
            else:
                values.update(zip(outputs, result if isinstance(result, tuple) else (result,)))
            for name in free:
                del values[name]
        return values[self.output_names[0]]
