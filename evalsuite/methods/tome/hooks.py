"""Token Merging (ToMe, Bolya et al., arXiv 2210.09461), written from the paper.

In every block, between attention and MLP, ``r`` patch tokens are merged into
their most similar partner by bipartite soft matching on the attention keys
(averaged over heads). Merged tokens are size-weighted averages, and the
attention of later blocks adds ``log(size)`` to the logits (proportional
attention) so a merged token keeps the pull of the patches it stands for.
Prefix tokens (CLS, registers) are never matched. As in the published code, the
whole sequence alternates into the sets A and B by default (``split``, see
:mod:`evalsuite.methods.tome.merge`).

Merge factor rule (the product owner's "0.5" and "0.7"): ``merge_factor = f``
removes the fraction ``f`` of the patch tokens by the end of the encoder with
ToMe's constant schedule, i.e. ``r = floor(f * P / L)`` per block for P patches
and L blocks. ``r`` may also be given directly. Either way each block merges at
most half of the tokens reaching it (a bipartite matching cannot merge more).
``proportional_attention = false`` (case id suffix ``_nopa``) turns the size
bias off: a little cheaper on GPU, where the bias needs evalsuite's own attention
kernel (:mod:`evalsuite.patch.attention_kernels`, which PyTorch's flash kernel
without bias outpaces) or heads one channel wider (``HEAD_PAD`` in
:mod:`evalsuite.patch.runner`); it costs some fidelity.

:func:`evalsuite.methods.tome.merge.merge_step` is the reference, in torch. On CUDA, ToMe runs the same
step as four Triton kernels and a sort (:mod:`evalsuite.methods.tome.kernels`,
checked against this one per device; ``EVALSUITE_TRITON=0`` turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import graphs
from ..base import AttentionRequest, Compressor
from ..state import TokenState
from . import kernels
from .merge import matching_old_to_new, merge_step, split_offset
from .spec import ToMeSpec


@dataclass
class ToMe(Compressor):
    spec: ToMeSpec

    def __post_init__(self) -> None:
        self.proportional_attention = self.spec.proportional_attention
        self._keys: torch.Tensor | None = None

    def r_for(self, num_patches: int) -> int:
        return self.spec.r_for(num_patches, self.num_layers)

    def attention_request(self, layer: int) -> AttentionRequest | None:
        return None if self.is_zero else AttentionRequest(keys=True)

    def begin(self, state: TokenState) -> None:
        state.proportional_attention = self.proportional_attention
        self._r = self.r_for(state.num_input_patches)
        self._a_offset = split_offset(self.spec.split, state.num_prefix)

    def observe_attention(self, layer, keys, importance) -> None:
        self._keys = keys

    def after_attention(self, layer: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        r = min(self._r, state.num_patch_tokens // 2)
        if r <= 0:
            return x
        patches, a_offset = state.num_patch_tokens, self._a_offset
        # small batches replay the step from a CUDA graph (launch-bound); the index tensors are the
        # graph's buffers, read by the token plan at the end of this forward. On CUDA: fused kernels.
        step = kernels.merge_step if kernels.supports(self._keys, x) else merge_step
        x, state.size, unm_idx, src_idx, dst_idx = graphs.replay_or_run(
            step, (self._keys, x, state.size), num_prefix=state.num_prefix, r=r, a_offset=a_offset)
        state.remap(lambda: matching_old_to_new(patches, unm_idx, src_idx, dst_idx, a_offset))
        state.merged = True
        self._keys = None
        return x
