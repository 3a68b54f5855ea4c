"""Every KPI the harness reports, with its direction and unit.

Thresholds read the direction from here: a limit on a higher-is-better KPI is
a floor, on a lower-is-better KPI a ceiling. Adding a KPI is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class KPI:
    name: str
    higher_is_better: bool | None  # None: informational, never thresholded
    unit: str = ""
    description: str = ""

    @property
    def op(self) -> str:
        return ">=" if self.higher_is_better else "<="


KPIS: Registry[KPI] = Registry("KPI")


def _kpi(name: str, higher: bool | None, unit: str, description: str) -> None:
    KPIS.register(name, KPI(name, higher, unit, description))


_kpi("tokens_before", None, "tokens", "patch tokens out of the uncompressed encoder (mean per image)")
_kpi("tokens_after", None, "tokens", "patch tokens out of the compressed encoder (mean per image)")
_kpi("tokens_reduction_pct", True, "%", "100 * (1 - tokens_after / tokens_before)")
_kpi("feature_cosine_mean", True, "", "cosine of pooled embedding, compressed vs uncompressed, mean over images")
_kpi("feature_cosine_p5", True, "", "5th percentile over images of the same cosine")
_kpi("emd", False, "", "earth mover's distance (1 - cosine cost, size-weighted) between output token sets, mean")
_kpi("compression_latency_ms_p50", False, "ms", "time of the compression step itself per forward, median")
_kpi("compression_latency_ms_p95", False, "ms", "time of the compression step itself per forward, 95th percentile")
_kpi("encoder_ms_p50", False, "ms", "whole encoder forward, median")
_kpi("encoder_ms_p95", False, "ms", "whole encoder forward, 95th percentile")
_kpi("throughput_speedup", True, "x", "encoder images/s against the same model's `none` case")
_kpi("ideal_speedup", None, "x", "speedup implied by the method's token schedule (FLOP model)")
_kpi("ocr_wer", False, "", "word error rate of OCR(reconstruction) against the reference, corpus-level (weighted by reference words)")
_kpi("ocr_cer", False, "", "character error rate of OCR(reconstruction) against the reference, corpus-level (weighted by characters)")
_kpi("ocr_wer_original", None, "", "word error rate of OCR(original) against the reference, corpus-level")
_kpi("ocr_cer_original", None, "", "character error rate of OCR(original) against the reference, corpus-level")
_kpi("ocr_wer_drift", False, "", "ocr_wer - ocr_wer_original (corpus-level, over samples with text)")
_kpi("ocr_cer_drift", False, "", "ocr_cer - ocr_cer_original (corpus-level, over samples with text)")
_kpi("sroie_fields_found", True, "", "fraction of SROIE key fields (company, date, address, total) found in the OCR text")
# VLM cases (evalsuite.vlm): tokens_* and compression_latency_* above count the visual tokens into the
# language model and the pre-LLM selection step; the answers below gate (not from random weights).
_kpi("lm_tokens", None, "tokens", "VLM: tokens into the language model per sample (text + visual), mean")
_kpi("answer_wer", False, "", "VLM: word error rate of the answer against the ground truth, corpus-level")
_kpi("answer_cer", False, "", "VLM: character error rate of the answer against the ground truth, corpus-level")
_kpi("answer_wer_uncompressed", None, "", "VLM: answer_wer of the uncompressed model's answers")
_kpi("answer_cer_uncompressed", None, "", "VLM: answer_cer of the uncompressed model's answers")
_kpi("answer_wer_drift", False, "", "VLM: answer_wer - answer_wer_uncompressed")
_kpi("answer_cer_drift", False, "", "VLM: answer_cer - answer_cer_uncompressed")
_kpi("answer_agreement", True, "", "VLM: 1 - token edit distance / longer length, answer vs uncompressed answer, mean")
_kpi("answer_exact_match", True, "", "VLM: fraction of answers token-for-token equal to the uncompressed answer")
_kpi("answer_sroie_fields_found", True, "", "VLM: fraction of SROIE key fields found in the answer")
_kpi("vision_ms_p50", False, "ms", "VLM: vision tower (PatchMerger included) per batch, median")
_kpi("prefill_ms_p50", False, "ms", "VLM: language-model prefill per batch, median")
_kpi("ttft_ms_p50", False, "ms", "VLM: time to first token per batch (tower + compression + prefill), median")
_kpi("decode_ms_per_token_p50", False, "ms", "VLM: one eager decode step of the batch, median")
_kpi("generation_ms_p50", False, "ms", "VLM: image in to last token per batch, median")
_kpi("prefill_speedup", None, "x", "VLM: uncompressed prefill time / this case's, medians")
