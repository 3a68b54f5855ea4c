"""The ONNX interpreter that runs the OCR models on a GPU: onnxruntime is the reference.

Each check runs the same graph through onnxruntime (CPU) and :class:`OnnxModule`
on the CPU and, with ``-m gpu``, on CUDA, and compares the outputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from evalsuite.ocr.onnx_torch import OnnxModule

MODELS = Path(importlib.util.find_spec("rapidocr").origin).parent / "models"
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def run_both(model: onnx.ModelProto | Path, inputs: list[np.ndarray], device: str) -> tuple[np.ndarray, np.ndarray]:
    """(onnxruntime's output, the interpreter's output on ``device``) for the same inputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})[0]
    module = OnnxModule(model).to(device)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        got = module(*(torch.from_numpy(x).to(device) for x in inputs)).cpu().numpy()
    return expected, got


def one_node(op: str, inputs: dict[str, list[int]], output_rank: int, initializers=(), **attributes):
    """A model of one ``op`` node over float inputs of the given shapes."""
    node = helper.make_node(op, list(inputs) + [i.name for i in initializers], ["y"], **attributes)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7  # what opset 11 needs: onnxruntime refuses IR versions newer than it knows
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,shape", [
    ("PP-OCRv6_det_small.onnx", (1, 3, 736, 512)),  # a receipt page, as rapidocr resizes it
    ("PP-OCRv6_rec_small.onnx", (6, 3, 48, 567)),  # six text lines padded to one width
])
def test_bundled_ocr_models_match_onnxruntime(model, shape, device):
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    expected, got = run_both(MODELS / model, [x], device)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(9, 14), (10, 15), (7, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_upper_padding_matches_onnxruntime_on_odd_and_even_sizes(size, stride, device):
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 2)).astype(np.float32), "w")
    conv = one_node("Conv", {"x": [1, 3, *size]}, 4, [weight], auto_pad="SAME_UPPER",
                    kernel_shape=[3, 2], strides=[stride, stride])
    pool = one_node("MaxPool", {"x": [1, 3, *size]}, 4, auto_pad="SAME_UPPER", kernel_shape=[2, 2],
                    strides=[stride, stride])
    x = rng.standard_normal((1, 3, *size)).astype(np.float32)
    for model in (conv, pool):
        expected, got = run_both(model, [x], device)
        assert got.shape == expected.shape == (1, expected.shape[1], -(-size[0] // stride), -(-size[1] // stride))
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_softmax_follows_opset_11_over_the_flattened_trailing_axes():
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    expected, got = run_both(one_node("Softmax", {"x": [2, 3, 4]}, 3, axis=1), [x], "cpu")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, torch.softmax(torch.from_numpy(x), dim=1).numpy())  # not a softmax over dim 1


def test_an_unimplemented_operator_is_refused_naming_node_and_file():
    model = one_node("Tanh", {"x": [2]}, 1)
    model.graph.node[0].name = "Tanh_7"
    with pytest.raises(NotImplementedError, match=r"cell\.onnx: node 0 \(Tanh 'Tanh_7'\).*ai\.onnx\.Tanh"):
        OnnxModule(model, source="cell.onnx")


def test_an_unread_attribute_is_refused_rather_than_ignored():
    model = one_node("Softmax", {"x": [2]}, 1, axis=0)
    model.graph.node[0].attribute.append(helper.make_attribute("exotic", 1))
    with pytest.raises(NotImplementedError, match=r"attributes \['exotic'\]"):
        OnnxModule(model)


def test_a_later_opset_is_refused():
    model = one_node("Relu", {"x": [2]}, 1)
    model.opset_import[0].version = 13
    with pytest.raises(ValueError, match="opset"):
        OnnxModule(model)
