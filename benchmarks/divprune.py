"""DivPrune's greedy max-min kernel (:mod:`evalsuite.vlm.select_kernels`) at each warp count.

One image's loop (one program, one step per kept token) timed with ``triton.testing.do_bench`` on
random bf16 tokens of the Qwen2-VL 2B configuration's width, per token count, kept count and
``num_warps``: the per-step time that bounds DivPrune's compression step at batch 1
(docs/performance.md, "Compression step at batch 1"). CUDA only::

    python -m benchmarks.divprune --tokens 1369,2704 --keeps 0.3,0.7 --warps 4,8,16,32
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    import triton

    from evalsuite.vlm import select, select_kernels

    parser = argparse.ArgumentParser(prog="python -m benchmarks.divprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1369,2704", help="visual tokens of one image (1036 / 1456 px pages)")
    parser.add_argument("--keeps", default="0.3,0.7")
    parser.add_argument("--warps", default="4,8,16,32")
    parser.add_argument("--dim", type=int, default=1536)
    args = parser.parse_args(argv)
    for n in (int(t) for t in args.tokens.split(",")):
        tokens = torch.randn(n, args.dim, device="cuda", dtype=torch.bfloat16)
        distance, start = select.divprune_distances(tokens)
        for keep in (float(k) for k in args.keeps.split(",")):
            k = select.kept_count(n, keep)
            chosen = torch.empty(k, dtype=torch.int64, device="cuda")
            for warps in (int(w) for w in args.warps.split(",")):
                def step():
                    select_kernels._max_min_kernel[(1,)](distance, start.reshape(1), chosen, n, k, distance.stride(0),
                                                         BLOCK=triton.next_power_of_2(n), num_warps=warps)
                ms = triton.testing.do_bench(step, warmup=10, rep=50)
                print(f"tokens {n:>5} kept {k:>5} warps {warps:>2}: {ms:.3f} ms ({1e3 * ms / k:.2f} us a step)",
                      flush=True)


if __name__ == "__main__":
    main()
