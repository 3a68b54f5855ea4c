"""Visual-token dropping inside the language model of a Qwen2-VL-family VLM (V2Drop, FastV), and greedy generation.

The prefill runs the model's own decoder layers (``model.model.language_model.layers``) in a loop of this
module, so that visual tokens can leave the sequence between two layers; decoding then continues from the
kept KV cache. Weights are never touched and the layers' forwards are transformers' own.

Methods (a *drop layer* ``l`` means: layers ``< l`` see every token, layers ``>= l`` only the kept ones):

- **V2Drop** (arXiv 2509.01552): before layer ``l``, score each visual token by how much layer ``l - 1``
  changed its hidden state, ``||h_l - h_{l-1}||_2`` (inputs of layers ``l`` and ``l - 1``), and keep the
  most-changed ``floor(n * keep)`` of the ``n`` visual tokens still present in that image. Ratios are relative
  to the tokens still present, as in the authors' code (``V2DROP_PRESETS``: LLaVA layers 3/17/22 keep
  0.5/0.5/0, 576 -> 288 -> 144 -> 0; Qwen2-VL layers 3/16/22 keep 0.25/0.05/0). One deliberate difference:
  the authors keep ``max(1, ...)`` tokens (an artefact of ``torch.topk``); here keep 0 drops them all.
- **FastV** (arXiv 2403.06764): before layer ``k``, keep the ``floor(n * keep)`` visual tokens of each image
  that the last token attended to most at layer ``k - 1`` (softmax weights averaged over heads). Only that
  one row of attention is computed explicitly, from layer ``k - 1``'s cached (rotated) keys and the last
  token's query: every layer, ``k - 1`` included, keeps the fused SDPA kernel.

Text tokens (everything that is not an image placeholder) are never dropped. Each image of a sample is its
own group: the kept count is per image.

Batches with left padding: after a drop the samples keep different numbers of tokens. The kept tokens of
each sample are gathered in their original order and left-padded to the batch's longest kept length with
*filler slots* (``valid = False``) that no query attends to. So the last column is every sample's last
token, decoding appends one column for all samples, and each layer's KV cache is one dense tensor
``[B, kv_heads, L_l, head_dim]`` (``L_l`` = the length that layer saw). Positions (3-row M-RoPE) are
gathered with the tokens, never recomputed: a kept token keeps the position it had in the unpruned
sequence, and the next generated token gets ``max position + 1`` of its sample, as without dropping.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from ..methods.spec import V2DROP_PRESETS  # the published schedules: torch-free there, so the matrix checks them

FASTV_DEFAULT = {"k": 2, "keep": 0.5}  # the paper's K=2, R=50%


# --------------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class DropSchedule:
    """Where and how much to drop: ``layers[i]`` keeps ``keep[i]`` of the visual tokens present there.

    ``method`` is ``"v2drop"`` (score: hidden-state variation) or ``"fastv"`` (score: last token's attention).
    An empty schedule drops nothing.
    """

    method: str
    layers: tuple[int, ...] = ()
    keep: tuple[float, ...] = ()

    @property
    def attention_layer(self) -> int | None:
        """The layer whose last-token attention FastV reads (``k - 1``); None for V2Drop."""
        return self.layers[0] - 1 if self.method == "fastv" and self.layers else None

    def ratio_at(self, layer: int) -> float | None:
        return dict(zip(self.layers, self.keep)).get(layer)


NO_DROP = DropSchedule("none")


def _key(method: str, key: str) -> str:
    return f"methods.{method}.{key}"


def parse_schedule(method: str, params: dict | None, num_layers: int) -> DropSchedule:
    """A validated schedule from a matrix entry; a bad value is a ``ValueError`` naming its key.

    >>> parse_schedule("v2drop", {"preset": "llava"}, 32)
    DropSchedule(method='v2drop', layers=(3, 17, 22), keep=(0.5, 0.5, 0.0))
    >>> parse_schedule("v2drop", {"layers": [2], "keep": 0.25}, 28).keep
    (0.25,)
    >>> parse_schedule("fastv", {"k": 2, "keep": 0.5}, 28)
    DropSchedule(method='fastv', layers=(2,), keep=(0.5,))
    >>> parse_schedule("v2drop", {"layers": [3, 30], "keep": [0.5, 0.5]}, 28)
    Traceback (most recent call last):
    ...
    ValueError: methods.v2drop.layers: layer 30 is not below the model's depth 28 (layers 1..27 can drop)
    """
    params = dict(params or {})
    if method == "none":
        return NO_DROP
    if method == "v2drop":
        preset = params.pop("preset", None)
        if preset is not None:
            if preset not in V2DROP_PRESETS:
                raise ValueError(f"{_key(method, 'preset')}: unknown preset {preset!r}; known: {sorted(V2DROP_PRESETS)}")
            layers, keep = V2DROP_PRESETS[preset]
            layers = params.pop("layers", layers)
            keep = params.pop("keep", keep)
        else:
            if "layers" not in params:
                raise ValueError(f"{_key(method, 'layers')}: missing (or give 'preset': {sorted(V2DROP_PRESETS)})")
            layers = params.pop("layers")
            keep = params.pop("keep", None)
            if keep is None:
                raise ValueError(f"{_key(method, 'keep')}: missing")
    elif method == "fastv":
        layers = params.pop("k", FASTV_DEFAULT["k"])
        keep = params.pop("keep", FASTV_DEFAULT["keep"])
        if not isinstance(layers, int) or isinstance(layers, bool):
            raise ValueError(f"{_key(method, 'k')}: expected one layer index, got {layers!r}")
    else:
        raise ValueError(f"methods.{method}: not an in-LM dropping method (v2drop, fastv, none)")
    if params:
        raise ValueError(f"{_key(method, sorted(params)[0])}: unknown key")
    layers_key = _key(method, "k" if method == "fastv" else "layers")
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    if isinstance(keep, (int, float)) and not isinstance(keep, bool):
        keep = (float(keep),) * len(layers)
    keep = tuple(keep)
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"{layers_key}: layer {layer!r} is not an integer")
        if layer < 1:
            raise ValueError(f"{layers_key}: layer {layer} cannot drop (the score needs the layer before it; use >= 1)")
        if layer >= num_layers:
            raise ValueError(f"{layers_key}: layer {layer} is not below the model's depth {num_layers} "
                             f"(layers 1..{num_layers - 1} can drop)")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{layers_key}: layers {list(layers)} are not strictly increasing")
    if len(keep) != len(layers):
        raise ValueError(f"{_key(method, 'keep')}: {len(keep)} ratios for {len(layers)} layers")
    for ratio in keep:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{_key(method, 'keep')}: ratio {ratio!r} is outside [0, 1]")
    return DropSchedule(method, layers, tuple(float(r) for r in keep))


def layer_averaged_tokens(per_layer: list[float]) -> float:
    """The layer-averaged visual-token count: what a model that kept the same number at every layer would use.

    >>> layer_averaged_tokens([576] * 2 + [144] * 30)  # keep 144 of 576 from layer 2 of 32
    171.0
    """
    return sum(per_layer) / len(per_layer)


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class LMInputs:
    """What the language model's prefill takes.

    embeds ``[B, L, D]``; positions ``[3, B, L]`` (M-RoPE: temporal, height, width); valid ``[B, L]`` bool
    (False: left padding); groups ``[B, L]`` long (0: text, ``j >= 1``: the ``j``-th image of that sample).
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    groups: torch.Tensor


def image_groups(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """``[B, L]`` long: 0 for non-image tokens, ``j`` for the placeholders of the ``j``-th image of the sample.

    Images are separated by their vision start/end tokens, so each run of placeholders is one image.
    """
    is_img = input_ids == image_token_id
    starts = is_img & ~torch.nn.functional.pad(is_img, (1, 0))[:, :-1]
    return starts.long().cumsum(1) * is_img


@torch.no_grad()
def embed_inputs(model, inputs: dict) -> LMInputs:
    """Embed a processor output (``input_ids``, ``attention_mask``, ``pixel_values``, ``image_grid_thw``,
    optionally ``mm_token_type_ids``) with the model's own embedding, vision tower and M-RoPE index."""
    inner = model.model
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask
    cfg = model.config
    embeds = inner.get_input_embeddings()(input_ids)
    grid = inputs.get("image_grid_thw")
    if inputs.get("pixel_values") is not None:
        feats = inner.get_image_features(inputs["pixel_values"], grid, return_dict=True).pooler_output
        feats = torch.cat(list(feats), dim=0).to(embeds.device, embeds.dtype)
        img = (input_ids == cfg.image_token_id).unsqueeze(-1).expand_as(embeds)
        if img.sum() != feats.numel():
            raise ValueError(f"image placeholders ({int(img[..., 0].sum())}) do not match the image features "
                             f"({feats.shape[0]})")
        embeds = embeds.masked_scatter(img, feats)
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
    if grid is not None:
        positions, _ = inner.get_rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=grid,
                                            attention_mask=mask)
    else:  # text only: one position per token, the same on all three rows
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    return LMInputs(embeds, positions, mask.bool(), image_groups(input_ids, cfg.image_token_id))


# ----------------------------------------------------------------------------------------------- prefill


class KVCache:
    """Keys and values per layer, ``[B, kv_heads, L_l, head_dim]``; layers may hold different lengths.

    Implements the one method transformers' attention calls (``update``); appending concatenates.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, key, value, layer_idx, *args, **kwargs):
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def lengths(self) -> list[int]:
        return [k.shape[2] for k in self.keys]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for k, v in zip(self.keys, self.values))


@dataclass
class Segment:
    """Layers ``[start, stop)`` that saw the same tokens: valid ``[B, L_s]``, positions ``[3, B, L_s]``,
    source ``[B, L_s]`` (index of each slot in the unpruned input, -1 for a filler slot)."""

    start: int
    stop: int
    valid: torch.Tensor
    positions: torch.Tensor
    source: torch.Tensor
    has_padding: bool = True


@dataclass
class PrefillState:
    """Everything decoding needs after a (possibly dropping) prefill.

    logits ``[B, V]`` at the last position; next_position ``[B]`` (the unpruned sequence's max position + 1);
    visual_tokens ``[num_layers][B]`` visual tokens each layer saw per sample; segments cover the layers.
    """

    cache: KVCache
    segments: list[Segment]
    logits: torch.Tensor
    next_position: torch.Tensor
    visual_tokens: list[list[int]]

    @property
    def last_positions(self) -> torch.Tensor:
        """``[3, B]``: the M-RoPE position of each sample's last prompt token (the last column)."""
        return self.segments[-1].positions[:, :, -1]

    def segment_of(self, layer: int) -> Segment:
        return next(s for s in self.segments if s.start <= layer < s.stop)


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor | None:
    """``[B, 1, L, L]`` bool: causal, no attention to invalid keys; an invalid query sees itself (no NaN rows)."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return (causal[None] & (valid[:, None, :] | eye[None]))[:, None]


def _select(scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B, L]`` bool of the tokens to keep: every valid text token, and per image the ``floor(n * ratio)``
    visual tokens with the highest score (ties: the earlier token). Vectorised over samples and images."""
    b, n = scores.shape
    vis = groups > 0
    num_groups = int(groups.max()) + 1 if vis.any() else 1
    counts = torch.zeros(b, num_groups, dtype=torch.long, device=groups.device).scatter_add_(1, groups, vis.long())
    quota = (counts.double() * ratio + 1e-9).floor().long()  # + 1e-9: 0.29 * 100 is 28.999... in binary
    s = scores.float().masked_fill(~vis, -math.inf)
    by_score = s.argsort(dim=1, descending=True, stable=True)
    order = by_score.gather(1, groups.gather(1, by_score).argsort(dim=1, stable=True))  # group asc, score desc
    g_sorted = groups.gather(1, order)
    pos = torch.arange(n, device=groups.device).expand(b, n)
    first = torch.full((b, num_groups), n, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(1, g_sorted, pos, reduce="amin")
    keep_sorted = (pos - first.gather(1, g_sorted)) < quota.gather(1, g_sorted)
    keep_vis = torch.zeros_like(vis).scatter(1, order, keep_sorted) & vis
    return (valid & ~vis) | keep_vis


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[B, L']`` of the kept tokens in order, left-padded with filler slots, and their validity."""
    n = keep.shape[1]
    pos = torch.arange(n, device=keep.device).expand_as(keep)
    width = int(keep.sum(1).max())
    idx = torch.where(keep, pos + n, pos).argsort(dim=1)[:, n - width:]
    return idx, keep.gather(1, idx)


def _last_token_attention(layer, h_in: torch.Tensor, keys: torch.Tensor, cos, sin, valid) -> torch.Tensor:
    """``[B, L]``: softmax attention of the last token over all keys of one layer, averaged over heads.

    Recomputes only the last query (``q_proj`` of one token) and reads the layer's rotated keys from the
    cache, so the layer itself ran with its fused kernel.
    """
    attn = layer.self_attn
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    b = h_in.shape[0]
    x = layer.input_layernorm(h_in[:, -1:])
    q = attn.q_proj(x).view(b, 1, -1, attn.head_dim).transpose(1, 2)
    q, _ = rope(q, q, cos[..., -1:, :], sin[..., -1:, :])
    k = keys.repeat_interleave(attn.num_key_value_groups, dim=1)
    logits = (q @ k.transpose(2, 3)).float().squeeze(2) * attn.scaling  # [B, H, L]
    logits = logits.masked_fill(~valid[:, None, :], -math.inf)
    return logits.softmax(dim=-1).mean(dim=1)


def _lm(model):
    return model.model.language_model


@torch.no_grad()
def prefill(model, inputs: LMInputs, schedule: DropSchedule = NO_DROP) -> PrefillState:
    """Run the language model over ``inputs``, dropping visual tokens per ``schedule``; see the module doc."""
    lm = _lm(model)
    layers = lm.layers
    h = inputs.embeds
    b, n, _ = h.shape
    valid, groups, positions = inputs.valid, inputs.groups, inputs.positions
    source = torch.arange(n, device=h.device).expand(b, n)
    next_position = positions.masked_fill(~valid[None], -1).amax(dim=(0, 2)) + 1
    cache = KVCache(len(layers))
    segments: list[Segment] = []
    visual_counts: list[torch.Tensor] = []

    def begin_segment(start):
        has_pad = not bool(valid.all())
        segments.append(Segment(start, len(layers), valid, positions, source, has_pad))
        mask = _prefill_mask(valid) if has_pad else None  # None: SDPA's own causal path, as transformers
        return mask, lm.rotary_emb(h, positions)

    mask, (cos, sin) = begin_segment(0)
    prev_in = attention = None
    for i, layer in enumerate(layers):
        ratio = schedule.ratio_at(i)
        if ratio is not None:
            if schedule.method == "v2drop":
                scores = (h - prev_in).float().norm(dim=-1)
            else:
                scores = attention
            keep = _select(scores, groups, valid, ratio)
            idx, valid = _compact(keep)
            h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
            positions = positions.gather(2, idx[None].expand(3, -1, -1))
            groups = groups.gather(1, idx) * valid
            source = source.gather(1, idx).masked_fill(~valid, -1)
            segments[-1].stop = i
            mask, (cos, sin) = begin_segment(i)
        visual_counts.append((groups > 0).sum(1))
        prev_in = h
        h = run_layer(layer, h, mask, cos, sin, cache)
        if i == schedule.attention_layer:
            attention = _last_token_attention(layer, prev_in, cache.keys[i], cos, sin, valid)
    logits = model.lm_head(lm.norm(h[:, -1:]))[:, -1]
    per_layer = torch.stack(visual_counts).tolist()
    return PrefillState(cache, segments, logits, next_position, per_layer)


# ------------------------------------------------------------------------------------------------ decode


def run_layer(layer, h: torch.Tensor, mask, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
    """One decoder layer of transformers' own: ``h`` ``[B, L, C]`` -> ``[B, L, C]``, appending to ``cache``.

    transformers 5.2x renamed the layers' ``past_key_values`` argument ``cache`` (the old name is
    deprecated there, absent before): the name is read from the layer's signature, so the same code
    runs on the versions the project supports."""
    name = _CACHE_ARGUMENT.get(type(layer))
    if name is None:
        name = "cache" if "cache" in inspect.signature(type(layer).forward).parameters else "past_key_values"
        _CACHE_ARGUMENT[type(layer)] = name
    return layer(h, attention_mask=mask, position_embeddings=(cos, sin), use_cache=True, **{name: cache})


_CACHE_ARGUMENT: dict[type, str] = {}


def layer_masks(state: PrefillState, valid_by_segment: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Per layer, the decode-step mask ``[B, 1, 1, L_l]`` from its segment's key validity (None: all valid)."""
    masks = []
    for seg, valid in zip(state.segments, valid_by_segment):
        m = valid[:, None, None, :] if seg.has_padding else None
        masks.extend([m] * (seg.stop - seg.start))
    return masks


def decode_step(model, cache, tokens: torch.Tensor, position: torch.Tensor, masks, layer_fn=None) -> torch.Tensor:
    """One token per sample through every layer: tokens ``[B]``, position ``[B]`` -> logits ``[B, V]``.
    ``layer_fn(layer, h, mask, cos, sin, cache)`` runs a layer (default :func:`run_layer`)."""
    lm = _lm(model)
    layer_fn = layer_fn or run_layer
    h = lm.embed_tokens(tokens[:, None])
    pos3 = position.view(1, -1, 1).expand(3, -1, -1)
    cos, sin = lm.rotary_emb(h, pos3)
    for i, layer in enumerate(lm.layers):
        h = layer_fn(layer, h, masks[i], cos, sin, cache)
    return model.lm_head(lm.norm(h))[:, -1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class GenerationResult:
    """Greedy generation and its costs.

    tokens ``[B, T]`` (after the prompt; a finished sample continues with the pad token, as transformers);
    visual_tokens_per_layer ``[num_layers]`` (mean over samples); kv_cache_bytes: stored K/V after prefill;
    times in seconds, CUDA-synchronised; decode_s_per_token: mean over decode steps (the first token comes
    from the prefill); generation_s: embedding + vision tower + prefill + decode, without decode_setup_s
    (the static path's buffer copy and graph capture, which a serving engine does once per shape).
    """

    tokens: torch.Tensor
    visual_tokens_per_layer: list[float]
    visual_tokens_by_sample: list[list[int]]
    kv_cache_bytes: int
    kv_lengths: list[int]
    embed_s: float
    prefill_s: float
    decode_s_per_token: float
    generation_s: float
    decode_path: str
    decode_setup_s: float = 0.0
    state: PrefillState | None = field(default=None, repr=False)

    @property
    def visual_tokens_layer_avg(self) -> float:
        return layer_averaged_tokens(self.visual_tokens_per_layer)


def _special_ids(model, eos_token_id, pad_token_id):
    gen = getattr(model, "generation_config", None)
    eos = eos_token_id if eos_token_id is not None else getattr(gen, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = pad_token_id if pad_token_id is not None else getattr(gen, "pad_token_id", None)
    pad = eos[0] if pad is None and eos else (pad or 0)
    return eos, pad


def is_eos(tokens: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: which tokens are one of ``eos`` ``[E]`` (broadcast compare: no host sync, capturable)."""
    return (tokens[..., None] == eos).any(-1)


def eager_decode(model, state: PrefillState, first: torch.Tensor, steps: int, eos: list[int], pad: int,
                 stop_at_eos: bool = True) -> list[torch.Tensor]:
    """Greedy decode ``steps`` tokens after ``first`` ``[B]`` with the growing cache; returns the new tokens."""
    eos_t = torch.tensor(eos or [-1], device=first.device)
    finished = is_eos(first, eos_t)
    valid = [s.valid for s in state.segments]
    position = state.next_position.clone()
    token, out = first, []
    for _ in range(steps):
        if stop_at_eos and eos and bool(finished.all()):
            break
        valid = [torch.nn.functional.pad(v, (0, 1), value=True) for v in valid]
        logits = decode_step(model, state.cache, token, position, layer_masks(state, valid))
        token = logits.argmax(-1).masked_fill(finished, pad)
        finished = finished | is_eos(token, eos_t)
        position = position + 1
        out.append(token)
    return out


@torch.no_grad()
def generate(model, inputs: dict | LMInputs, schedule: DropSchedule = NO_DROP, max_new_tokens: int = 32,
             decode: str = "eager", cuda_graph: bool | None = None, eos_token_id=None, pad_token_id=None,
             stop_at_eos: bool = True, keep_state: bool = False, fused: bool | None = None) -> GenerationResult:
    """Greedy generation with in-LM visual-token dropping.

    ``inputs``: a processor output (dict with ``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``) or ready ``LMInputs`` (the vision tower is then not run). ``decode``: ``"eager"``
    (growing cache, one Python pass per token) or ``"static"`` (preallocated cache; on CUDA a captured CUDA
    graph per step unless ``cuda_graph=False``, fused layers unless ``fused=False``: see
    :mod:`evalsuite.vlm.static_decode`). ``stop_at_eos=False``
    always decodes ``max_new_tokens`` (latency measurements).
    """
    params = next(model.parameters())
    device = params.device
    eos, pad = _special_ids(model, eos_token_id, pad_token_id)
    _sync(device)
    t0 = time.perf_counter()
    lm_inputs = inputs if isinstance(inputs, LMInputs) else embed_inputs(model, inputs)
    _sync(device)
    t1 = time.perf_counter()
    state = prefill(model, lm_inputs, schedule)
    first = state.logits.argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    kv_bytes, kv_lengths = state.cache.nbytes(), state.cache.lengths()
    steps = max_new_tokens - 1
    setup_s = 0.0
    if decode == "eager":
        new = eager_decode(model, state, first, steps, eos, pad, stop_at_eos)
        path = "eager"
    elif decode == "static":
        from .static_decode import StaticDecoder

        decoder = StaticDecoder(model, state, steps, eos, pad, cuda_graph=cuda_graph, fused=fused)
        decoder.prepare(first)
        _sync(device)
        setup_s = time.perf_counter() - t2  # buffers and capture: a serving engine keeps them across requests
        new = decoder.run(first, stop_at_eos)
        path = decoder.path
    else:
        raise ValueError(f"decode: {decode!r} is not 'eager' or 'static'")
    _sync(device)
    t3 = time.perf_counter()
    tokens = torch.stack([first, *new], dim=1)
    vis = state.visual_tokens
    return GenerationResult(
        tokens=tokens.cpu(),
        visual_tokens_per_layer=[sum(v) / len(v) for v in vis],
        visual_tokens_by_sample=vis,
        kv_cache_bytes=kv_bytes,
        kv_lengths=kv_lengths,
        embed_s=t1 - t0,
        prefill_s=t2 - t1,
        decode_s_per_token=(t3 - t2 - setup_s) / max(len(new), 1),
        generation_s=t3 - t0 - setup_s,
        decode_path=path,
        decode_setup_s=setup_s,
        state=state if keep_state else None,
    )


def kpis(result: GenerationResult, baseline: GenerationResult | None = None) -> dict[str, float | list]:
    """The in-LM KPIs of one run (names registered in :mod:`evalsuite.metrics.kpis`), against ``baseline``
    (the unpatched model's run on the same inputs) where given."""
    out: dict[str, float | list] = {
        "lm_visual_tokens_per_layer": list(result.visual_tokens_per_layer),
        "lm_visual_tokens_layer_avg": result.visual_tokens_layer_avg,
        "lm_kv_cache_bytes": float(result.kv_cache_bytes),
        "lm_prefill_ms": 1e3 * result.prefill_s,
        "lm_decode_ms_per_token": 1e3 * result.decode_s_per_token,
        "lm_generation_ms": 1e3 * result.generation_s,
    }
    if baseline is not None:
        out["lm_kv_cache_reduction_pct"] = 100.0 * (1 - result.kv_cache_bytes / baseline.kv_cache_bytes)
        out["lm_prefill_speedup"] = baseline.prefill_s / result.prefill_s
        out["lm_decode_speedup"] = baseline.decode_s_per_token / result.decode_s_per_token
        out["lm_generation_speedup"] = baseline.generation_s / result.generation_s
    return out
