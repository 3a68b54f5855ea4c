"""The model-adapter contract: what the harness needs from an encoder family.

An adapter wraps one loaded encoder and exposes two passes over the same
preprocessed pixels: :meth:`reference` runs the unpatched model (the ground
truth every method is compared with) and :meth:`compressed` runs the family's
patched forward with a :class:`~evalsuite.methods.base.Compressor`.
To add a family (a VLM's own vision tower, say):

1. write ``evalsuite/patch/<family>.py`` with ``check_supported(model)`` and
   ``forward_tokens(model, pixels, run) -> tokens [B, N_out, C]`` that calls
   ``run.prepare/begin/attend/after_attention/after_block`` (copy the family's
   block code, fence the changes);
2. subclass :class:`ModelAdapter` here: set the attributes, implement
   ``_reference_tokens`` and ``_pool``;
3. register a factory in ``evalsuite/models/__init__.py`` and add the family
   to the parity test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MethodType, ModuleType

import numpy as np
import torch
from PIL import Image

from ..methods.base import Compressor
from ..patch.runner import CompressedForward, StepTimer, weights_state
from ..plan import TokenPlan
from ..workers import thread_map

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, kept by open_clip and transformers
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class EncoderOutput:
    """Encoder output for a batch.

    ``tokens`` [B, N, C] final-normed (prefix tokens first), ``sizes`` [B, N]
    input patches per token, ``pooled`` [B, C] the image embedding, ``plans``
    one :class:`TokenPlan` per image (None from a forward run without them, as
    timed forwards are), ``compression_seconds`` the timed compression work of
    this forward (0 unless a timer was enabled).
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    pooled: torch.Tensor
    plans: list[TokenPlan] | None
    num_prefix: int
    compression_seconds: float = 0.0

    @property
    def patch_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.num_prefix:]

    @property
    def patch_sizes(self) -> torch.Tensor:
        return self.sizes[:, self.num_prefix:]


class ModelAdapter:
    """One loaded encoder. Subclasses set the attributes and two methods."""

    family: str  # name of the module in evalsuite.patch
    patch: ModuleType  # that module
    labels: tuple[str, ...] = ()  # e.g. ("random-weights",): shown with every figure
    native_grid_only = False  # True: the unpatched model runs at image_size alone (its positions are fixed)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, name: str, model: torch.nn.Module, image_size: int, patch_size: int,
                 num_prefix: int, num_layers: int, embed_dim: int, random_weights: bool = False):
        if random_weights:
            self.labels = (*self.labels, "random-weights")
        self.name, self.model = name, model.eval()
        self.image_size, self.patch_size = image_size, patch_size
        self.num_prefix, self.num_layers, self.embed_dim = num_prefix, num_layers, embed_dim
        self.patch.check_supported(model)
        if image_size % patch_size:
            raise ValueError(f"model {name}: image_size {image_size} is not a multiple of patch size {patch_size}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ModelAdapter":
        self.model.to(device=device, dtype=dtype)
        return self

    # -- input ------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> normalised pixels [B, 3, S, S] (whole image resized, aspect not kept)."""
        size = (self.image_size, self.image_size)
        arrays = thread_map(lambda img: np.asarray(img.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32),
                            images)
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.device, self.dtype)

    # -- passes -------------------------------------------------------------------
    @torch.inference_mode()
    def reference(self, pixels: torch.Tensor) -> EncoderOutput:
        """The unpatched model's own forward."""
        tokens = self._reference_tokens(pixels)
        sizes = torch.ones(tokens.shape[:2], device=tokens.device, dtype=tokens.dtype)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        plans = [TokenPlan.identity(grid)] * pixels.shape[0]
        return EncoderOutput(tokens, sizes, self._pool(tokens, sizes), plans, self.num_prefix)

    @torch.inference_mode()
    def compressed(self, pixels: torch.Tensor, compressor: Compressor, timer: StepTimer | None = None,
                   plans: bool = True) -> EncoderOutput:
        """The family's patched forward running ``compressor``.

        ``plans=False`` leaves out the token plans (``plans`` is None): where each input patch
        went is the evaluation's bookkeeping, not the method's work. Composing the per-block
        index maps and copying them to the host costs a synchronisation and many small kernels
        (a sizeable share of a graphed forward's: docs/performance.md), so timed forwards run
        without it.
        """
        run = CompressedForward(compressor, self.patch_size, timer)
        tokens = self.patch.forward_tokens(self.model, pixels, run)
        sizes = run.token_sizes()
        return EncoderOutput(tokens, sizes, self._pool(tokens, sizes), run.plans() if plans else None,
                             self.num_prefix, run.timer.seconds)

    @torch.inference_mode()
    def graphed(self, compressor: Compressor, pixels: torch.Tensor, plans: bool = True):
        """A CUDA-graph replay of the compressed forward for inputs shaped like ``pixels``.

        Shapes are static for a given method, batch and image size, so the whole
        forward (attention, matching, gathers) is captured once and replayed with
        one launch: the per-layer launch overhead of the compression hooks is
        gone. Returns ``forward(pixels) -> EncoderOutput`` (outputs are cloned);
        ``plans=False`` captures no token-plan bookkeeping (see :meth:`compressed`).
        """
        if pixels.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA input")
        static = pixels.clone()

        def capture_body():
            run = CompressedForward(compressor, self.patch_size)
            tokens = self.patch.forward_tokens(self.model, static, run)
            sizes = run.token_sizes()
            return run, tokens, sizes, self._pool(tokens, sizes), run.state.source if plans else None

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (kernel selection, allocator)
                capture_body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run, tokens, sizes, pooled, source = capture_body()

        @torch.inference_mode()
        def forward(px: torch.Tensor) -> EncoderOutput:
            static.copy_(px)
            graph.replay()
            return EncoderOutput(tokens.clone(), sizes.clone(), pooled.clone(),
                                 run.plans(source.clone()) if plans else None, self.num_prefix)

        return forward

    def _reference_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """[B, N, C], [B, N] -> [B, C]: the image embedding, size-aware for merged tokens."""
        raise NotImplementedError


class WeightsMemo:
    """Tensors computed from some weights alone, kept per key until those weights change.

    ``memo(weights, key, compute)`` returns ``compute()``, kept per ``key`` (plus whether inference
    mode is on) as long as every tensor in ``weights`` keeps its storage, version, dtype and device:
    replacing, moving or writing one in place empties the memo. It is bypassed where gradients are
    recorded and while tracing, stores nothing during CUDA graph capture (the value would live in the
    graph's private pool) and holds at most ``keep`` entries. A deep copy starts empty.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._values: dict[tuple, torch.Tensor] = {}
        self._weights: tuple = ()  # the state of the weights the memo was filled from

    def __call__(self, weights: Iterable[torch.Tensor], key: tuple,
                 compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return compute()
        state = tuple(weights_state(w) for w in weights)
        if state != self._weights:
            self._values.clear()
            self._weights = state
        key = (*key, torch.is_inference_mode_enabled())
        value = self._values.get(key)
        if value is None:
            value = compute()
            if not (value.is_cuda and torch.cuda.is_current_stream_capturing()):
                self._values[key] = value
                while len(self._values) > self.keep:
                    self._values.pop(next(iter(self._values)))
        return value

    def __deepcopy__(self, memo: dict) -> "WeightsMemo":
        return WeightsMemo(self.keep)


def memoize_position_embeddings(embeddings: torch.nn.Module, keep: int = 4) -> None:
    """Keep the results of ``embeddings.interpolate_pos_encoding`` (transformers' DINOv2, CLIP and
    SigLIP embeddings) per input grid, instead of resampling in every forward.

    transformers resamples the position embeddings bicubically in every forward whose patch grid
    differs from the checkpoint's (DINOv2 at 224 px, every downscaled input). PyTorch's CUDA bicubic
    kernel runs one thread per output position over all channels, so it costs about as much as a
    whole block whatever the batch (docs/performance.md, "ToMe merge step"). The result is a
    function of the weights and the grid alone, so a :class:`WeightsMemo` keeps it
    per (embedding shape, dtype, device, height, width) while the embeddings' parameters stay as they
    are. Installed as instance attributes (a bound method and its memo, so a deep copy of the model
    resamples its own weights): both passes (:meth:`ModelAdapter.reference` and
    :meth:`ModelAdapter.compressed`) see it, so speedups stay comparable; the model's class and
    weights are untouched. timm ViTs get the same through
    :func:`evalsuite.models.timm_vit.memoize_position_embeddings`.
    """
    embeddings.evalsuite_position_memo = WeightsMemo(keep)
    embeddings.interpolate_pos_encoding = MethodType(_memoized_interpolate_pos_encoding, embeddings)


def _memoized_interpolate_pos_encoding(self: torch.nn.Module, x: torch.Tensor, height: int,
                                       width: int) -> torch.Tensor:
    original = type(self).interpolate_pos_encoding
    key = (tuple(x.shape[1:]), x.dtype, x.device, height, width)
    return self.evalsuite_position_memo(self.parameters(), key, lambda: original(self, x, height, width))


def weighted_mean(tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Size-weighted mean over tokens: [B, N, C], [B, N] -> [B, C]."""
    w = sizes[..., None].to(tokens.dtype)
    return (tokens * w).sum(dim=1) / w.sum(dim=1)
