"""The interpreter's node fusions: each pattern the OCR graphs spell out fuses into one node
and computes what onnxruntime computes for the unfused graph; a chain that differs stays."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from evalsuite.ocr.onnx_torch import OnnxModule
from .test_onnx_torch import DEVICES, MODELS, run_both

RNG = np.random.default_rng(0)


def constant(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def model_of(nodes, inputs: dict[str, list[int]], outputs: list[str], initializers):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


def ops(module: OnnxModule) -> list[str]:
    return [node.op for node in module._nodes]


def conv_bias():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["y"])]
    inits = [constant("w", RNG.standard_normal((4, 3, 3, 3))), constant("b", RNG.standard_normal((1, 4, 1, 1)))]
    return model_of(nodes, {"x": [2, 3, 8, 8]}, ["y"], inits), [2, 3, 8, 8]


def matmul_bias():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    inits = [constant("w", RNG.standard_normal((6, 5))), constant("b", RNG.standard_normal(5))]
    return model_of(nodes, {"x": [2, 7, 6]}, ["y"], inits), [2, 7, 6]


def gelu():
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    inits = [constant("sqrt2", math.sqrt(2)), constant("one", 1.0), constant("half", 0.5)]
    return model_of(nodes, {"x": [2, 5, 6]}, ["y"], inits), [2, 5, 6]


def layer_norm(eps=1e-5):
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
             helper.make_node("Sub", ["x", "mean"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["g"]),
             helper.make_node("Add", ["g", "beta"], ["y"])]
    inits = [constant("two", 2.0), constant("eps", eps), constant("gamma", RNG.standard_normal(6)),
             constant("beta", RNG.standard_normal(6))]
    return model_of(nodes, {"x": [2, 5, 6]}, ["y"], inits), [2, 5, 6]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pattern,fused", [(conv_bias, "Conv"), (matmul_bias, "MatMulAdd"), (gelu, "Gelu"),
                                           (layer_norm, "LayerNormalization")])
def test_each_pattern_fuses_into_one_node_computing_what_onnxruntime_computes(pattern, fused, device):
    model, shape = pattern()
    module = OnnxModule(model)
    assert ops(module) == [fused]
    x = RNG.standard_normal(shape).astype(np.float32)
    expected, got = run_both(model, [x], device)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", [conv_bias, matmul_bias, gelu, layer_norm])
def test_a_chain_whose_intermediate_value_is_also_an_output_is_not_fused(pattern):
    model, shape = pattern()
    second = model.graph.node[0].output[0]  # the first node's value, read by the chain: now also an output
    model.graph.output.insert(0, helper.make_tensor_value_info(second, TensorProto.FLOAT, None))
    module = OnnxModule(model)
    assert len(module._nodes) == len(model.graph.node)
    x = RNG.standard_normal(shape).astype(np.float32)
    expected, got = run_both(model, [x], "cpu")
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_chains_that_differ_from_the_pattern_stay_as_they_are():
    model, _ = gelu()
    model.graph.initializer[2].CopyFrom(constant("half", 0.25))  # not GELU's 0.5
    assert len(OnnxModule(model)._nodes) == 5
    model, _ = layer_norm()
    model.graph.node[3].attribute[0].ints[:] = [1]  # variance over another axis
    assert len(OnnxModule(model)._nodes) == 9
    model, _ = conv_bias()
    model.graph.initializer[1].CopyFrom(constant("b", RNG.standard_normal((1, 4, 8, 8))))  # a per-pixel add
    assert len(OnnxModule(model)._nodes) == 2


def test_identity_nodes_are_dropped_unless_they_give_a_graph_output():
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    module = OnnxModule(model_of(nodes, {"x": [3]}, ["y"], []))
    assert ops(module) == ["Relu", "Identity"]
    assert module(torch.tensor([-1.0, 0.5, 2.0])).tolist() == [0.0, 0.5, 2.0]


def test_bundled_ocr_graphs_fuse_every_gelu_and_bias_and_run_under_half_their_nodes():
    for name in ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx"):
        fused, plain = OnnxModule(MODELS / name), OnnxModule(MODELS / name, fuse=False)
        kinds, plain_kinds = Counter(ops(fused)), Counter(ops(plain))
        assert kinds["Gelu"] == plain_kinds["Erf"] > 0 and kinds["Identity"] == kinds["Erf"] == 0, name
        assert kinds["MatMulAdd"] + kinds["MatMul"] == plain_kinds["MatMul"], name
        assert len(fused._nodes) < 0.45 * len(plain._nodes), (name, len(fused._nodes), len(plain._nodes))
        assert len(fused._buffers) < len(plain._buffers)  # unfused biases and weights are not held twice


def test_a_file_node_of_an_operator_only_fusions_emit_is_refused():
    model = model_of([helper.make_node("Gelu", ["x"], ["y"])], {"x": [3]}, ["y"], [])
    with pytest.raises(NotImplementedError, match=r"node 0 \(Gelu .*not implemented"):
        OnnxModule(model)


def test_fusion_can_be_turned_off_for_a_comparison_and_reads_say_which(monkeypatch):
    from evalsuite.ocr import onnx_fusion
    from evalsuite.ocr.engines import RapidOcrEngine

    model, _ = gelu()
    monkeypatch.setattr(onnx_fusion, "ENABLED", False)  # what EVALSUITE_ONNX_FUSION=0 sets at import
    assert len(OnnxModule(model)._nodes) == 5
    assert RapidOcrEngine(runtime="torch").version_info()["runtime"].endswith(" float32 node by node")
