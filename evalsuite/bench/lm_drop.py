"""Benchmark: visual-token dropping inside the language model (V2Drop, FastV) against the unpatched model.

One row per method x batch: the layer-averaged visual tokens, the KV cache after prefill, the prefill
(time to first token), the decode time per token on two paths (``eager``: transformers' layers called
from Python with a growing cache; ``graph``: static KV cache, one step replayed as a CUDA graph, on a GPU
only; on a CPU the static path runs without a graph and its column reads ``static``) and end-to-end
generation time (prefill + ``--new-tokens`` greedy tokens, eos ignored), each with its speedup over the
``none`` row of the same batch. The last lines give V2Drop's generation-time saving beside the paper's 31.5%.

LM-only: the visual tokens enter as random embeddings with the M-RoPE positions of a real image grid (the
vision tower is not run: its time does not depend on the dropping). All weights are random
(``random-weights``): figures are speeds, never quality.

    python -m evalsuite.bench.lm_drop --tiny                     # CPU, a 24-layer hidden-64 stand-in
    python -m evalsuite.bench.lm_drop                            # GPU: the Qwen2-VL 2B configuration, bf16
    python -m evalsuite.bench.lm_drop --batches 1,8 --visual-tokens 1369 --new-tokens 64
    python -m evalsuite.bench.lm_drop --method v2drop:layers=[2],keep=0.25 --method fastv:k=3,keep=0.25
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch

from ..vlm import lm_drop
from .methodspec import SpecError, format_spec, parse_spec

PAPER_V2DROP_SAVING_PCT = 31.5  # arXiv 2509.01552: generation latency saved on images (LLaVA-1.5-7B)

# The Qwen2-VL-2B configuration (language model and vision tower), random weights.
QWEN2_VL_2B = dict(
    text=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
              num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
              tie_word_embeddings=True),
    vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, spatial_merge_size=2,
                patch_size=14, temporal_patch_size=2, in_channels=3),
)
# CPU stand-in: deep enough for the published schedules (layer 22), small enough for a test.
TINY = dict(
    text=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
    vision=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, spatial_merge_size=2,
                patch_size=14, temporal_patch_size=2, in_channels=3),
)
METHODS = [
    ("none", {}),
    ("v2drop", {"preset": "llava"}),
    ("v2drop", {"preset": "qwen2_vl"}),
    ("fastv", {"k": 2, "keep": 0.5}),
]
IMAGE, VSTART, VEND = 151655, 151652, 151653  # Qwen2-VL's placeholder ids; a small vocabulary takes its last ids
TEXT_IDS = (10, 900)  # random text ids, clear of the placeholders


def build_model(spec: dict, device: str, dtype: torch.dtype):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vocab = spec["text"]["vocab_size"]
    image, start, end = (IMAGE, VSTART, VEND) if vocab > IMAGE + 1 else (vocab - 2, vocab - 4, vocab - 3)
    ids = dict(image_token_id=image, vision_start_token_id=start, vision_end_token_id=end, video_token_id=image + 1)
    config = Qwen2VLConfig(text_config=spec["text"], vision_config=spec["vision"], **ids)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 2B model's CPU init takes minutes
        model = Qwen2VLForConditionalGeneration(config)
    return model.to(dtype).eval()


def synthetic_inputs(model, batch: int, visual_tokens: int, text_tokens: int) -> lm_drop.LMInputs:
    """``batch`` identical prompts: a short prefix, one square image of ``visual_tokens`` (rounded to a square
    grid) as random embeddings at the norm of the text embeddings, then ``text_tokens`` of text."""
    cfg = model.config
    side = max(1, round(math.sqrt(visual_tokens)))
    n = side * side
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(0)
    prefix = torch.randint(*TEXT_IDS, (4,), generator=g).tolist()
    text = torch.randint(*TEXT_IDS, (text_tokens,), generator=g).tolist()
    row = prefix + [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id] + text
    ids = torch.tensor([row] * batch, device=device)
    grid = torch.tensor([[1, 2 * side, 2 * side]] * batch, device=device)
    embeds = model.model.get_input_embeddings()(ids)
    img = ids == cfg.image_token_id
    scale = embeds[~img].float().norm(dim=-1).mean() / math.sqrt(embeds.shape[-1])
    noise = torch.randn(int(img.sum()), embeds.shape[-1], generator=g).to(device, embeds.dtype) * scale
    embeds = embeds.masked_scatter(img[..., None], noise)
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=img.int(), image_grid_thw=grid,
                                              attention_mask=torch.ones_like(ids))
    return lm_drop.LMInputs(embeds, positions, torch.ones_like(ids, dtype=torch.bool),
                            lm_drop.image_groups(ids, cfg.image_token_id))


def _median(results, attr) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def _time(model, inputs, schedule, new_tokens, decode, repeats, warmup):
    """``repeats`` timed runs after ``warmup`` untimed ones (allocator, kernel selection, graph pools)."""
    runs = [lm_drop.generate(model, inputs, schedule, max_new_tokens=new_tokens, decode=decode, stop_at_eos=False)
            for _ in range(warmup + repeats)]
    return runs[warmup:]


def run(spec: dict, device: str, dtype: torch.dtype, batches, visual_tokens: int, text_tokens: int,
        new_tokens: int, repeats: int, methods=METHODS, warmup: int = 1) -> list[dict]:
    model = build_model(spec, device, dtype)
    depth = model.config.text_config.num_hidden_layers
    schedules = [(name, params, lm_drop.parse_schedule(name, params, depth)) for name, params in methods]
    rows = []
    for batch in batches:
        inputs = synthetic_inputs(model, batch, visual_tokens, text_tokens)
        base = None
        for name, params, schedule in schedules:
            eager = _time(model, inputs, schedule, new_tokens, "eager", repeats, warmup)
            static = _time(model, inputs, schedule, new_tokens, "static", repeats, warmup)
            row = dict(
                method=format_spec(name, params),
                batch=batch, visual_tokens=eager[0].visual_tokens_per_layer[0],
                layer_avg=eager[0].visual_tokens_layer_avg, kv_mib=eager[0].kv_cache_bytes / 2**20,
                prefill_ms=1e3 * _median(eager + static, "prefill_s"),
                decode_eager_ms=1e3 * _median(eager, "decode_s_per_token"),
                decode_static_ms=1e3 * _median(static, "decode_s_per_token"),
                static_path=static[0].decode_path, setup_ms=1e3 * _median(static, "decode_setup_s"),
                e2e_eager_ms=1e3 * _median(eager, "generation_s"),
                e2e_static_ms=1e3 * _median(static, "generation_s"),
                labels=["random-weights", "lm-only"],
            )
            base = base or row
            for key in ("prefill_ms", "decode_eager_ms", "decode_static_ms", "e2e_eager_ms", "e2e_static_ms"):
                row[key.replace("_ms", "_x")] = base[key] / row[key]
            rows.append(row)
            print(_format(row), flush=True)
    return rows


HEADER = (f"{'method':<28} {'B':>2} {'vis':>5} {'l-avg':>7} {'KV MiB':>8} {'prefill ms':>10} {'x':>5} "
          f"{'dec eager':>9} {'x':>5} {'dec static':>10} {'x':>5} {'path':>12} {'e2e eager':>9} {'x':>5} "
          f"{'e2e static':>10} {'x':>5}")


def _format(r: dict) -> str:
    return (f"{r['method']:<28} {r['batch']:>2} {r['visual_tokens']:>5.0f} {r['layer_avg']:>7.1f} "
            f"{r['kv_mib']:>8.2f} {r['prefill_ms']:>10.2f} {r['prefill_x']:>5.2f} {r['decode_eager_ms']:>9.2f} "
            f"{r['decode_eager_x']:>5.2f} {r['decode_static_ms']:>10.3f} {r['decode_static_x']:>5.2f} "
            f"{r['static_path']:>12} {r['e2e_eager_ms']:>9.1f} {r['e2e_eager_x']:>5.2f} "
            f"{r['e2e_static_ms']:>10.1f} {r['e2e_static_x']:>5.2f}")


def savings(rows: list[dict]) -> list[str]:
    """V2Drop's generation-time saving (1 - its end-to-end time / none's) per batch and decode path."""
    lines = []
    for r in rows:
        if r["method"].startswith("v2drop"):
            for path in ("eager", "static"):
                saving = 100 * (1 - 1 / r[f"e2e_{path}_x"])
                name = r["static_path"] if path == "static" else "eager"
                lines.append(f"{r['method']} B={r['batch']} {name}: generation time saved {saving:.1f}% "
                             f"(paper: {PAPER_V2DROP_SAVING_PCT}%)")
    return lines


def parse_method(spec: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` with TOML values (``layers=[3,17]`` is one value) -> ``(name, params)``."""
    try:
        name, params = parse_spec(spec)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(f"--method {exc}") from None
    try:
        lm_drop.parse_schedule(name, params, 10**6)  # depth is checked once the model is known
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--method {spec}: {exc}") from None
    return name, params


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.bench.lm_drop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the 24-layer CPU stand-in, few tokens, one repeat")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batches", default="1")
    parser.add_argument("--visual-tokens", type=int, default=None, help="per image (default 1369: a 1036 px page)")
    parser.add_argument("--text-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones, per row")
    parser.add_argument("--method", action="append", type=parse_method, metavar="NAME[:KEY=VALUE,...]")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    tiny = args.tiny
    device = args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    spec = TINY if tiny else QWEN2_VL_2B
    visual = args.visual_tokens or (64 if tiny else 1369)
    text = args.text_tokens or (16 if tiny else 32)
    new = args.new_tokens or (4 if tiny else 64)
    repeats = args.repeats or (1 if tiny else 3)
    name = "tiny 24-layer stand-in" if tiny else "Qwen2-VL 2B configuration"
    print(f"# {name}, random-weights, {device} {str(dtype).removeprefix('torch.')}; LM only: visual tokens are "
          f"random embeddings (vision tower skipped); {visual} visual + {text + 6} text tokens, {new} new tokens, "
          f"median of {repeats}")
    print(HEADER)
    rows = run(spec, device, dtype, [int(b) for b in args.batches.split(",")], visual, text, new, repeats,
               args.method or METHODS, args.warmup)
    for line in savings(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
