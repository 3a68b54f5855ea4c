"""V²Drop (variation-aware token dropping, arXiv 2509.01552), adapted to encoder layers.

The paper drops visual tokens inside the LLM of a VLM: tokens whose hidden
state changes least between consecutive LLM layers carry least new
information and are dropped progressively. Adaptation here: the same rule
applied to the vision encoder's own blocks. After each configured block, the
per-token variation is the L2 norm of (output - input) of that block, computed
on the patch tokens; the least-varying ones are dropped so that the total
keep fraction ``keep`` is reached in equal-ratio stages. Training-free, no
attention maps needed (works with fused attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._staged import StagedDrop


@dataclass
class V2Drop(StagedDrop):
    def scores(self, layer, x, x_in, state):
        p = state.num_prefix
        return (x[:, p:] - x_in[:, p:]).float().norm(dim=-1)
