"""Benchmark: where a VLM's time goes, and what compressing its visual tokens buys.

For each page size x batch x method x keep ratio, on a Qwen2-VL model built from a
configuration (random weights: speed only, rows labelled ``random-weights``):
vision tower, compression step, language-model prefill, one decode step (median over
``--decode-tokens`` steps), end-to-end (image in to last token), and speedups against the
uncompressed model beside the ideal ones from a FLOP model of tower and language model
(``ideal_prefill``: the LM's prefill FLOPs; ``ideal_ttft``: tower + prefill FLOPs).
Pre-LLM methods run the same tower as the uncompressed model; ``downscale`` runs it on
the smaller image; ``NAME@vision`` (random, v2drop, avit; tome merges) drops merge units inside the tower, after
its default blocks (``vision`` is the tower's time with the drop). Every time is
CUDA-synchronised on a GPU, the median of ``--repeats``.

    python -m evalsuite.bench.vlm --tiny                       # CPU smoke test, seconds
    python -m evalsuite.bench.vlm --device cuda --dtype bfloat16   # 2B config, 1036/1456 px, batch 1 and 8
    python -m evalsuite.bench.vlm --device cuda --dtype bfloat16 --methods random,divprune --keeps 0.5 --json out.json

Decoding here is eager (a ``DynamicCache``, one launch per layer op), which is host-bound
on a GPU: decode figures say so, not what the tokens cost (see evalsuite.vlm.generate).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from PIL import Image

from ..metrics.latency import synchronize
from ..vlm.generate import greedy
from ..vlm.methods import resolve
from ..vlm.select import kept_count

METHODS = ("random", "tome", "visionzip", "divprune", "downscale", "random@vision", "v2drop@vision", "avit@vision",
           "tome@vision")
HEADER = (f"{'size':>5} {'batch':>5} {'method':<10} {'keep':>4} {'vis_tok':>7} {'vision':>8} {'comp':>7} "
          f"{'prefill':>8} {'dec/tok':>8} {'e2e':>9} {'prefill_x':>9} {'ideal':>6} {'ttft_x':>6} {'ideal':>6}  label")


def params_for(method: str, keep: float) -> dict:
    if method in ("tome", "avit"):
        return {"merge_factor" if method == "tome" else "sparsity": round(1.0 - keep, 6)}
    return {"keep": keep}


def page(size: int) -> Image.Image:
    """A rendered document page, resized to ``size`` x ``size``."""
    from ..data.datasets.synthetic import rendered_sample

    return rendered_sample("bench", "invoice", "invoice", 0).load().convert("RGB").resize((size, size))


# -- FLOP model ----------------------------------------------------------------------------
def lm_prefill_flops(tokens: int, text) -> float:
    """Multiply-adds x 2 of a decoder prefill over ``tokens`` (projections, MLP, attention scores)."""
    d, inter, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    kv = d * text.num_key_value_heads // text.num_attention_heads
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * inter)
    return layers * (tokens * per_token + 4 * tokens * tokens * d)


def tower_flops(patches: int | list[int], vision) -> float:
    """The vision tower over ``patches`` patches (or a list: the patches entering each block), counted
    with full attention per image (Qwen2-VL's; Qwen2.5-VL's windowed blocks cost less attention)."""
    e = getattr(vision, "embed_dim", None) or vision.hidden_size  # Qwen2-VL names it embed_dim, Qwen2.5-VL hidden_size
    hidden = getattr(vision, "intermediate_size", None) or int(e * vision.mlp_ratio)
    gated = hasattr(vision, "intermediate_size")  # Qwen2.5-VL's gated MLP has three matrices
    per_token = 2 * (4 * e * e + (3 if gated else 2) * e * hidden)
    blocks = patches if isinstance(patches, list) else [patches] * vision.depth
    return sum(p * per_token + 4 * p * p * e for p in blocks)


# -- timing --------------------------------------------------------------------------------
def _timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def split_point(method: str) -> tuple[str, str]:
    """``"v2drop@vision"`` -> ``("v2drop", "vision")``; a bare name runs before the language model."""
    name, _, point = method.partition("@")
    return name, point or "pre_llm"


def measure(adapter, images, method: str, keep: float, decode_tokens: int, repeats: int, warmup: int,
            seed: int = 0) -> dict:
    """Median stage times (seconds) of ``method`` (``NAME`` or ``NAME@vision``) at ``keep`` on ``images``."""
    name, point = split_point(method)
    spec = resolve(name, params_for(name, keep) if name != "none" else {}, point)
    scale = math.sqrt(spec.keep) if spec.point == "image" else 1.0
    encoded = [adapter.encode(im, scale) for im in images]
    ids = [adapter.prompt_ids("Read all the text in this image.", e.num_tokens) for e in encoded]
    generator = torch.Generator().manual_seed(seed)
    device = adapter.device
    stages: dict[str, list[float]] = {k: [] for k in ("vision", "compression", "prefill", "decode", "e2e")}
    visual_after = 0
    for rep in range(warmup + repeats):
        start = time.perf_counter()
        slots = None
        if spec.point == "vision":
            t_vis, (visual, slots, _) = _timed(device, lambda: adapter.vision_with_unit_drop(encoded, spec, generator))
        else:
            t_vis, visual = _timed(device, lambda: adapter.vision(encoded))
        t_comp = 0.0
        if spec.point == "pre_llm" and spec.select is not None and spec.keep < 1.0:
            t_comp, picks = _timed(device, lambda: [spec.select(v, kept_count(len(v), spec.keep), generator=generator,
                                                                **spec.options) for v in visual])
            slots, visual = [p[0] for p in picks], [p[1] for p in picks]
        inputs = adapter.prefill_inputs(ids, encoded, visual, slots)
        gen = greedy(adapter.parts, inputs, decode_tokens, set(), adapter.pad_id,  # no end token: all steps run
                     decoder=adapter.decoder)
        synchronize(device)
        e2e = time.perf_counter() - start
        if rep >= warmup:
            for key, value in (("vision", t_vis), ("compression", t_comp), ("prefill", gen.prefill_seconds),
                               ("e2e", e2e)):
                stages[key].append(value)
            stages["decode"].extend(gen.decode_seconds)
        visual_after = sum(len(v) for v in visual) / len(visual)
    out = {k: statistics.median(v) if v else 0.0 for k, v in stages.items()}
    out["visual_tokens"] = visual_after
    patches = sum(int(e.grid_thw.prod()) for e in encoded) // len(encoded)
    out["patches"] = _tower_schedule(adapter, spec, patches)  # patches entering each block (FLOP model)
    out["lm_tokens"] = sum(len(x) - e.num_tokens for x, e in zip(ids, encoded)) / len(ids) + visual_after
    return out


def _tower_schedule(adapter, spec, patches: int) -> list[int]:
    from ..methods.state import default_layers, stage_counts

    depth = len(adapter.model.model.visual.blocks)
    if spec.point != "vision":
        return [patches] * depth
    layers = list(spec.params.get("layers") or sorted(set(default_layers(depth))))
    counts = dict(zip(layers, stage_counts(patches // 4, spec.keep, len(layers))))
    out, rows = [], patches
    for block in range(depth):
        out.append(rows)
        rows = counts.get(block, rows // 4) * 4
    return out


def run(config: str, sizes: list[int], batches: list[int], keeps: list[float], methods: list[str], device: str,
        dtype: str, decode_tokens: int, repeats: int, warmup: int) -> list[dict]:
    from ..models.qwen2_vl import create

    rows = []
    torch.manual_seed(0)
    with torch.device(device):
        adapter = create(config, config=config, min_pixels=56 * 56, max_pixels=max(sizes) ** 2,
                         max_new_tokens=decode_tokens)
    adapter.to(device, getattr(torch, dtype))
    cfg = adapter.model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    label = ",".join(adapter.labels)
    for size in sizes:
        for batch in batches:
            images = [page(size)] * batch
            base = measure(adapter, images, "none", 1.0, decode_tokens, repeats, warmup)
            rows.append(_row(size, batch, "none", 1.0, base, base, text, cfg.vision_config, label))
            print(_format(rows[-1]), flush=True)
            for method in methods:
                for keep in keeps:
                    figures = measure(adapter, images, method, keep, decode_tokens, repeats, warmup)
                    rows.append(_row(size, batch, method, keep, figures, base, text, cfg.vision_config, label))
                    print(_format(rows[-1]), flush=True)
    return rows


def _row(size, batch, method, keep, m, base, text, vision, label) -> dict:
    ms = {k: 1e3 * m[k] for k in ("vision", "compression", "prefill", "decode", "e2e")}
    full_lm = lm_prefill_flops(int(base["lm_tokens"]), text)
    lm = lm_prefill_flops(int(m["lm_tokens"]), text)
    full_tower, tower = tower_flops(base["patches"], vision), tower_flops(m["patches"], vision)
    ttft = m["vision"] + m["compression"] + m["prefill"]
    base_ttft = base["vision"] + base["compression"] + base["prefill"]
    return {
        "size": size, "batch": batch, "method": method, "keep": keep, "visual_tokens": m["visual_tokens"],
        **{f"{k}_ms": v for k, v in ms.items()},
        "prefill_speedup": base["prefill"] / m["prefill"] if m["prefill"] else float("nan"),
        "ideal_prefill_speedup": full_lm / lm,
        "ttft_speedup": base_ttft / ttft if ttft else float("nan"),
        "ideal_ttft_speedup": (full_lm + full_tower) / (lm + tower),
        "e2e_speedup": base["e2e"] / m["e2e"] if m["e2e"] else float("nan"),
        "label": label,
    }


def _format(r: dict) -> str:
    return (f"{r['size']:>5} {r['batch']:>5} {r['method']:<10} {r['keep']:>4g} {r['visual_tokens']:>7.0f} "
            f"{r['vision_ms']:>8.2f} {r['compression_ms']:>7.3f} {r['prefill_ms']:>8.2f} {r['decode_ms']:>8.2f} "
            f"{r['e2e_ms']:>9.1f} {r['prefill_speedup']:>9.2f} {r['ideal_prefill_speedup']:>6.2f} "
            f"{r['ttft_speedup']:>6.2f} {r['ideal_ttft_speedup']:>6.2f}  {r['label']}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.bench.vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke test: tiny config, 112/224 px, batch 1 and 2, keep 0.5, 1 repeat")
    parser.add_argument("--config", default="qwen2_vl_2b", help="a configuration of evalsuite.vlm.configs")
    parser.add_argument("--sizes", default="1036,1456")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--keeps", default="0.7,0.5,0.3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.sizes, args.batches, args.keeps = "tiny", "112,224", "1,2", "0.5"
        args.device, args.repeats, args.warmup, args.decode_tokens = "cpu", 1, 0, 3
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:  # an unknown method fails before any model is built
        name, point = split_point(method)
        resolve(name, params_for(name, 0.5), point)
    print(HEADER, flush=True)
    rows = run(args.config, [int(s) for s in args.sizes.split(",")], [int(b) for b in args.batches.split(",")],
               [float(k) for k in args.keeps.split(",")], methods, args.device, dtype, args.decode_tokens,
               args.repeats, args.warmup)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
