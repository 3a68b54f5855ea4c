"""Pre-LLM selections replayed from CUDA graphs once a token shape recurs.

At batch 1 a selection between the tower and the language model is a few dozen small kernels (a
matching round of ToMe, VisionZip's ranking and grouping, DivPrune's distances), and on a GPU their
launches, not their arithmetic, set its time. :class:`Graphed` wraps a selection function
``(tokens [N, D], k, **options) -> (index, kept, sizes)``: on CUDA, the second time it sees a shape
(``N``, ``D``, dtype, ``k``, options) it captures the call as a CUDA graph on a static copy of the
input and from then on replays it, returning copies of the graph's outputs. The first sight runs
eagerly, so images of one-off sizes pay nothing for the capture; pages of a bucketed size (a
serving engine's, or a benchmark's one page) replay. The replay runs the very kernels the eager call
did, so it gives the same result (tests/test_vlm_select_kernels.py).

Functions that draw from a CPU generator (``random_select``) cannot be captured and run eagerly
always. Graphs are kept per shape, the ``limit`` most recently used.

Replaying is on only inside :func:`replaying` (the VLM benchmark's steady state, where a page's shape
recurs). A gate case times each batch's selections once, as it meets them: a capture there would land
in the case's compression latency, so cases run the selections eagerly, as a first sight does.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

_REPLAYING = False


@contextmanager
def replaying() -> Iterator[None]:
    """Within this block, :class:`Graphed` selections capture and replay CUDA graphs."""
    global _REPLAYING
    before, _REPLAYING = _REPLAYING, True
    try:
        yield
    finally:
        _REPLAYING = before


class Graphed:
    """``Graphed(fn)(tokens, k, **options)``: ``fn``'s result, inside :func:`replaying` from a captured
    CUDA graph for shapes seen before (see the module docstring). ``graphs``: the captures held;
    ``replays``: their count."""

    def __init__(self, fn: Callable, limit: int = 16):
        self.fn, self.limit = fn, limit
        self.__name__ = getattr(fn, "__name__", "selection")
        self.__doc__ = fn.__doc__
        self.seen: set[tuple] = set()
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.replays = 0

    def __call__(self, tokens: torch.Tensor, k: int, generator=None, **options):
        if (not _REPLAYING or not tokens.is_cuda or k >= tokens.shape[0]
                or torch.cuda.is_current_stream_capturing()):
            return self.fn(tokens, k, generator=generator, **options)
        key = (tuple(tokens.shape), tokens.dtype, tokens.device, k, tuple(sorted(options.items())))
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:
                self.seen.add(key)
                return self.fn(tokens, k, generator=generator, **options)
            entry = self._capture(key, tokens, k, options)
        self.graphs.move_to_end(key)
        graph, static_in, outputs = entry
        static_in.copy_(tokens)
        graph.replay()
        self.replays += 1
        return tuple(o.clone() for o in outputs)

    def _capture(self, key: tuple, tokens: torch.Tensor, k: int, options: dict) -> tuple:
        static_in = tokens.clone()
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):  # warm-up outside the capture: lazy inits, kernel builds and checks
            self.fn(static_in, k, **options)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(static_in, k, **options)
        self.graphs[key] = (graph, static_in, outputs)
        while len(self.graphs) > self.limit:
            self.graphs.popitem(last=False)
        return self.graphs[key]
