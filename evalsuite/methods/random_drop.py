"""Seeded uniform random dropping: a baseline published studies found strong.

Same staged schedule as the other dropping methods; the scores are uniform
noise from a generator seeded with the case seed, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._staged import StagedDrop


@dataclass
class RandomDrop(StagedDrop):
    def begin(self, state):
        super().begin(state)
        self._generator = torch.Generator(device=state.size.device).manual_seed(self.seed)

    def scores(self, layer, x, x_in, state):
        shape = (x.shape[0], state.num_patch_tokens)
        return torch.rand(shape, generator=self._generator, device=x.device)
