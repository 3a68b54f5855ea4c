"""Rewrites of an ONNX node list into fewer, larger torch calls, for :mod:`evalsuite.ocr.onnx_torch`.

The PP-OCR graphs that rapidocr bundles spell out what torch does in one call:
a convolution's bias as an Add after it, a linear layer's bias as an Add after
its MatMul, GELU as five elementwise nodes (``x * (1 + erf(x / sqrt 2)) * 0.5``),
LayerNorm as nine; and about 140 of their ~470 nodes are Identity. Each node the
interpreter runs costs host time and, on a GPU, a kernel launch and a pass over
memory. Fused, the det and rec graphs run well under half as many nodes, and a
read takes less time on the CPU too, with the same texts (docs/performance.md).

A rewrite matches a chain whose intermediate values have one reader each and
are no graph output, and puts one node where the chain's last node was (every
input exists by then). Fused nodes use ONNX's later operators where one exists
(``Gelu``, opset 20; ``LayerNormalization``, opset 17) and ``MatMulAdd``
(evalsuite's: ``x @ w + b``, ``w`` stored transposed, as ``torch.nn.functional.linear``
takes it) otherwise. A chain that differs in any way is left as it is.
``EVALSUITE_ONNX_FUSION=0`` runs the graphs node by node (to compare the two).

>>> nodes = [GraphNode("Conv", ["x", "w"], ["c"], {}, "n0"), GraphNode("Add", ["c", "b"], ["y"], {}, "n1")]
>>> constants = {"w": torch.ones(4, 3, 1, 1), "b": torch.arange(4.0).reshape(1, 4, 1, 1)}
>>> [(n.op, n.inputs, n.outputs) for n in fuse(nodes, constants, outputs=["y"])]
[('Conv', ['x', 'w', 'b/as_bias'], ['y'])]
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch


ENABLED = os.environ.get("EVALSUITE_ONNX_FUSION", "1") != "0"  # OnnxModule's default


@dataclass
class GraphNode:
    op: str
    inputs: list[str]  # "" for an omitted optional input
    outputs: list[str]
    attributes: dict[str, Any]
    where: str  # file, index, type and name: the prefix of its errors


class _Graph:
    """Who produces and who reads each value of ``nodes``, for matching chains."""

    def __init__(self, nodes: list[GraphNode], constants: dict[str, torch.Tensor], outputs: Iterable[str]):
        self.constants = constants
        self.outputs = set(outputs)
        self.producer = {name: node for node in nodes for name in node.outputs}
        self.readers: dict[str, list[GraphNode]] = defaultdict(list)
        for node in nodes:
            for name in set(node.inputs):
                if name:
                    self.readers[name].append(node)

    def only_reader(self, node: GraphNode, op: str) -> GraphNode | None:
        """The one node reading ``node``'s output if it is an ``op`` node (and the output no graph output)."""
        readers = self.readers.get(node.outputs[0], [])
        if len(node.outputs) == 1 and len(readers) == 1 and readers[0].op == op and node.outputs[0] not in self.outputs:
            return readers[0]
        return None

    def other_input(self, node: GraphNode | None, name: str) -> str | None:
        """The input of two-input ``node`` that is not ``name`` (None if ``name`` is not one of them)."""
        if node is None or len(node.inputs) != 2 or name not in node.inputs:
            return None
        first, second = node.inputs
        return second if first == name else first

    def constant(self, name: str | None) -> torch.Tensor | None:
        value = self.constants.get(name) if name else None
        return value if value is not None and value.is_floating_point() else None

    def scalar_is(self, name: str | None, expected: float) -> bool:
        value = self.constant(name)
        return value is not None and value.numel() == 1 and math.isclose(float(value), expected, rel_tol=1e-6)


# A fusion looks at one node of the graph; where a chain starts there, it returns the chain's nodes
# (in graph order) and the node that replaces them, adding any constant it needs to graph.constants.
Fusion = Callable[[_Graph, GraphNode], "tuple[list[GraphNode], GraphNode] | None"]


def _conv_bias(graph: _Graph, conv: GraphNode):
    """Conv(x, w) + b, with b [1, C, 1, 1] or [C, 1, 1]: the bias goes into the convolution."""
    if conv.op != "Conv" or len([i for i in conv.inputs if i]) != 2:
        return None
    add = graph.only_reader(conv, "Add")
    bias_name = graph.other_input(add, conv.outputs[0])
    weight, bias = graph.constant(conv.inputs[1]), graph.constant(bias_name)
    channels = None if weight is None else weight.shape[0]
    if bias is None or bias.dim() not in (3, 4) or bias.numel() != channels or bias.shape[-3] != channels:
        return None
    flat = f"{bias_name}/as_bias"
    graph.constants[flat] = bias.reshape(channels)
    return [conv, add], GraphNode("Conv", [conv.inputs[0], conv.inputs[1], flat], add.outputs, conv.attributes,
                                  f"{conv.where} with its bias Add")


def _matmul_bias(graph: _Graph, matmul: GraphNode):
    """MatMul(x, w) + b, with w a [in, out] constant and b [out]: one linear call."""
    if matmul.op != "MatMul":
        return None
    weight = graph.constant(matmul.inputs[1])
    add = graph.only_reader(matmul, "Add")
    bias_name = graph.other_input(add, matmul.outputs[0])
    bias = graph.constant(bias_name)
    if weight is None or weight.dim() != 2 or bias is None or bias.shape != weight.shape[1:]:
        return None
    transposed = f"{matmul.inputs[1]}/transposed"
    graph.constants[transposed] = weight.t().contiguous()
    return [matmul, add], GraphNode("MatMulAdd", [matmul.inputs[0], transposed, bias_name], add.outputs, {},
                                    f"{matmul.where} with its bias Add")


def _gelu(graph: _Graph, div: GraphNode):
    """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5: GELU (the erf form)."""
    if div.op != "Div" or not graph.scalar_is(div.inputs[1], math.sqrt(2)):
        return None
    x = div.inputs[0]
    erf = graph.only_reader(div, "Erf")
    plus_one = erf and graph.only_reader(erf, "Add")
    times_x = plus_one and graph.only_reader(plus_one, "Mul")
    half = times_x and graph.only_reader(times_x, "Mul")
    if (half is None or not graph.scalar_is(graph.other_input(plus_one, erf.outputs[0]), 1.0)
            or graph.other_input(times_x, plus_one.outputs[0]) != x
            or not graph.scalar_is(graph.other_input(half, times_x.outputs[0]), 0.5)):
        return None
    return [div, erf, plus_one, times_x, half], GraphNode("Gelu", [x], half.outputs, {}, f"{div.where} as GELU")


def _is_last_axis_mean(node: GraphNode | None) -> bool:
    return (node is not None and node.op == "ReduceMean" and list(node.attributes.get("axes", [])) == [-1]
            and node.attributes.get("keepdims", 1) == 1)


def _layer_norm(graph: _Graph, mean: GraphNode):
    """d = x - mean(x); d / sqrt(mean(d ** 2) + eps) * scale + bias, over the last axis: LayerNorm."""
    if not _is_last_axis_mean(mean):
        return None
    x = mean.inputs[0]
    centre = graph.only_reader(mean, "Sub")
    if centre is None or centre.inputs != [x, mean.outputs[0]]:
        return None
    readers = sorted(graph.readers.get(centre.outputs[0], []), key=lambda node: node.op)
    if [node.op for node in readers] != ["Div", "Pow"] or centre.outputs[0] in graph.outputs:
        return None
    normalise, square = readers
    variance = graph.only_reader(square, "ReduceMean")
    plus_eps = _is_last_axis_mean(variance) and graph.only_reader(variance, "Add")
    root = plus_eps and graph.only_reader(plus_eps, "Sqrt")
    eps = plus_eps and graph.constant(graph.other_input(plus_eps, variance.outputs[0]))
    if (not root or eps is None or eps.numel() != 1 or square.inputs[0] != centre.outputs[0]
            or not graph.scalar_is(square.inputs[1], 2.0) or graph.only_reader(root, "Div") is not normalise
            or normalise.inputs != [centre.outputs[0], root.outputs[0]]):
        return None
    scale = graph.only_reader(normalise, "Mul")
    shift = scale and graph.only_reader(scale, "Add")
    scale_name = graph.other_input(scale, normalise.outputs[0])
    shift_name = shift and graph.other_input(shift, scale.outputs[0])
    weight, bias = graph.constant(scale_name), graph.constant(shift_name)
    if weight is None or bias is None or weight.dim() != 1 or weight.shape != bias.shape or weight.numel() < 2:
        return None
    chain = [mean, centre, square, variance, plus_eps, root, normalise, scale, shift]
    return chain, GraphNode("LayerNormalization", [x, scale_name, shift_name], shift.outputs,
                            {"axis": -1, "epsilon": float(eps)}, f"{mean.where} as LayerNorm")


FUSIONS: tuple[Fusion, ...] = (_conv_bias, _matmul_bias, _gelu, _layer_norm)


def drop_identities(nodes: list[GraphNode], outputs: Iterable[str]) -> list[GraphNode]:
    """``nodes`` without Identity nodes, their readers reading the Identity's input instead
    (an Identity whose output is a graph output stays)."""
    outputs = set(outputs)
    alias: dict[str, str] = {}
    kept = []
    for node in nodes:
        inputs = [alias.get(name, name) for name in node.inputs]
        if node.op == "Identity" and node.outputs[0] not in outputs:
            alias[node.outputs[0]] = inputs[0]
        else:
            kept.append(GraphNode(node.op, inputs, node.outputs, node.attributes, node.where))
    return kept


def fuse(nodes: list[GraphNode], constants: dict[str, torch.Tensor], outputs: Iterable[str]) -> list[GraphNode]:
    """``nodes`` with Identity nodes dropped and every chain that :data:`FUSIONS` match replaced by
    one node. Constants the fused nodes need are added to ``constants``."""
    outputs = list(outputs)
    nodes = drop_identities(nodes, outputs)
    for fusion in FUSIONS:
        graph = _Graph(nodes, constants, outputs)
        replaced: dict[int, GraphNode | None] = {}  # id of a chain's node -> its replacement (last node) or None
        for node in nodes:
            if id(node) in replaced:
                continue
            match = fusion(graph, node)
            if match is None:
                continue
            chain, fused = match
            if any(id(member) in replaced for member in chain):
                continue
            replaced.update((id(member), None) for member in chain)
            replaced[id(chain[-1])] = fused
        nodes = [replaced.get(id(node), node) for node in nodes if id(node) not in replaced or replaced[id(node)]]
    return nodes
