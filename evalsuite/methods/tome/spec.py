"""ToMe's parameters, case-id part and token schedule, without torch (see :mod:`evalsuite.methods.spec`).

``merge_factor = f`` removes the fraction ``f`` of the patch tokens by the end
of the encoder with ToMe's constant schedule, ``r = floor(f * P / L)`` per block
for P patches and L blocks; ``r`` may also be given directly. Each block merges
at most half of the tokens reaching it (a bipartite matching cannot merge more).
``proportional_attention = false`` (case-id suffix ``_nopa``) turns the size bias off.
``split`` picks the bipartite sets: ``"sequence"`` (default, as published: the whole
sequence alternates A, B, A, ... with the class token in A and never matched) or
``"patches"`` (the patch tokens alone alternate; case-id suffix ``_patchsplit``).
On a ViT with one class token the two swap A and B.

>>> ToMeSpec({"merge_factor": 0.5}).id_part
'tome_f0.5'
>>> ToMeSpec({"r": 8, "proportional_attention": False}).id_part
'tome_r8_nopa'
>>> ToMeSpec({"merge_factor": 0.5, "split": "patches"}).id_part
'tome_f0.5_patchsplit'
>>> ToMeSpec({"merge_factor": 0.5}).schedule(256, 1, 12)[:4]
[256, 246, 246, 236]
"""

from __future__ import annotations

import math

from ...params import Param, ParamError, Schema
from ..spec import MethodSpec, fmt


class ToMeSpec(MethodSpec):
    name = "tome"
    hooks = "evalsuite.methods.tome.hooks:ToMe"
    insertion = frozenset({"encoder", "vision_tower", "pre_llm"})
    PARAMS = Schema({
        "merge_factor": Param(float, None, min=0.0, max=1.0, open_max=True,
                              doc="fraction of patch tokens merged away by the last block"),
        "r": Param(int, None, min=0, doc="tokens merged per block"),
        "proportional_attention": Param(bool, True, doc="log(size) bias in later attention"),
        "split": Param(str, "sequence", choices=("sequence", "patches"), doc="how tokens alternate into A and B"),
    })
    zero_params = ({"merge_factor": 0.0}, {"r": 0})

    def validate(self) -> None:
        if ("merge_factor" in self.params) == ("r" in self.params):
            raise ParamError("merge_factor", "give exactly one of merge_factor (0..1) or r (tokens per block)")

    @property
    def proportional_attention(self) -> bool:
        return self.params.get("proportional_attention", True)

    @property
    def split(self) -> str:
        return self.params.get("split", "sequence")

    @property
    def id_part(self) -> str:
        base = f"tome_r{self.params['r']}" if "r" in self.params else f"tome_f{fmt(self.params['merge_factor'])}"
        base = base if self.proportional_attention else base + "_nopa"
        return base if self.split == "sequence" else base + "_patchsplit"

    @property
    def is_zero(self) -> bool:
        return self.params.get("r", 1) == 0 or self.params.get("merge_factor", 1.0) == 0.0

    def r_for(self, num_patches: int, num_layers: int) -> int:
        """Tokens merged per block for ``num_patches`` patches and ``num_layers`` blocks."""
        if "r" in self.params:
            return self.params["r"]
        return math.floor(self.params["merge_factor"] * num_patches / num_layers)

    def schedule(self, num_patches: int, num_prefix: int, num_layers: int) -> list[int]:
        r, tokens, out = self.r_for(num_patches, num_layers), num_patches, []
        for _ in range(num_layers):
            merged = min(r, tokens // 2)
            out += [tokens, tokens - merged]
            tokens -= merged
        return out
