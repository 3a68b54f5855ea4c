"""Pre-LLM selections replayed from CUDA graphs once a token shape recurs.

At batch 1 a selection between the tower and the language model is a few dozen small kernels (a
matching round of ToMe, VisionZip's ranking and grouping, DivPrune's distances), and on a GPU their
launches, not their arithmetic, set its time. :class:`Graphed` wraps a selection function
``(tokens [N, D], k, **options) -> (index, kept, sizes)``: on CUDA, the second time it sees a shape
(``N``, ``D``, dtype, ``k``, options) it captures the call as a CUDA graph and from then on replays
it, returning copies of the graph's outputs. The first sight runs eagerly, so images of one-off
sizes pay nothing for the capture; pages of a bucketed size (a serving engine's, or a benchmark's
one page) replay. The replay runs the very kernels the eager call
did, so it gives the same result (tests/test_vlm_select_kernels.py).

Functions that draw from a CPU generator (``random_select``) cannot be captured and run eagerly
always. The graphs are those of :mod:`evalsuite.methods.graphs` (the ToMe step's replay), which bounds
how many it keeps.

Replaying is on only inside :func:`replaying` (the VLM benchmark's steady state, where a page's shape
recurs). A gate case times each batch's selections once, as it meets them: a capture there would land
in the case's compression latency, so cases run the selections eagerly, as a first sight does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..methods import graphs

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
    """``Graphed(fn)(tokens, k, **options)``: ``fn``'s result, inside :func:`replaying` from a CUDA graph
    (:func:`evalsuite.methods.graphs.replay_or_run`, which keeps and evicts the graphs) for shapes seen
    before (see the module docstring). ``seen``: the shapes met; ``replays``: the calls answered from a
    graph."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "selection")
        self.__doc__ = fn.__doc__
        self.seen: set[tuple] = set()
        self.replays = 0

    def __call__(self, tokens: torch.Tensor, k: int, generator=None, **options):
        if not _REPLAYING or not tokens.is_cuda or k >= tokens.shape[0]:
            return self.fn(tokens, k, generator=generator, **options)
        key = (tuple(tokens.shape), tokens.dtype, tokens.device, k, tuple(sorted(options.items())))
        if key not in self.seen:  # a first sight runs eagerly: one-off shapes pay no capture
            self.seen.add(key)
            return self.fn(tokens, k, generator=generator, **options)
        self.replays += 1
        # the graph's outputs are overwritten by its next replay: the caller gets copies. The tokens are
        # the tower's new output each call, at addresses that wander among a few: graphs reading them in
        # place would be captured again and again inside timed calls, so the tokens are copied in.
        return tuple(o.clone() for o in graphs.replay_or_run(self.fn, (tokens,), in_place=False, k=k, **options))
