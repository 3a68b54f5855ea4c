"""One VLM case: ask the VLM about every sample, compressed and not, and score its answers.

The engine hands a case whose model family is a VLM (its factory says ``kind = "vlm"``)
to :func:`evaluate_vlm_case`. The uncompressed pass (images encoded, vision tower,
greedy answers) runs once per model x dataset (:class:`VLMReference`, kept by the
engine) and every method of the pair is compared with it. A ``pre_llm`` method reuses
the reference's visual tokens (the tower computes the same thing) and times its own
selection; an ``image`` method re-encodes the resized images and runs the tower again.
An ``lm`` method (V2Drop, FastV inside the language model) gets every visual token and
generates with :func:`evalsuite.vlm.lm_drop.generate` on its schedule; its ``lm_*`` KPIs
are against the same model's unpatched run through the same code on the same batches
(``lm_drop.kpis``; run once per model x dataset and decode path, kept in the reference),
and ``tokens_after`` is the layer-averaged visual-token count. With ``decoder = "static"``
on the model every case also times generation on the static-cache path
(:mod:`evalsuite.vlm.static_decode`, a CUDA graph on a GPU) for its ``lm_*`` figures;
answers and the ``*_p50`` timings stay eager (``env``: ``decode_path``, ``lm_decode_path``).

Per sample: an image the processor refuses, a prompt longer than the context or an
empty answer fails that sample, named; the rest of the case goes on. A case where the
language model did not see the planned number of tokens (the compression did not
fire; for an ``lm`` method: the last LM layer did not see the visual tokens its schedule
leaves) fails as a whole (:class:`CompressionNotFired`).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.sample import Sample, SampleError
from ..metrics import kpis, similarity, text_tokens
from ..metrics.latency import synchronize, timed_calls
from ..ocr.fields import field_hits
from ..ocr.wer import char_error_rate, word_error_rate
from ..results import CaseResult, SampleRecord
from ..workers import thread_map
from . import lm_drop, prompts
from .adapter import EncodedImage, InputError, Qwen2VLAdapter
from .generate import Generation, PrefillInputs, _lengths, eager_prefill, greedy
from .methods import ScheduleError, VLMMethod, VLMUsageError, resolve
from .select import kept_count

# KPIs that only a VLM case has: the gate skips them where absent (encoder cases) ...
VLM_KPIS = ("answer_wer", "answer_cer", "answer_wer_uncompressed", "answer_cer_uncompressed", "answer_wer_drift",
            "answer_cer_drift", "answer_agreement", "answer_exact_match", "answer_sroie_fields_found")
# ... and those that judge answer quality, meaningless from random weights: reported, never gated there.
ANSWER_QUALITY = VLM_KPIS
# Encoder-feature KPIs a VLM case reports for information only: its answers gate, not its features.
FEATURE_KPIS = ("feature_cosine_mean", "feature_cosine_p5", "emd")


class CompressionNotFired(RuntimeError):
    """The language model saw another sequence length than the method planned."""


def not_applicable(result: CaseResult) -> set[str]:
    """KPIs the thresholds must not check on ``result`` (the session adds these to its own)."""
    skipped = {k for k in VLM_KPIS if k not in result.kpis}
    if "vlm" in result.labels:
        skipped |= set(FEATURE_KPIS)
        if "random-weights" in result.labels:
            skipped |= set(ANSWER_QUALITY)
    return skipped


@dataclass
class _Pass:
    """One pass over the answerable samples, in batch order (lists are per sample unless noted)."""

    encoded: list[EncodedImage]
    prompt_ids: list[list[int]]
    visual: list[torch.Tensor]  # [N_b, D] visual tokens into the LM (kept ones for a compressed pass)
    sizes: list[torch.Tensor]  # [N_b] input tokens each stands for
    answers: list[list[int]]
    lm_tokens: list[int]
    planned: list[int]
    vision_seconds: list[float] = field(default_factory=list)  # per batch
    compression_seconds: list[float] = field(default_factory=list)  # per batch
    prefill_seconds: list[float] = field(default_factory=list)  # per batch
    decode_seconds: list[float] = field(default_factory=list)  # per decode step, all batches
    generation_seconds: list[float] = field(default_factory=list)  # per batch, image in to last token
    # lm_drop runs timed for the lm_* KPIs (per batch: this pass's, the unpatched model's), and per sample
    # the layer-averaged visual tokens of an in-LM method (None: the tokens into the LM are what it saw)
    lm_results: list = field(default_factory=list)
    lm_baselines: list = field(default_factory=list)
    lm_visual_avg: list[float] | None = None
    # the compression step timed apart on the first batch, warm-up excluded (None: compression_seconds)
    compression_timing: list[float] | None = None


@dataclass
class VLMReference:
    """The uncompressed pass of one model x dataset, shared by every method."""

    samples: list[Sample]
    errors: list[SampleRecord]
    images: list  # PIL images of ``samples``
    full: _Pass
    batch_size: int = 8
    # (decode path, batch index) -> lm_drop.GenerationResult of the unpatched model on that batch
    lm_baselines: dict = field(default_factory=dict)


def evaluate_vlm_case(engine, case, adapter: Qwen2VLAdapter) -> CaseResult:
    """Run ``case`` (a :class:`~evalsuite.matrix.CaseSpec` of a VLM model) -> :class:`CaseResult`."""
    try:  # a usage error before any work; an in-LM schedule is checked against the LM's depth
        method = resolve(case.method, case.params, adapter.insertion, adapter.num_layers)
    except ScheduleError as exc:
        from ..matrix import MatrixError

        raise MatrixError(f"{case.source}: [methods.{case.method}] {exc} "
                          f"(model {case.model.id} has {adapter.num_layers} language-model layers)") from None
    if method.point == "vision" and method.tower is not None:
        from ..patch.qwen2_vl import UnsupportedTower, check_supported

        try:
            check_supported(adapter.model.model.visual)
        except UnsupportedTower as exc:
            raise VLMUsageError(f"model {case.model.id}: {exc}") from None
    started = dict(engine.stage_seconds)
    key = (case.model.id, case.dataset.id)
    if key not in engine.vlm_references:
        samples = engine.samples(case.dataset)
        with engine._stage("uncompressed_pass"):
            engine.vlm_references[key] = _reference(adapter, samples, engine.settings.batch_size,
                                                    engine.settings.timing_warmup)
            engine.vlm_references[key].batch_size = engine.settings.batch_size
    ref = engine.vlm_references[key]
    result = CaseResult(case.id, case.model.id, case.method, dict(case.params), case.dataset.id,
                        labels=["vlm", *adapter.labels])
    result.samples.extend(ref.errors)
    with engine._stage("compressed_pass"):
        if case.method == "none":
            run, errors = ref.full, {}
            if _timing(adapter) != "eager" or adapter.insertion == "lm":  # the unpatched model's lm_* figures
                run = _Pass(**{**ref.full.__dict__, "lm_results": [], "lm_baselines": []})
                for index in range(math.ceil(len(run.encoded) / ref.batch_size)):
                    run.lm_baselines.append(_lm_baseline(adapter, ref, index, _timing(adapter)))
                run.lm_results = list(run.lm_baselines)
        else:
            run, errors = _compressed(adapter, ref, method, engine.settings)
    _check_fired(case.id, ref, run, errors)
    records = _records(adapter, ref, run, errors)
    _text_pixels_kpis(engine.samples(case.dataset), records, adapter)
    result.samples.extend(records)
    result.kpis = _kpis(records, run, ref.full)
    result.kpis.update(text_tokens.case_kpis(records))
    every = ref.errors + records  # the samples themselves, as every case counts them (no pass on missing data)
    counted = kpis.CaseData([r for r in every if r.error is None], failed=[r for r in every if r.error is not None])
    for name in ("scored_share", "samples_scored", "samples_failed"):
        result.kpis[name] = kpis.KPIS.get(name).aggregate(counted)
    result.stage_seconds = {k: v - started.get(k, 0.0) for k, v in engine.stage_seconds.items()
                            if v - started.get(k, 0.0) > 0}
    result.env = {
        **adapter.env(), "device": str(adapter.device), "dtype": str(adapter.dtype).removeprefix("torch."),
        "batch_size": str(engine.settings.batch_size), "seed": str(engine.settings.seed),
        "insertion": method.point,  # where this method ran (downscale: image, whatever the model's point)
        "decode_path": "eager",  # answers, decode_ms_per_token_p50 and the other *_p50 timings
        **({"lm_decode_path": run.lm_results[0].decode_path,  # the lm_* KPIs
            "lm_visual_tokens_per_layer": _per_layer(run.lm_results)} if run.lm_results else {}),
        **({"gpu_name": torch.cuda.get_device_name(adapter.device)} if adapter.device.type == "cuda" else {}),
    }
    if "random-weights" in adapter.labels:
        result.env["note"] = "random weights: answer WER/CER, drift and agreement are meaningless"
    engine.last_artifacts = []
    return result


# -- passes ----------------------------------------------------------------------------------
def _reference(adapter: Qwen2VLAdapter, samples: list[Sample], batch_size: int, warmup: int) -> VLMReference:
    kept, errors, images, encoded, ids = [], [], [], [], []
    for sample, image in zip(samples, thread_map(_load_or_error, samples)):
        try:
            if isinstance(image, SampleError):
                raise image
            enc = adapter.encode(image)
            prompt = adapter.prompt_ids(prompts.prompt_for(sample), enc.num_tokens)
        except (SampleError, InputError) as exc:
            errors.append(SampleRecord(sample.sample_id, sample.doc_type, error=f"{sample.sample_id}: {exc}"))
            continue
        kept.append(sample)
        images.append(image)
        encoded.append(enc)
        ids.append(prompt)
    for _ in range(warmup if encoded else 0):  # untimed: first-call costs stay out of the times every case divides by
        _reference_batch(adapter, _Pass(encoded, ids, [], [], [], [], []), slice(0, batch_size))
    run = _Pass(encoded, ids, [], [], [], [], [])
    for start in range(0, len(encoded), batch_size):
        _reference_batch(adapter, run, slice(start, start + batch_size))
    return VLMReference(kept, errors, images, run)


def _reference_batch(adapter: Qwen2VLAdapter, run: _Pass, batch: slice) -> None:
    encoded, ids = run.encoded, run.prompt_ids
    t0 = _now(adapter.device)
    visual = _timed(adapter.device, run.vision_seconds, lambda: adapter.vision(encoded[batch]))
    run.compression_seconds.append(0.0)
    inputs = adapter.prefill_inputs(ids[batch], encoded[batch], visual)
    gen = _generate(adapter, inputs, run)
    run.generation_seconds.append(_now(adapter.device) - t0)
    run.visual += visual
    run.sizes += [torch.ones(len(v), device=v.device) for v in visual]
    run.planned += [len(x) for x in ids[batch]]
    run.answers += [gen.answer_ids(b, adapter.end_ids) for b in range(len(visual))]


def _compressed(adapter: Qwen2VLAdapter, ref: VLMReference, method: VLMMethod,
                settings) -> tuple[_Pass, dict[int, str]]:
    """The method's pass over the reference's samples; sample errors by index into ``ref.samples``."""
    full = ref.full
    batch_size, seed = settings.batch_size, settings.seed
    errors: dict[int, str] = {}
    if method.point == "image":
        scale = math.sqrt(method.keep)
        encoded, ids = [], []
        for i, (sample, image) in enumerate(zip(ref.samples, ref.images)):
            try:
                enc = adapter.encode(image, scale)
                encoded.append(enc)
                ids.append(adapter.prompt_ids(prompts.prompt_for(sample), enc.num_tokens))
            except InputError as exc:
                errors[i] = f"{sample.sample_id}: {exc}"
                encoded.append(full.encoded[i])  # kept in step with the samples; the answer is dropped
                ids.append(full.prompt_ids[i])
    else:
        encoded, ids = full.encoded, full.prompt_ids
    for _ in range(settings.timing_warmup if encoded else 0):  # untimed, as the reference's: first-call costs
        _compressed_batch(adapter, ref, method, _Pass(encoded, ids, [], [], [], [], []), 0, batch_size,
                          torch.Generator().manual_seed(seed))
    run = _Pass(encoded, ids, [], [], [], [], [])
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(encoded), batch_size):
        _compressed_batch(adapter, ref, method, run, start, batch_size, generator, settings if start == 0 else None)
    return run, errors


def _compressed_batch(adapter: Qwen2VLAdapter, ref: VLMReference, method: VLMMethod, run: _Pass, start: int,
                      batch_size: int, generator: torch.Generator, timing=None) -> None:
    """One batch of the method's pass into ``run``; ``timing`` (the engine's settings): also time the
    selection apart (:func:`_selection_timing`)."""
    full, encoded, ids = ref.full, run.encoded, run.prompt_ids
    batch = slice(start, start + batch_size)
    t0 = _now(adapter.device)
    if method.point == "image":
        visual = _timed(adapter.device, run.vision_seconds, lambda: adapter.vision(encoded[batch]))
        run.compression_seconds.append(0.0)  # the resize is part of the processor's work
        slots, sizes = None, [torch.ones(len(v), device=v.device) for v in visual]
        planned = [len(x) - e.num_tokens + (e.planned_tokens or e.num_tokens)
                   for x, e in zip(ids[batch], encoded[batch])]
    elif method.point == "vision":
        visual, slots, sizes = _timed(adapter.device, run.vision_seconds,
                                      lambda: adapter.vision_with_unit_drop(encoded[batch], method, generator))
        run.compression_seconds.append(0.0)  # inside the tower: its cost is in the tower's time
        planned = [len(x) - e.num_tokens + len(v) for x, e, v in zip(ids[batch], encoded[batch], visual)]
    elif method.point == "lm":  # all visual tokens enter; the method's prefill drops inside the LM
        visual = full.visual[batch]
        run.vision_seconds.append(full.vision_seconds[start // batch_size])
        t0 -= run.vision_seconds[-1]
        run.compression_seconds.append(0.0)  # inside the prefill: its cost is in the prefill's time
        slots, sizes = None, full.sizes[batch]
        planned = [len(x) for x in ids[batch]]
    else:
        # the tower computes what the reference's did: its tokens and time are reused
        visual = full.visual[batch]
        run.vision_seconds.append(full.vision_seconds[start // batch_size])
        t0 -= run.vision_seconds[-1]
        with similarity.one_thread_on_cpu(adapter.device):
            if timing is not None:
                run.compression_timing = _selection_timing(method, visual, timing, timing.seed)
            picks = _timed(adapter.device, run.compression_seconds,
                           lambda: [method.select(v, kept_count(len(v), method.keep), generator=generator,
                                                  **method.options) for v in visual])
        slots = [index for index, _, _ in picks]
        visual = [kept for _, kept, _ in picks]
        sizes = [s for _, _, s in picks]
        planned = [len(x) - e.num_tokens + len(v) for x, e, v in zip(ids[batch], encoded[batch], visual)]
    inputs = adapter.prefill_inputs(ids[batch], encoded[batch], visual, slots)
    if method.schedule is not None:  # V2Drop, FastV: lm_drop's prefill and decode
        gen = _lm_generate(adapter, inputs, method.schedule, run)
    else:
        gen = _generate(adapter, inputs, run, method)
        if _timing(adapter) != "eager":  # the same inputs timed on the static path
            run.lm_results.append(_lm_run(adapter, inputs, lm_drop.NO_DROP, _timing(adapter)))
    if run.lm_results:
        run.lm_baselines.append(_lm_baseline(adapter, ref, start // batch_size, _timing(adapter)))
    run.generation_seconds.append(_now(adapter.device) - t0)
    run.visual += visual
    run.sizes += sizes
    run.planned += planned
    run.answers += [gen.answer_ids(b, adapter.end_ids) for b in range(len(visual))]


def _generate(adapter: Qwen2VLAdapter, inputs: PrefillInputs, run: _Pass,
              method: VLMMethod | None = None) -> Generation:
    """Greedy answers; a method acting inside the language model brings its own prefill."""
    prefill = method.prefill(method.params, adapter) if method is not None and method.prefill else eager_prefill
    gen = greedy(adapter.parts, inputs, adapter.max_new_tokens, adapter.end_ids, adapter.pad_id,
                 prefill=prefill, decoder=adapter.decoder)
    run.prefill_seconds.append(gen.prefill_seconds)
    run.decode_seconds += gen.decode_seconds
    run.lm_tokens += gen.lm_tokens
    return gen


def _timing(adapter: Qwen2VLAdapter) -> str:
    """The lm_drop decode path of the lm_* latency KPIs: the model's decoder's ``timing`` (eager or static)."""
    return getattr(adapter.decoder, "timing", "eager")


_WARM: "weakref.WeakKeyDictionary[Qwen2VLAdapter, set[str]]" = weakref.WeakKeyDictionary()  # warmed decode paths


def _lm_run(adapter: Qwen2VLAdapter, inputs: PrefillInputs, schedule: lm_drop.DropSchedule,
            decode: str) -> lm_drop.GenerationResult:
    """lm_drop's greedy generation on the batch ``inputs`` (one image per sample: its visual tokens are group 1)."""
    lm_inputs = lm_drop.LMInputs(inputs.inputs_embeds, inputs.position_ids, inputs.attention_mask.bool(),
                                 inputs.visual_mask.long())
    warm = _WARM.setdefault(adapter, set())
    with torch.inference_mode():
        if decode not in warm:  # the first run of a path pays lazy inits and allocations: untimed, else the
            warm.add(decode)    # baseline (usually run first) would look slow and every speedup too good
            lm_drop.generate(adapter.model, lm_inputs, schedule, adapter.max_new_tokens, decode=decode,
                             eos_token_id=sorted(adapter.end_ids), pad_token_id=adapter.pad_id)
        return lm_drop.generate(adapter.model, lm_inputs, schedule, adapter.max_new_tokens, decode=decode,
                                eos_token_id=sorted(adapter.end_ids), pad_token_id=adapter.pad_id)


def _lm_generate(adapter: Qwen2VLAdapter, inputs: PrefillInputs, schedule: lm_drop.DropSchedule,
                 run: _Pass) -> Generation:
    """An in-LM method's batch: answers (and the eager timings) from lm_drop's eager path; the lm_* timings
    from the model's timing path (the eager run itself, or a second run on the static path)."""
    result = _lm_run(adapter, inputs, schedule, "eager")
    timed = result if _timing(adapter) == "eager" else _lm_run(adapter, inputs, schedule, _timing(adapter))
    run.lm_results.append(timed)
    steps = result.tokens.shape[1] - 1  # the first token comes from the prefill
    lm_tokens = inputs.attention_mask.sum(dim=1).tolist()
    gen = Generation(result.tokens, _lengths(result.tokens, adapter.end_ids), lm_tokens, result.prefill_s,
                     [result.decode_s_per_token] * steps)
    run.prefill_seconds.append(gen.prefill_seconds)
    run.decode_seconds += gen.decode_seconds
    run.lm_tokens += gen.lm_tokens
    layers = torch.tensor(result.visual_tokens_by_sample, dtype=torch.float64)  # [num_layers, B]
    planned = _planned_last_layer(inputs.visual_mask.sum(dim=1).tolist(), schedule)
    if layers[-1].long().tolist() != planned:  # the input length is unchanged: the last layer tells whether it fired
        raise CompressionNotFired(f"{schedule.method}: the last language-model layer saw {layers[-1].long().tolist()} "
                                  f"visual tokens per sample, the schedule planned {planned}")
    run.lm_visual_avg = (run.lm_visual_avg or []) + layers.mean(dim=0).tolist()
    return gen


def _planned_last_layer(visual: list[int], schedule: lm_drop.DropSchedule) -> list[int]:
    """Visual tokens per sample (one image each) the schedule leaves for the last layer: each drop keeps
    ``floor(n * ratio)`` of the ``n`` still present (lm_drop's rule)."""
    out = []
    for n in visual:
        for ratio in schedule.keep:
            n = math.floor(n * ratio + 1e-9)
        out.append(n)
    return out


def _lm_baseline(adapter: Qwen2VLAdapter, ref: VLMReference, index: int, decode: str) -> lm_drop.GenerationResult:
    """The unpatched model's lm_drop run on the reference's batch ``index`` (once per decode path)."""
    key = (decode, index)
    if key not in ref.lm_baselines:
        full, batch = ref.full, slice(index * ref.batch_size, (index + 1) * ref.batch_size)
        inputs = adapter.prefill_inputs(full.prompt_ids[batch], full.encoded[batch], full.visual[batch])
        ref.lm_baselines[key] = _lm_run(adapter, inputs, lm_drop.NO_DROP, decode)
    return ref.lm_baselines[key]


def _per_layer(results: list) -> str:
    """Visual tokens each LM layer saw, mean per sample over the case's batches: ``"55,55,55,14,..."``."""
    by_layer = torch.cat([torch.tensor(r.visual_tokens_by_sample, dtype=torch.float64) for r in results], dim=1)
    return ",".join(f"{v:.4g}" for v in by_layer.mean(dim=1).tolist())


def _lm_kpis(run: _Pass) -> dict[str, float]:
    """lm_drop's KPIs of each batch against the unpatched model's run of that batch, median over batches;
    the layer-averaged visual tokens as a mean per sample."""
    if not run.lm_results:
        return {}
    per_batch = [lm_drop.kpis(result, base) for result, base in zip(run.lm_results, run.lm_baselines)]
    out = {key: float(np.median([k[key] for k in per_batch])) for key in per_batch[0]
           if key != "lm_visual_tokens_per_layer"}  # a list per layer: in the case's env, not a KPI value
    per_sample = [v for r in run.lm_results for v in torch.tensor(r.visual_tokens_by_sample, dtype=torch.float64)
                  .mean(dim=0).tolist()]
    out["lm_visual_tokens_layer_avg"] = float(np.mean(per_sample))
    return out


def _check_fired(case_id: str, ref: VLMReference, run: _Pass, errors: dict[int, str]) -> None:
    for i, (seen, planned) in enumerate(zip(run.lm_tokens, run.planned)):
        if i not in errors and seen != planned:
            raise CompressionNotFired(f"{case_id}: sample {ref.samples[i].sample_id}: the language model saw "
                                      f"{seen} tokens, the method planned {planned}")


# -- scoring ---------------------------------------------------------------------------------
def _records(adapter: Qwen2VLAdapter, ref: VLMReference, run: _Pass, errors: dict[int, str]) -> list[SampleRecord]:
    records = []
    full = ref.full
    for i, sample in enumerate(ref.samples):
        if i in errors:
            records.append(SampleRecord(sample.sample_id, sample.doc_type, error=errors[i]))
            continue
        answer = adapter.decode_text(run.answers[i])
        uncompressed = adapter.decode_text(full.answers[i])
        # what the compression did holds whatever the answer: the token counts are kept on a failed sample
        after = run.lm_visual_avg[i] if run.lm_visual_avg is not None else len(run.visual[i])  # in-LM: layer-averaged
        tokens = {"tokens_before": float(full.encoded[i].num_tokens), "tokens_after": float(after),
                  "lm_tokens": float(run.lm_tokens[i])}
        if not answer.strip():
            records.append(SampleRecord(sample.sample_id, sample.doc_type, tokens, info={"answer": answer},
                                        error=f"{sample.sample_id}: empty answer"))
            continue
        kpis = {
            **tokens,
            "answer_agreement": token_agreement(run.answers[i], full.answers[i]),
            "answer_exact_match": float(run.answers[i] == full.answers[i]),
            "feature_cosine": float(similarity.pooled_cosine(_pool(run.visual[i], run.sizes[i])[None],
                                                             _pool(full.visual[i], full.sizes[i])[None])[0]),
        }
        truth = prompts.ground_truth(sample)
        info = {"answer": answer, "answer_uncompressed": uncompressed}
        if truth is not None:
            kpis["answer_wer"] = word_error_rate(answer, truth)
            kpis["answer_cer"] = char_error_rate(answer, truth)
            kpis["answer_wer_uncompressed"] = word_error_rate(uncompressed, truth)
            kpis["answer_cer_uncompressed"] = char_error_rate(uncompressed, truth)
            info["truth_words"] = len(truth.split())
            info["truth_chars"] = len(truth)
        if sample.fields:
            hits = field_hits(answer, sample.fields)
            if hits:
                kpis["answer_sroie_fields_found"] = sum(hits.values()) / len(hits)
                info["field_hits"] = hits
        records.append(SampleRecord(sample.sample_id, sample.doc_type, kpis, info))
    return records


def _kpis(records: list[SampleRecord], run: _Pass, full: _Pass) -> dict[str, float]:
    ok = [r for r in records if r.error is None]

    def mean(key, among=ok):
        values = [r.kpis[key] for r in among if key in r.kpis]
        return float(np.mean(values)) if values else float("nan")

    def weighted(key, weight):  # corpus-level: errors over all ground-truth words (characters)
        pairs = [(r.kpis[key], r.info.get(weight, 0)) for r in ok if key in r.kpis]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    ms = lambda xs, q: similarity.percentile([x * 1e3 for x in xs], q)  # noqa: E731
    compression = run.compression_timing if run.compression_timing is not None else run.compression_seconds
    before, after = mean("tokens_before", records), mean("tokens_after", records)  # empty answers included
    kpis = {
        "tokens_before": before,
        "tokens_after": after,
        "tokens_reduction_pct": 100.0 * (1.0 - after / before) if before else float("nan"),
        "lm_tokens": mean("lm_tokens", records),
        "feature_cosine_mean": mean("feature_cosine"),
        "feature_cosine_p5": similarity.percentile([r.kpis["feature_cosine"] for r in ok], 5),
        "answer_agreement": mean("answer_agreement"),
        "answer_exact_match": mean("answer_exact_match"),
        "compression_latency_ms_p50": ms(compression, 50),
        "compression_latency_ms_p95": ms(compression, 95),
        "vision_ms_p50": ms(run.vision_seconds, 50),
        "prefill_ms_p50": ms(run.prefill_seconds, 50),
        "ttft_ms_p50": ms([v + c + p for v, c, p in zip(run.vision_seconds, run.compression_seconds,
                                                         run.prefill_seconds)], 50),
        "decode_ms_per_token_p50": ms(run.decode_seconds, 50),
        "generation_ms_p50": ms(run.generation_seconds, 50),
        "prefill_speedup": (similarity.percentile(full.prefill_seconds, 50)
                            / similarity.percentile(run.prefill_seconds, 50)),
    }
    kpis.update(_lm_kpis(run))
    for name in ("wer", "cer"):
        weight = "truth_words" if name == "wer" else "truth_chars"
        mine, base = weighted(f"answer_{name}", weight), weighted(f"answer_{name}_uncompressed", weight)
        if mine is not None:
            kpis[f"answer_{name}"] = mine
            kpis[f"answer_{name}_uncompressed"] = base
            kpis[f"answer_{name}_drift"] = mine - base
    if not math.isnan(mean("answer_sroie_fields_found")):
        kpis["answer_sroie_fields_found"] = mean("answer_sroie_fields_found")
    return {k: v for k, v in kpis.items() if not (isinstance(v, float) and math.isnan(v)) or k.startswith("tokens")}


def token_agreement(answer: list[int], reference: list[int]) -> float:
    """Normalised edit similarity of two token sequences: ``1 - levenshtein / max(len)`` (1.0 when both
    are empty). 1.0 is the same answer token for token; 0.0 shares nothing in place.

    >>> token_agreement([1, 2, 3, 4], [1, 2, 3, 4]), token_agreement([1, 2, 3, 4], [1, 2, 4]), token_agreement([], [5])
    (1.0, 0.75, 0.0)
    """
    if not answer and not reference:
        return 1.0
    previous = list(range(len(reference) + 1))
    for i, a in enumerate(answer, 1):
        current = [i]
        for j, b in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return 1.0 - previous[-1] / max(len(answer), len(reference))


def _pool(tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[N, D], [N] -> [D] size-weighted mean (a merged token counts for the tokens it stands for)."""
    w = sizes.to(tokens.device, torch.float32)[:, None]
    return ((tokens.float() * w).sum(0) / w.sum()).cpu()


def _selection_timing(method: VLMMethod, visual: list[torch.Tensor], settings, seed: int) -> list[float]:
    """The selection of one batch timed as the encoder cases time theirs (evalsuite.engine): after
    ``timing_warmup`` untimed runs, ``timing_repeats`` timed ones. The pass's own single run per batch
    would put first-call costs (kernel builds, autotuning, allocator growth) into the first case of a
    method and leave its p95 one value. Its own generator, so random keeps the seed's picks in the pass."""
    generator = torch.Generator().manual_seed(seed)

    def select(_):
        return [method.select(v, kept_count(len(v), method.keep), generator=generator, **method.options)
                for v in visual]

    return [seconds for seconds, _ in timed_calls(select, visual[0], settings.timing_warmup,
                                                  settings.timing_repeats)]


def _timed(device: torch.device, sink: list[float], fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    sink.append(time.perf_counter() - start)
    return out


def _text_pixels_kpis(samples: list[Sample], records: list[SampleRecord], adapter: Qwen2VLAdapter) -> None:
    """On text_pixels pages: the VLM's own read-back (``vlm_cer`` = its answer's CER) against the visual
    tokens into its language model, counted with its own tokenizer (evalsuite.metrics.text_tokens)."""
    by_id = {sample.sample_id: sample for sample in samples}
    aligned = [(by_id[r.sample_id], r) for r in records if r.sample_id in by_id]
    for _, record in aligned:
        if "answer_cer" in record.kpis:
            record.kpis["vlm_cer"] = record.kpis["answer_cer"]
        if "tokens_after" in record.kpis:
            record.kpis["vision_tokens"] = record.kpis["tokens_after"]
    text_tokens.add_sample_kpis([s for s, _ in aligned], [r for _, r in aligned],
                                int(adapter.model.config.get_text_config().hidden_size), adapter.dtype.itemsize,
                                tokenizer=lambda text: adapter.tokenizer(text, add_special_tokens=False)["input_ids"],
                                tokenizer_name="the VLM's own")


def _now(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def _load_or_error(sample: Sample):
    try:
        return sample.load()
    except SampleError as exc:
        return exc
