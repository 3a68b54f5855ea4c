"""Token Merging (ToMe, Bolya et al., arXiv 2210.09461) as a package.

* :mod:`.merge` -- the reference merge step in torch (bipartite soft matching, size-weighted merge);
* :mod:`.kernels` -- the same step in fused Triton kernels (CUDA; the interpreter on CPU);
* :mod:`.hooks` -- the :class:`~evalsuite.methods.base.Compressor` that runs it in every block.

Importing the package imports no torch; each module above imports only what it
needs, and nothing here imports back (no cycle).
"""
