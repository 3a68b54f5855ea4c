"""CUDA-graph replay of a method's per-block step, where kernel launches dominate.

At batch 1 a ToMe merge is about 20 small kernels per block; their launches,
not the GPU's work, set its latency (figures: docs/performance.md).
:func:`replay_or_run` captures a pure tensor function once per input
signature (shapes, dtypes, device, static arguments) and afterwards copies
the inputs into the graph's buffers and replays it: three copies and one
launch instead of twenty. Large inputs run eagerly: there the GPU work
dominates and the copies into static buffers would cost more than they save
(``GRAPH_MAX_ELEMENTS``).

The returned tensors belong to the graph and are overwritten by its next
replay, i.e. by the next call with the same signature. A compressed forward
calls each signature once (the token count falls every block) and reads what
it needs before the next forward; anything returned to a caller is cloned.

Repeated forwards of one shape mostly get their inputs at the same addresses
(the caching allocator hands out the same blocks in the same order). When a
call's inputs sit where an earlier call's did, a graph is captured that reads
them in place, and later calls with inputs at those addresses replay it without
the copies (a few launches per block saved at batch 1). At most
``MAX_IN_PLACE`` such graphs are captured per signature, so inputs that keep
moving cost a bounded number of captures, all in the first forwards. An
in-place graph holds no reference to its inputs: it is replayed only while the
caller's own tensors occupy exactly that memory (address, shape, strides,
dtype), so what it reads is always the current input.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

# Largest input (elements) replayed from a graph. An eager step costs a roughly constant time in
# launches; replaying costs copies into the graph's buffers that grow with the input, and outgrow the
# launches somewhere between 10M and 28M elements (``python -m benchmarks.kernels``; figures:
# docs/performance.md).
GRAPH_MAX_ELEMENTS = 1 << 24
MAX_IN_PLACE = 2  # graphs reading their inputs in place, per signature
MAX_GRAPHS = 256  # captured graphs kept per process (least recently used dropped) ...
MAX_GRAPH_BYTES = 2 << 30  # ... and at most this much in their input and output buffers


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # the graph's own input buffers (none for an in-place graph)
    outputs: tuple[torch.Tensor, ...]
    in_place: dict[tuple, "_Captured"] = field(default_factory=dict)  # by input (address, strides)
    seen: set[tuple] = field(default_factory=set)  # input addresses met once, not yet captured

    @property
    def nbytes(self) -> int:
        own = sum(t.numel() * t.element_size() for t in (*self.inputs, *self.outputs))
        return own + sum(graph.nbytes for graph in self.in_place.values())


_GRAPHS: OrderedDict[tuple, _Captured] = OrderedDict()


def replay_or_run(fn: Callable[..., tuple[torch.Tensor, ...]], tensors: tuple[torch.Tensor, ...], *,
                  in_place: bool = True, **static) -> tuple[torch.Tensor, ...]:
    """``fn(*tensors, **static)``, from a CUDA graph when the inputs are small CUDA tensors.

    ``fn`` must be a pure function of its tensors (no host synchronisation, no
    data-dependent shapes, no randomness); ``static`` values are part of the
    graph's key. Runs eagerly on CPU, for inputs above ``GRAPH_MAX_ELEMENTS``
    and while an enclosing graph is being captured. ``in_place=False``: always
    copy into the graph's buffers, for callers whose inputs are new tensors each
    call (an in-place capture, paid where an address recurs, would then rarely
    be replayed).
    """
    first = tensors[0]
    if (not first.is_cuda or max(t.numel() for t in tensors) > GRAPH_MAX_ELEMENTS
            or torch.cuda.is_current_stream_capturing()):
        return fn(*tensors, **static)
    key = (fn, tuple(sorted(static.items())), torch.is_inference_mode_enabled(),
           *((t.shape, t.dtype, t.device) for t in tensors))
    where = tuple((t.data_ptr(), t.stride()) for t in tensors)
    with torch.cuda.device(first.device):
        entry = _GRAPHS.get(key)
        if entry is None:
            entry = _GRAPHS[key] = _capture(fn, tensors, static)
            _evict()
        else:
            _GRAPHS.move_to_end(key)
        reader = entry.in_place.get(where) if in_place else None
        if reader is None and in_place and where in entry.seen and len(entry.in_place) < MAX_IN_PLACE:
            reader = entry.in_place[where] = _capture(fn, tensors, static, copy_inputs=False)
            _evict()
        if reader is not None:
            reader.graph.replay()
            return reader.outputs
        if in_place and len(entry.in_place) < MAX_IN_PLACE and len(entry.seen) < 4 * MAX_IN_PLACE:
            entry.seen.add(where)
        for buffer, value in zip(entry.inputs, tensors):
            buffer.copy_(value)
        entry.graph.replay()
    return entry.outputs


def _evict() -> None:
    """Drop the least recently used graphs beyond ``MAX_GRAPHS`` or ``MAX_GRAPH_BYTES``; the newest
    (last) one always stays."""
    total = sum(entry.nbytes for entry in _GRAPHS.values())
    while len(_GRAPHS) > 1 and (len(_GRAPHS) > MAX_GRAPHS or total > MAX_GRAPH_BYTES):
        total -= _GRAPHS.popitem(last=False)[1].nbytes


def _capture(fn, tensors, static, copy_inputs: bool = True) -> _Captured:
    """A graph of ``fn`` reading its own copies of ``tensors`` (``copy_inputs``), or ``tensors``
    themselves where they are (no reference to them is kept)."""
    inputs = tuple(t.clone() for t in tensors) if copy_inputs else tensors
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: kernel choice, workspaces, cached tables
        for _ in range(2):
            fn(*inputs, **static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*inputs, **static)
    return _Captured(graph, inputs if copy_inputs else (), tuple(outputs))
