"""Greedy decoding from a prefill with a static KV cache, one step captured as a CUDA graph on a GPU.

Eager decoding launches some ten kernels per layer per token from Python; for a small model the GPU waits
on the host, so the per-token time hardly moves with the number of cached tokens and no token-dropping
method can show a decode gain. Here every tensor a step touches is preallocated:

- per layer, keys and values ``[B, kv_heads, L_l + steps, head_dim]`` (``L_l`` = the tokens that layer kept
  at prefill, so dropping layers hold shorter buffers), written in place at ``L_l + step``;
- per segment of layers with one token layout, key validity ``[B, L_s + steps]`` (False for filler slots of
  the prefill and for slots not yet written), from which each layer's attention mask is a view;
- the step counter, the current tokens and positions, the finished flags and the output tokens.

One step (embed, all layers, norm, head, argmax, eos bookkeeping, counter updates) is then a fixed sequence
of kernels on fixed addresses: on CUDA it is captured once and replayed per token (``path ==
"static+graph"``); on CPU, or with ``cuda_graph=False``, the same step runs eagerly (``"static"``). Attention
reads the whole buffer with the not-yet-written slots masked, as transformers' own static cache does.

A graph removes the host from the step but not the kernel count, which bounds a small model's step: where
:mod:`evalsuite.vlm.decode_kernels` works (CUDA, a Qwen2-family layer, a check of its bits against
transformers' layer), each layer runs with its RMSNorm tails, rotary embedding and SiLU product fused
(``path`` gains ``+fused``); ``fused=False`` keeps transformers' layers.
"""

from __future__ import annotations

import torch

from . import decode_kernels
from .lm_drop import PrefillState, decode_step, is_eos, run_layer


class _StaticKV:
    """Preallocated keys/values per layer; ``update`` writes the step's token at ``write_at[layer]``."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], extra: int):
        self.keys = [self._grow(k, extra) for k in keys]
        self.values = [self._grow(v, extra) for v in values]
        self.write_at: list[torch.Tensor | None] = [None] * len(keys)

    @staticmethod
    def _grow(t: torch.Tensor, extra: int) -> torch.Tensor:
        b, h, n, d = t.shape
        buf = t.new_zeros(b, h, n + extra, d)
        buf[:, :, :n] = t
        return buf

    def update(self, key, value, layer_idx, *args, **kwargs):
        idx = self.write_at[layer_idx]
        self.keys[layer_idx].index_copy_(2, idx, key)
        self.values[layer_idx].index_copy_(2, idx, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)


class StaticDecoder:
    """Decode ``steps`` greedy tokens after the prefill ``state``; ``run(first)`` returns them as ``[B]`` each.

    ``cuda_graph``: None = on CUDA only. The graph is captured on the first ``run`` (after two warm-up
    steps on a side stream, whose writes are then reset), so ``run`` may be timed apart from ``prepare``.
    """

    def __init__(self, model, state: PrefillState, steps: int, eos: list[int], pad: int,
                 cuda_graph: bool | None = None, fused: bool | None = None):
        self.model, self.steps = model, steps
        device = state.logits.device
        self.graph_wanted = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.graph_wanted and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        layers = model.model.language_model.layers
        probe = state.logits.new_empty(state.logits.shape[0], 1, model.config.get_text_config().hidden_size,
                                       dtype=next(layers.parameters()).dtype)
        can_fuse = all(decode_kernels.supports(layer, probe) for layer in layers)
        if fused and not can_fuse:
            raise ValueError("fused=True: the fused decode layer does not run here (see evalsuite.vlm.decode_kernels)")
        self.fused = can_fuse if fused is None else fused
        self.layer_fn = decode_kernels.decode_layer if self.fused else run_layer
        self.path = ("static+graph" if self.graph_wanted else "static") + ("+fused" if self.fused else "")
        extra = max(steps, 1)
        self.cache = _StaticKV(state.cache.keys, state.cache.values, extra)
        self.segments = state.segments
        self.base = [torch.tensor([s.valid.shape[1]], device=device) for s in state.segments]
        self.valid0 = [torch.nn.functional.pad(s.valid, (0, extra), value=False) for s in state.segments]
        self.valid = [v.clone() for v in self.valid0]
        self.masks = []
        for seg, valid in zip(self.segments, self.valid):
            self.masks.extend([valid[:, None, None, :]] * (seg.stop - seg.start))
        b = state.logits.shape[0]
        self.position0 = state.next_position.clone()
        self.position = self.position0.clone()
        self.token = torch.zeros(b, dtype=torch.long, device=device)
        self.step_idx = torch.zeros(1, dtype=torch.long, device=device)
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.out = torch.zeros(b, extra, dtype=torch.long, device=device)
        self.eos = torch.tensor(eos if eos else [-1], device=device)
        self.pad = pad
        self.graph = None

    def _reset(self, first: torch.Tensor) -> None:
        for v, v0 in zip(self.valid, self.valid0):
            v.copy_(v0)
        self.position.copy_(self.position0)
        self.token.copy_(first)
        self.step_idx.zero_()
        self.finished.copy_(is_eos(first, self.eos))
        self.out.zero_()

    def _step(self) -> None:
        """One decode step on the preallocated tensors only (no host sync: capturable)."""
        writes = []
        for seg, base, valid in zip(self.segments, self.base, self.valid):
            idx = base + self.step_idx
            valid.index_fill_(1, idx, True)
            writes.extend([idx] * (seg.stop - seg.start))
        self.cache.write_at = writes
        logits = decode_step(self.model, self.cache, self.token, self.position, self.masks, self.layer_fn)
        token = logits.argmax(-1).masked_fill(self.finished, self.pad)
        self.finished |= is_eos(token, self.eos)
        self.out.index_copy_(1, self.step_idx, token[:, None])
        self.token.copy_(token)
        self.position.add_(1)
        self.step_idx.add_(1)

    @torch.no_grad()
    def prepare(self, first: torch.Tensor) -> None:
        """Capture the step graph (CUDA) so that ``run`` measures replays only."""
        if not self.graph_wanted or self.graph is not None:
            return
        self._reset(first)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy inits and allocator pools outside the capture
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self._reset(first)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        self._reset(first)

    @torch.no_grad()
    def run(self, first: torch.Tensor, stop_at_eos: bool = True) -> list[torch.Tensor]:
        """Decode; with ``stop_at_eos`` the result ends where every sample has finished (as transformers),
        though all ``steps`` run (checking on the host each step would cost the sync the graph avoids)."""
        self.prepare(first)
        self._reset(first)
        for _ in range(self.steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        tokens = self.out[:, : self.steps]
        if stop_at_eos and self.steps:
            done = is_eos(first, self.eos)
            count = 0
            if not bool(done.all()):
                seen = is_eos(tokens, self.eos).cummax(dim=1).values | done[:, None]
                all_done = seen.all(dim=0)
                count = int(all_done.int().argmax()) + 1 if bool(all_done.any()) else self.steps
            tokens = tokens[:, :count]
        return list(tokens.unbind(1))
