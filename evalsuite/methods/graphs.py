"""CUDA-graph replay of a method's per-block step, where kernel launches dominate.

At batch 1 a ToMe merge is about 20 small kernels per block; on an H100 host
their launches, not the GPU, set its latency (7.5 ms per 518 px forward).
:func:`replay_or_run` captures a pure tensor function once per input
signature (shapes, dtypes, device, static arguments) and afterwards copies
the inputs into the graph's buffers and replays it: three copies and one
launch instead of twenty. Large inputs run eagerly: there the GPU work
dominates and the copies into static buffers would cost more than they save.

The returned tensors belong to the graph and are overwritten by its next
replay, i.e. by the next call with the same signature. A compressed forward
calls each signature once (the token count falls every block) and reads what
it needs before the next forward; anything returned to a caller is cloned.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

GRAPH_MAX_ELEMENTS = 1 << 21  # largest input (elements) replayed from a graph: batch 1-3 at 518 px (ViT-S)
MAX_GRAPHS = 256  # captured graphs kept per process (least recently used dropped)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


_GRAPHS: OrderedDict[tuple, _Captured] = OrderedDict()


def replay_or_run(fn: Callable[..., tuple[torch.Tensor, ...]], tensors: tuple[torch.Tensor, ...],
                  **static) -> tuple[torch.Tensor, ...]:
    """``fn(*tensors, **static)``, from a CUDA graph when the inputs are small CUDA tensors.

    ``fn`` must be a pure function of its tensors (no host synchronisation, no
    data-dependent shapes, no randomness); ``static`` values are part of the
    graph's key. Runs eagerly on CPU, for inputs above ``GRAPH_MAX_ELEMENTS``
    and while an enclosing graph is being captured.
    """
    first = tensors[0]
    if (not first.is_cuda or max(t.numel() for t in tensors) > GRAPH_MAX_ELEMENTS
            or torch.cuda.is_current_stream_capturing()):
        return fn(*tensors, **static)
    key = (fn, tuple(sorted(static.items())), torch.is_inference_mode_enabled(),
           *((t.shape, t.dtype, t.device) for t in tensors))
    with torch.cuda.device(first.device):
        entry = _GRAPHS.get(key)
        if entry is None:
            entry = _GRAPHS[key] = _capture(fn, tensors, static)
            while len(_GRAPHS) > MAX_GRAPHS:
                _GRAPHS.popitem(last=False)
        else:
            _GRAPHS.move_to_end(key)
        for buffer, value in zip(entry.inputs, tensors):
            buffer.copy_(value)
        entry.graph.replay()
    return entry.outputs


def _capture(fn, tensors, static) -> _Captured:
    inputs = tuple(t.clone() for t in tensors)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: kernel choice, workspaces, cached tables
        for _ in range(2):
            fn(*inputs, **static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*inputs, **static)
    return _Captured(graph, inputs, tuple(outputs))
