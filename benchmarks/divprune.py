"""DivPrune's greedy max-min kernel (:mod:`evalsuite.vlm.select_kernels`) per warp count and AHEAD.

One image's loop (one program, one choice per kept token) timed with ``triton.testing.do_bench`` on
random bf16 tokens of the Qwen2-VL 2B configuration's width, per token count, kept count,
``num_warps`` and ``AHEAD`` (candidates ranked per step): the time per choice that bounds DivPrune's
compression step at batch 1 (docs/performance.md, "Compression step at batch 1"). CUDA only::

    python -m benchmarks.divprune --tokens 1369,2704 --keeps 0.3,0.7 --warps 4,8,16,32 --aheads 1,2,4
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
    parser.add_argument("--aheads", default="1,2,4")
    parser.add_argument("--dim", type=int, default=1536)
    args = parser.parse_args(argv)
    for n in (int(t) for t in args.tokens.split(",")):
        tokens = torch.randn(n, args.dim, device="cuda", dtype=torch.bfloat16)
        distance, start = select.divprune_distances(tokens)
        for keep in (float(k) for k in args.keeps.split(",")):
            k = select.kept_count(n, keep)
            chosen = torch.empty(k, dtype=torch.int64, device="cuda")
            finite = torch.isfinite(distance).all().reshape(1)
            want = select.max_min_greedy(distance, start, k)
            for warps in (int(w) for w in args.warps.split(",")):
                for ahead in (int(a) for a in args.aheads.split(",")):
                    def run():
                        select_kernels._max_min_kernel[(1,)](
                            distance, start.reshape(1), chosen, finite, n, k, distance.stride(0),
                            BLOCK=triton.next_power_of_2(n), AHEAD=ahead, num_warps=warps)
                    ms = triton.testing.do_bench(run, warmup=10, rep=50)
                    same = "same choices" if torch.equal(chosen, want) else "CHOICES DIFFER from the torch loop"
                    print(f"tokens {n:>5} kept {k:>5} warps {warps:>2} ahead {ahead}: {ms:.3f} ms "
                          f"({1e3 * ms / k:.2f} us a choice), {same}", flush=True)


if __name__ == "__main__":
    main()
