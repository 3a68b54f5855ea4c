"""Greedy generation over a VLM's language model, with a swappable prefill and decode step.

The loop is evalsuite's own, not ``model.generate``: a compression method changes
the sequence the language model sees, and the gate must time prefill and decode
apart. It runs:

1. **prefill**: ``prefill(inputs) -> PrefillResult`` on explicit ``inputs_embeds``
   [B, L, D], the 3-row M-RoPE ``position_ids`` [3, B, L] (computed on the full,
   uncompressed sequence, then gathered for the kept tokens) and the 2-D attention
   mask [B, L] (left padding is 0). :func:`eager_prefill` is the language model's
   own forward into a ``DynamicCache``; an in-LM dropping method (V2Drop, FastV)
   passes its own callable, which may leave fewer tokens in the cache: it returns
   the cache's mask [B, L_cache] with it.
2. **decode**: ``decoder.step(state, tokens) -> logits`` one token at a time; each
   sample's next position is its largest prefill position + 1 (M-RoPE positions of
   an image advance by the grid side, not by its token count), then + 1 per step.
   :class:`EagerDecoder` runs the model eagerly on the ``DynamicCache``; a static
   cache with a captured CUDA graph is another :class:`Decoder`.

Decoding is greedy (argmax, first index on ties, as ``torch.argmax``); a finished
sample gets ``pad_id`` until every sample has finished or ``max_new_tokens`` is
reached, as transformers' ``generate`` does, so the two agree token for token.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from ..metrics.latency import synchronize
from ..registry import Registry


@dataclass
class PrefillInputs:
    """What the language model's prefill receives (one batch, left padded).

    ``inputs_embeds`` [B, L, D]; ``attention_mask`` [B, L] (1 = token, 0 = padding);
    ``position_ids`` [3, B, L] M-RoPE (temporal, height, width) positions, padding 0;
    ``visual_mask`` [B, L] True at visual tokens (for in-LM dropping: text is never dropped).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_mask: torch.Tensor

    @property
    def next_position(self) -> torch.Tensor:
        """[B] the first decode position of each sample: its largest position + 1."""
        masked = self.position_ids.masked_fill(self.attention_mask[None] == 0, -1)
        return masked.amax(dim=(0, 2)) + 1


@dataclass
class PrefillResult:
    """``logits`` [B, V] of the last prompt token; ``cache`` the KV cache the decoder continues;
    ``cache_mask`` [B, L_cache] its attention mask (shorter than the input's when a method dropped
    tokens inside the language model); ``lm_tokens`` [B] tokens each sample had entering the
    language model (the planned-length check reads it)."""

    logits: torch.Tensor
    cache: Any
    cache_mask: torch.Tensor
    lm_tokens: torch.Tensor


class LanguageModel(Protocol):
    """What the loop needs of a VLM: its decoder stack and head."""

    language_model: torch.nn.Module  # transformers' Qwen2VLTextModel (or alike): inputs_embeds -> hidden states
    lm_head: torch.nn.Module
    embed_tokens: torch.nn.Module


Prefill = Callable[[LanguageModel, PrefillInputs], PrefillResult]


def cache_kwarg(module: torch.nn.Module) -> str:
    """The name ``module.forward`` takes its KV cache under: ``cache`` in newer transformers,
    ``past_key_values`` before (both exist across the versions evalsuite supports)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache():
    """An empty ``DynamicCache`` (built without a config: its constructor's arguments differ across versions)."""
    from transformers import DynamicCache

    return DynamicCache()


def eager_prefill(parts: LanguageModel, inputs: PrefillInputs) -> PrefillResult:
    """The unpatched language model's prefill into a fresh ``DynamicCache``."""
    lm = parts.language_model
    cache = new_cache()
    out = lm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
             position_ids=inputs.position_ids, use_cache=True, **{cache_kwarg(lm): cache})
    logits = parts.lm_head(out.last_hidden_state[:, -1])
    return PrefillResult(logits, cache, inputs.attention_mask, inputs.attention_mask.sum(dim=1))


class Decoder(Protocol):
    def step(self, parts: LanguageModel, state: PrefillResult, tokens: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
        """One decode step: ``tokens`` [B] at ``positions`` [B] -> logits [B, V]; extends
        ``state.cache`` and ``state.cache_mask`` by one column."""


class EagerDecoder:
    """One eager forward of the language model per token on the prefill's ``DynamicCache``."""

    def step(self, parts, state, tokens, positions):
        lm = parts.language_model
        state.cache_mask = torch.cat([state.cache_mask, state.cache_mask.new_ones(len(tokens), 1)], dim=1)
        embeds = parts.embed_tokens(tokens[:, None])
        position_ids = positions.view(1, -1, 1).expand(3, -1, 1)
        out = lm(inputs_embeds=embeds, attention_mask=state.cache_mask, position_ids=position_ids,
                 use_cache=True, **{cache_kwarg(lm): state.cache})
        return parts.lm_head(out.last_hidden_state[:, -1])


class StaticTimedDecoder(EagerDecoder):
    """``decoder = "static"``: answers come from the eager loop as ever (the parity the gate checks), and
    the case times generation again on :mod:`evalsuite.vlm.static_decode` (a static KV cache, a captured
    CUDA graph on a GPU) for its ``lm_*`` latency KPIs; eager decoding is bound by the host, so its
    per-token time hides what fewer cached tokens save. The eager figures stay beside them."""

    timing = "static"


# Decode paths by name (the model's ``decoder`` matrix parameter): a class built with no arguments
# whose ``step`` follows :class:`Decoder`; its ``timing`` attribute (default ``"eager"``) is the
# evalsuite.vlm.lm_drop decode path the case's lm_* latency KPIs use.
DECODERS: Registry = Registry("decoder")
DECODERS.register("eager", EagerDecoder)
DECODERS.register("static", StaticTimedDecoder)


@dataclass
class Generation:
    """``tokens`` [B, T] generated ids (``pad_id`` after a sample's end), ``lengths`` [B] tokens up to
    and including the end token; ``prefill_seconds`` the prefill, ``decode_seconds`` one entry per
    decode step (CUDA-synchronised when timed); ``lm_tokens`` [B] tokens into the language model."""

    tokens: torch.Tensor
    lengths: list[int]
    lm_tokens: list[int]
    prefill_seconds: float = 0.0
    decode_seconds: list[float] = field(default_factory=list)

    def answer_ids(self, b: int, end_ids: set[int]) -> list[int]:
        """Sample ``b``'s tokens without its end token."""
        ids = self.tokens[b, : self.lengths[b]].tolist()
        return ids[:-1] if ids and ids[-1] in end_ids else ids


@torch.inference_mode()
def greedy(parts: LanguageModel, inputs: PrefillInputs, max_new_tokens: int, end_ids: set[int], pad_id: int,
           prefill: Prefill = eager_prefill, decoder: Decoder | None = None, timed: bool = True) -> Generation:
    """Greedy decoding of ``max_new_tokens`` at most from ``inputs``; see the module docstring."""
    decoder = decoder or EagerDecoder()
    device = inputs.inputs_embeds.device
    clock = _Clock(device, timed)
    with clock:
        state = prefill(parts, inputs)
    prefill_seconds = clock.seconds
    batch = inputs.inputs_embeds.shape[0]
    positions = inputs.next_position
    end = torch.tensor(sorted(end_ids), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, decode_seconds = [], []
    logits = state.logits
    for step in range(max_new_tokens):
        token = logits.float().argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done = done | torch.isin(token, end)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        with clock:
            logits = decoder.step(parts, state, token, positions + step)
        decode_seconds.append(clock.seconds)
    out = torch.stack(tokens, dim=1) if tokens else torch.empty(batch, 0, dtype=torch.long, device=device)
    return Generation(out.cpu(), _lengths(out.cpu(), set(end_ids)), state.lm_tokens.tolist(), prefill_seconds,
                      decode_seconds)


def _lengths(tokens: torch.Tensor, end_ids: set[int]) -> list[int]:
    lengths = []
    for row in tokens.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t in end_ids), len(row))
        lengths.append(n)
    return lengths


class _Clock:
    """Wall time of a block, CUDA-synchronised on both sides when ``timed`` (else 0)."""

    def __init__(self, device: torch.device, timed: bool):
        self.device, self.timed, self.seconds = device, timed, 0.0

    def __enter__(self):
        if self.timed:
            synchronize(self.device)
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.timed:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start
        return False
