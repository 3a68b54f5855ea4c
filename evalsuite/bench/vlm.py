"""Benchmark: where a VLM's time goes, and what compressing its visual tokens buys.

For each page size x batch x method x keep ratio, on a Qwen2-VL model built from a
configuration (random weights: speed only, rows labelled ``random-weights``):
vision tower, compression step, language-model prefill, one decode step (per token, median
over ``--repeats`` runs of ``--decode-tokens`` tokens), end-to-end (image in to last token),
and speedups against the uncompressed model beside the ideal ones from a FLOP model of tower
and language model (``ideal_prefill``: the LM's prefill FLOPs; ``ideal_ttft``: tower +
prefill FLOPs). Every time is CUDA-synchronised on a GPU, the median of ``--repeats``.

Methods are specs ``NAME[@POINT][:KEY=VALUE,...]`` (TOML values, a bare word is a string;
:mod:`evalsuite.bench.methodspec`), the row's ``method`` column shows the spec as given:

- ``NAME`` (random, tome, visionzip, divprune) selects among the tower's output tokens before
  the language model; ``downscale`` runs the tower on the smaller image;
- ``NAME@vision`` (random, v2drop, avit; tome merges) drops merge units inside the tower after
  the blocks ``layers`` (default three spread over the depth; ``layers=[3]``: one early stage,
  which is what makes the tower itself faster); ``vision`` is the tower's time with the drop;
- ``NAME@lm`` (v2drop, fastv) drops visual tokens inside the language model
  (:mod:`evalsuite.vlm.lm_drop`) after the same tower and inputs as ``none``; its ``compression``
  is 0 (the scoring is inside the prefill). A row's ``keep`` maps to the schedule: ``fastv@lm``
  is ``k=2, keep=<keep>``; ``v2drop@lm`` drops at the published Qwen2-VL layers (3, 16, 22) with
  one ratio ``keep ** (1/3)`` per stage, so the fraction left after the last drop is ``keep``
  (the published ratios 0.25/0.05/0 drop every visual token by layer 22, a 0 row, not a keep
  sweep). A spec that fixes its own amount (``keep``, ``merge_factor``, ``sparsity``, ``preset``)
  runs once, not per keep: ``v2drop@lm:preset=qwen2_vl`` and ``v2drop@lm:preset=llava`` are the
  published schedules; its ``keep`` column is what is left at the end. ``visual_tokens`` of an
  in-LM row is the layer-averaged count, and its ideal prefill counts each layer's own tokens.

Decode paths (``--decoder``, default ``both`` on CUDA, ``eager`` on a CPU): every row generates
through :func:`evalsuite.vlm.lm_drop.generate` (transformers' own decoder layers, the prefill
with or without in-LM dropping), ``eager`` (a growing cache, one Python pass per token, which is
host-bound on a GPU: its per-token time hides what fewer cached tokens save) and ``static``
(:mod:`evalsuite.vlm.static_decode`: a static KV cache, one step replayed as a CUDA graph on a
GPU: ``static+graph``; on a CPU the same step eagerly: ``static``). ``dec eager`` / ``dec static``
are the two per-token figures; ``e2e`` is tower + compression + inputs + prefill + decode on the
path in ``e2e_path`` (the static one where it ran; its one-off buffer and graph setup, which a
server pays once per shape, is left out and reported as ``static_setup_ms``). ``prefill`` is the
median over the runs of every path (the prefill does not depend on the decode path). In the JSON
rows: ``decode_eager_ms``, ``decode_static_ms`` (None where not run), ``static_path``, and
``decode_ms`` / ``e2e_ms`` / ``decode_speedup`` / ``e2e_speedup`` on ``decode_path``.

    python -m evalsuite.bench.vlm --tiny                       # CPU smoke test, seconds
    python -m evalsuite.bench.vlm --device cuda --dtype bfloat16   # 2B config, 1036/1456 px, batch 1 and 8
    python -m evalsuite.bench.vlm --device cuda --methods "random;divprune" --keeps 0.5 --json out.json
    python -m evalsuite.bench.vlm --device cuda --keeps 0.5 --batches 8 \\
        --methods "v2drop@vision:layers=[3];random@vision:layers=[1];v2drop@lm:preset=llava;fastv@lm"
    python -m evalsuite.bench.vlm --device cuda --decoder static --method "fastv@lm:k=3" --method tome
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from ..methods.spec import V2DROP_PRESETS
from ..metrics.latency import synchronize
from ..vlm import graphed, lm_drop
from ..vlm.methods import VLMMethod, VLMUsageError, resolve, tower_layers
from ..vlm.select import kept_count
from .methodspec import SpecError, format_spec, parse_spec, split_specs

METHODS = ("random", "tome", "visionzip", "divprune", "downscale", "random@vision", "v2drop@vision", "avit@vision",
           "tome@vision", "random@vision:layers=[3]", "v2drop@vision:layers=[3]", "v2drop@lm", "fastv@lm",
           "v2drop@lm:preset=qwen2_vl", "v2drop@lm:preset=llava")
# parameters that fix how much a method keeps: such a spec runs once, not once per --keeps value
AMOUNT_KEYS = frozenset({"keep", "merge_factor", "sparsity", "preset"})
V2DROP_LAYERS = V2DROP_PRESETS["qwen2_vl"][0]  # the published Qwen2-VL drop layers
DECODE_PATHS = ("eager", "static")
# The CPU smoke configuration: TINY's widths at the 2B model's depths (tower 32 blocks, language model
# 28 layers), so that the published in-LM layers and an early tower stage mean what they mean on the 2B.
TINY_2B_DEPTHS = "tiny_2b_depths"
HEADER = (f"{'size':>5} {'batch':>5} {'method':<26} {'keep':>4} {'vis_tok':>7} {'vision':>8} {'comp':>7} "
          f"{'prefill':>8} {'dec eager':>9} {'dec static':>10} {'e2e':>9} {'e2e_path':>12} {'prefill_x':>9} "
          f"{'ideal':>6} {'ttft_x':>6} {'ideal':>6}  label")


def config_dict(config: str | dict) -> dict:
    """A configuration of :mod:`evalsuite.vlm.configs` (or :data:`TINY_2B_DEPTHS`) as a dict."""
    from ..vlm import configs

    if isinstance(config, dict):
        return config
    if config == TINY_2B_DEPTHS:
        raw = configs.named("tiny_deep")
        raw["vision_config"]["depth"] = configs.QWEN2_VL_2B["vision_config"]["depth"]
        return raw
    return configs.named(config)


def depths(config: str | dict) -> tuple[int, int]:
    """(language-model layers, tower blocks) of a configuration, read without building it."""
    raw = config_dict(config)
    text = raw.get("text_config") or raw
    return text["num_hidden_layers"], raw["vision_config"]["depth"]


def params_for(method: str, keep: float) -> dict:
    if method in ("tome", "avit"):
        return {"merge_factor" if method == "tome" else "sparsity": round(1.0 - keep, 6)}
    return {"keep": keep}


@dataclass(frozen=True)
class Planned:
    """One row to measure: its ``method`` column (the spec as given), ``keep`` column, resolved method."""

    method: str
    keep: float
    resolved: VLMMethod


def split_point(method: str) -> tuple[str, str]:
    """``"v2drop@vision"`` -> ``("v2drop", "vision")``; a bare name runs before the language model."""
    name, _, point = method.partition("@")
    return name, point or "pre_llm"


def _params_at(name: str, point: str, params: dict, keep: float) -> dict:
    """The parameters of ``name@point`` at row keep ``keep`` (see the module docstring)."""
    if point == "lm" and name == "fastv":
        return {"k": 2, **params, "keep": keep}
    if point == "lm" and name == "v2drop":
        layers = list(params.get("layers", V2DROP_LAYERS))
        return {**params, "layers": layers, "keep": keep ** (1 / len(layers)) if layers else keep}
    return {**params, **params_for(name, keep)}


def plan(specs: list[str], keeps: list[float], config: str | dict) -> list[list[Planned]]:
    """Each spec's rows, every one resolved against the configuration's depths; a bad spec or schedule
    is a :class:`VLMUsageError` naming the spec, raised before any model is built."""
    lm_depth, tower_depth = depths(config)
    out = []
    for spec in specs:
        try:
            method, params = parse_spec(spec)
            name, point = split_point(method)
            rows = []
            fixed = bool(AMOUNT_KEYS & set(params)) or name == "none"
            for keep in [None] if fixed else keeps:
                resolved = resolve(name, params if fixed else _params_at(name, point, params, keep), point,
                                   lm_depth if point == "lm" else None)
                if resolved.point == "vision":
                    tower_layers(resolved, tower_depth)
                rows.append(Planned(format_spec(method, params), resolved.keep if fixed else keep, resolved))
        except (SpecError, ValueError) as exc:  # VLMUsageError and ScheduleError are ValueErrors
            raise VLMUsageError(f"--methods {spec}: {exc}") from None
        out.append(rows)
    return out


def page(size: int) -> Image.Image:
    """A rendered document page, resized to ``size`` x ``size``."""
    from ..data.datasets.synthetic import rendered_sample

    return rendered_sample("bench", "invoice", "invoice", 0).load().convert("RGB").resize((size, size))


# -- FLOP model ----------------------------------------------------------------------------
def lm_prefill_flops(tokens: int | list[int], text) -> float:
    """Multiply-adds x 2 of a decoder prefill over ``tokens`` (or a list: the tokens entering each layer,
    as an in-LM dropping method leaves them) for projections, MLP and attention scores."""
    d, inter, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    kv = d * text.num_key_value_heads // text.num_attention_heads
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * inter)
    per_layer = tokens if isinstance(tokens, list) else [tokens] * layers
    if len(per_layer) != layers:
        raise ValueError(f"{len(per_layer)} per-layer token counts for a {layers}-layer language model")
    return sum(t * per_token + 4 * t * t * d for t in per_layer)


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


def measure(adapter, images, spec: VLMMethod, decode_tokens: int, repeats: int, warmup: int,
            decoders: tuple[str, ...] = ("eager",), seed: int = 0) -> dict:
    """Median stage times (seconds) of the resolved method ``spec`` on ``images``, decoding on each path of
    ``decoders`` (``eager``, ``static``) through :func:`evalsuite.vlm.lm_drop.generate`."""
    scale = math.sqrt(spec.keep) if spec.point == "image" else 1.0
    schedule = spec.schedule or lm_drop.NO_DROP
    encoded = [adapter.encode(im, scale) for im in images]
    ids = [adapter.prompt_ids("Read all the text in this image.", e.num_tokens) for e in encoded]
    generator = torch.Generator().manual_seed(seed)
    device = adapter.device
    stages: dict[str, list[float]] = {k: [] for k in ("vision", "compression", "prefill")}
    for path in decoders:
        stages.update({f"decode_{path}": [], f"e2e_{path}": [], f"setup_{path}": []})
    visual_after, result, static_path = 0.0, None, None
    if getattr(spec.select, "fn", None) is not None and spec.point == "pre_llm":
        # a Graphed selection runs eagerly at first sight, captures at the second, and may capture once more
        # at the third to read inputs that recur at one address in place (evalsuite.methods.graphs)
        warmup = max(warmup, 3)
    with graphed.replaying():  # selections replay CUDA graphs: the steady state of a recurring page shape
        for rep in range(warmup + repeats):
            start = time.perf_counter()
            slots = None
            if spec.point == "vision":
                t_vis, (visual, slots, _) = _timed(device,
                                                   lambda: adapter.vision_with_unit_drop(encoded, spec, generator))
            else:
                t_vis, visual = _timed(device, lambda: adapter.vision(encoded))
            front_visual = visual
            t_comp = 0.0
            if spec.point == "pre_llm" and spec.select is not None and spec.keep < 1.0:
                t_comp, picks = _timed(device, lambda: [spec.select(v, kept_count(len(v), spec.keep),
                                                                    generator=generator, **spec.options)
                                                        for v in visual])
                slots, visual = [p[0] for p in picks], [p[1] for p in picks]
            inputs = adapter.prefill_inputs(ids, encoded, visual, slots)
            # one image per sample: its visual tokens are lm_drop's group 1
            lm_inputs = lm_drop.LMInputs(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask.bool(),
                                         inputs.visual_mask.long())
            synchronize(device)
            front = time.perf_counter() - start  # image in to the language model's inputs
            timed = rep >= warmup
            for path in decoders:
                with torch.inference_mode():  # no end token: all steps run
                    result = lm_drop.generate(adapter.model, lm_inputs, schedule, max_new_tokens=decode_tokens,
                                              decode=path, stop_at_eos=False, pad_token_id=adapter.pad_id)
                if timed:
                    stages["prefill"].append(result.prefill_s)
                    stages[f"decode_{path}"].append(result.decode_s_per_token)
                    stages[f"e2e_{path}"].append(front + result.generation_s)
                    stages[f"setup_{path}"].append(result.decode_setup_s)
                    static_path = result.decode_path if path == "static" else static_path
            if timed:
                stages["vision"].append(t_vis)
                stages["compression"].append(t_comp)
            visual_after = sum(len(v) for v in visual) / len(visual)
    out = {k: statistics.median(v) if v else 0.0 for k, v in stages.items()}
    out["static_path"] = static_path
    out["compression_eager"] = out["compression"]
    fn = getattr(spec.select, "fn", None)  # a Graphed selection: its eager time beside the replay's
    if fn is not None and spec.point == "pre_llm" and spec.keep < 1.0:
        eager = [_timed(device, lambda: [fn(v, kept_count(len(v), spec.keep), generator=generator, **spec.options)
                                         for v in front_visual])[0] for _ in range(max(repeats, 1))]
        out["compression_eager"] = statistics.median(eager)
    text_tokens = sum(len(x) - e.num_tokens for x, e in zip(ids, encoded)) / len(ids)
    patches = sum(int(e.grid_thw.prod()) for e in encoded) // len(encoded)
    out["patches"] = _tower_schedule(adapter, spec, patches)  # patches entering each block (FLOP model)
    if spec.schedule is not None:  # in-LM: each layer's own visual tokens (mean over samples)
        per_layer = result.visual_tokens_per_layer
        out["visual_tokens"] = result.visual_tokens_layer_avg
        out["lm_tokens"] = [round(text_tokens + v) for v in per_layer]
    else:
        out["visual_tokens"] = visual_after
        out["lm_tokens"] = round(text_tokens + visual_after)
    return out


def _tower_schedule(adapter, spec, patches: int) -> list[int]:
    from ..methods.state import stage_counts

    depth = len(adapter.model.model.visual.blocks)
    if spec.point != "vision":
        return [patches] * depth
    layers = tower_layers(spec, depth)
    counts = dict(zip(layers, stage_counts(patches // 4, spec.keep, len(layers))))
    out, rows = [], patches
    for block in range(depth):
        out.append(rows)
        rows = counts.get(block, rows // 4) * 4
    return out


def run(config: str | dict, sizes: list[int], batches: list[int], keeps: list[float], methods: list[str],
        device: str, dtype: str, decode_tokens: int, repeats: int, warmup: int,
        decoders: tuple[str, ...] = ("eager",)) -> list[dict]:
    """One row per size x batch x planned method (see :func:`plan`), after the ``none`` row."""
    from ..models.qwen2_vl import create

    planned = [row for rows in plan(list(methods), keeps, config) for row in rows]
    none = plan(["none"], [1.0], config)[0][0]
    bad = set(decoders) - set(DECODE_PATHS)
    if bad or not decoders:
        raise ValueError(f"decoders {sorted(bad) or list(decoders)}: choose among {DECODE_PATHS}")
    rows = []
    torch.manual_seed(0)
    with torch.device(device):
        adapter = create(config if isinstance(config, str) else "bench", config=config_dict(config),
                         min_pixels=56 * 56, max_pixels=max(sizes) ** 2, max_new_tokens=decode_tokens)
    adapter.to(device, getattr(torch, dtype))
    cfg = adapter.model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    label = ",".join(adapter.labels)
    for size in sizes:
        for batch in batches:
            images = [page(size)] * batch
            base = measure(adapter, images, none.resolved, decode_tokens, repeats, warmup, decoders)
            for p in [none, *planned]:
                figures = base if p is none else measure(adapter, images, p.resolved, decode_tokens, repeats,
                                                         warmup, decoders)
                rows.append(_row(size, batch, p.method, p.keep, figures, base, text, cfg.vision_config, label,
                                 decoders))
                print(_format(rows[-1]), flush=True)
    return rows


# The targets the benchmark's figures are read against, set for one data-centre GPU (see targets)
STEP_MS, PREFILL_SHARE, TOWER_X = 1.0, 0.90, 1.6


def _point(method: str) -> str:
    """Where a row's method spec ran (``downscale``, a bare name, works on the image)."""
    name, point = split_point(parse_spec(method)[0])
    return "image" if name == "downscale" else point


def targets(rows: list[dict]) -> list[str]:
    """One line per target that some rows measure: how many rows meet it and which miss, with figures.
    Compression step <= 1 ms at batch 1 (pre-LLM selections); prefill speed-up >= 90% of the FLOP
    model's ideal at keep 0.5, batch 8 (pre-LLM and image-side rows); tower >= 1.6x faster at keep
    0.5, batch 8, 1036 px (rows compressing inside the tower, against the same size's ``none``)."""
    none = {(r["size"], r["batch"]): r for r in rows if r["method"] == "none"}
    checks = []
    for r in (r for r in rows if r["method"] != "none"):
        where = f"{r['method']} keep {r['keep']:g} at {r['size']} px, batch {r['batch']}"
        point = _point(r["method"])
        if r["batch"] == 1 and point == "pre_llm":
            checks.append((f"compression step <= {STEP_MS:g} ms at batch 1", where, r["compression_ms"],
                           r["compression_ms"] <= STEP_MS, "ms"))
        if r["batch"] == 8 and r["keep"] == 0.5 and point in ("pre_llm", "image"):
            share = r["prefill_speedup"] / r["ideal_prefill_speedup"]
            checks.append((f"prefill speed-up >= {PREFILL_SHARE:.0%} of ideal at keep 0.5, batch 8", where, share,
                           share >= PREFILL_SHARE, "of ideal"))
        base = none.get((r["size"], r["batch"]))
        if r["batch"] == 8 and r["keep"] == 0.5 and r["size"] == 1036 and point == "vision" and base:
            speedup = base["vision_ms"] / r["vision_ms"]
            checks.append((f"tower >= {TOWER_X:g}x at keep 0.5, batch 8, 1036 px", where, speedup,
                           speedup >= TOWER_X, "x"))
    lines = []
    for target in dict.fromkeys(c[0] for c in checks):
        mine = [c for c in checks if c[0] == target]
        missed = [f"{where} ({value:.2f} {unit})" for _, where, value, ok, unit in mine if not ok]
        met = [f"{where} ({value:.2f} {unit})" for _, where, value, ok, unit in mine if ok]
        verdict = f"met by {len(met)} of {len(mine)} rows"
        detail = f"; missed: {', '.join(missed)}" if missed else ""
        if target.startswith("tower") and met:
            detail += f"; met: {', '.join(met)}"
        lines.append(f"# target: {target}: {verdict}{detail}")
    return lines


def _ratio(a, b) -> float:
    return a / b if a is not None and b else float("nan")


def _row(size, batch, method, keep, m, base, text, vision, label, decoders) -> dict:
    ms = {k: 1e3 * m[k] for k in ("vision", "compression", "compression_eager", "prefill")}
    paths = {p: (1e3 * m[f"decode_{p}"], 1e3 * m[f"e2e_{p}"]) if p in decoders else (None, None)
             for p in DECODE_PATHS}
    main_path = "static" if "static" in decoders else "eager"  # the GPU figure (issue 24): static+graph
    full_lm = lm_prefill_flops(base["lm_tokens"], text)
    lm = lm_prefill_flops(m["lm_tokens"], text)
    full_tower, tower = tower_flops(base["patches"], vision), tower_flops(m["patches"], vision)
    ttft = m["vision"] + m["compression"] + m["prefill"]
    base_ttft = base["vision"] + base["compression"] + base["prefill"]
    return {
        "size": size, "batch": batch, "method": method, "keep": keep, "visual_tokens": m["visual_tokens"],
        **{f"{k}_ms": v for k, v in ms.items()},
        "decode_eager_ms": paths["eager"][0], "decode_static_ms": paths["static"][0],
        "e2e_eager_ms": paths["eager"][1], "e2e_static_ms": paths["static"][1],
        "static_path": m["static_path"],  # static+graph (CUDA) or static (CPU); None when not run
        "static_setup_ms": 1e3 * m["setup_static"] if "static" in decoders else None,
        # decode_ms / e2e_ms: the figures on decode_path (the static path where it ran, else eager)
        "decode_path": m["static_path"] if main_path == "static" else "eager",
        "decode_ms": paths[main_path][0], "e2e_ms": paths[main_path][1],
        "prefill_speedup": _ratio(base["prefill"], m["prefill"]),
        "ideal_prefill_speedup": full_lm / lm,
        "ttft_speedup": _ratio(base_ttft, ttft),
        "ideal_ttft_speedup": (full_lm + full_tower) / (lm + tower),
        "decode_speedup": _ratio(base[f"decode_{main_path}"], m[f"decode_{main_path}"]),
        "e2e_speedup": _ratio(base[f"e2e_{main_path}"], m[f"e2e_{main_path}"]),
        "label": label,
    }


def _opt(value, width: int, spec: str) -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _format(r: dict) -> str:
    return (f"{r['size']:>5} {r['batch']:>5} {r['method']:<26} {r['keep']:>4.3g} {r['visual_tokens']:>7.1f} "
            f"{r['vision_ms']:>8.2f} {r['compression_ms']:>7.3f} {r['prefill_ms']:>8.2f} "
            f"{_opt(r['decode_eager_ms'], 9, '.2f')} {_opt(r['decode_static_ms'], 10, '.3f')} "
            f"{r['e2e_ms']:>9.1f} {r['decode_path']:>12} {r['prefill_speedup']:>9.2f} "
            f"{r['ideal_prefill_speedup']:>6.2f} {r['ttft_speedup']:>6.2f} {r['ideal_ttft_speedup']:>6.2f}  {r['label']}")


def header_note(device: str, decoders: tuple[str, ...]) -> str:
    static = ("static+graph (static KV cache, one step replayed as a CUDA graph; +fused: Triton-fused layer "
              "kernels, evalsuite.vlm.decode_kernels)" if device.startswith("cuda")
              else "static (static KV cache, no CUDA graph on a CPU)")
    parts = [f"dec eager: {'eager (growing cache, one Python pass per token)' if 'eager' in decoders else 'not run'}",
             f"dec static: {static if 'static' in decoders else 'not run'}",
             "comp: the pre-LLM selection (on CUDA replayed from a CUDA graph once a shape recurs, "
             "evalsuite.vlm.graphed; JSON compression_eager_ms: the same selection run eagerly)",
             "e2e: tower + compression + inputs + prefill + decode on the e2e_path column's path"]
    return "# ms; " + "; ".join(parts) + "; in-LM rows: vis_tok layer-averaged"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.bench.vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke test: TINY's widths at the 2B's depths, 112/224 px, batch 1 and 2, keep 0.5, "
                             "1 repeat (as defaults: options given with it win)")
    parser.add_argument("--config", default="qwen2_vl_2b", help="a configuration of evalsuite.vlm.configs")
    parser.add_argument("--sizes", default="1036,1456")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--keeps", default="0.7,0.5,0.3")
    parser.add_argument("--methods", default=None, metavar="SPEC;SPEC;...",
                        help="method specs NAME[@POINT][:KEY=VALUE,...] separated by ';' (or ',' between plain "
                             "names); default: " + ";".join(METHODS))
    parser.add_argument("--method", action="append", default=[], metavar="SPEC",
                        help="one more method spec (repeatable); with --method alone, only these run")
    parser.add_argument("--decoder", choices=["eager", "static", "both"], default=None,
                        help="decode path(s) to time: default both on CUDA, eager on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    if parser.parse_known_args(argv)[0].tiny:  # --tiny's defaults; options given beside it still apply
        parser.set_defaults(config=TINY_2B_DEPTHS, sizes="112,224", batches="1,2", keeps="0.5", device="cpu",
                            repeats=1, warmup=0, decode_tokens=3)
    args = parser.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    decoder = args.decoder or ("both" if args.device.startswith("cuda") else "eager")
    decoders = DECODE_PATHS if decoder == "both" else (decoder,)
    try:
        methods = split_specs(args.methods) if args.methods is not None else [] if args.method else list(METHODS)
    except SpecError as exc:
        raise VLMUsageError(f"--methods {exc}") from None
    methods += args.method
    keeps = [float(k) for k in args.keeps.split(",")]
    plan(methods, keeps, args.config)  # a bad spec or schedule fails before any model is built
    print(header_note(args.device, decoders), flush=True)
    print(HEADER, flush=True)
    rows = run(args.config, [int(s) for s in args.sizes.split(",")], [int(b) for b in args.batches.split(",")],
               keeps, methods, args.device, dtype, args.decode_tokens, args.repeats, args.warmup, decoders)
    for line in targets(rows):  # GPU targets: on a CPU they only show what the lines look like
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
