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
for _model, _label in (("qwen2_vl", "Qwen2-VL (smart_resize, 28-px cells + 2)"), ("gpt4o", "GPT-4o (85 + 170 per 512-px tile)")):
    _kpi(f"billed_tokens_{_model}_before", None, "tokens", f"billed image tokens of the original under {_label}, mean per image")
    _kpi(f"billed_tokens_{_model}_after", None, "tokens", f"billed image tokens of the image sent under {_label}, mean per image")
    _kpi(f"billed_tokens_{_model}_reduction_pct", True, "%", f"100 * (1 - after / before) of the billed image tokens under {_label}")
_kpi("api_total_tokens_before", None, "tokens", "usage.total_tokens of the hosted VLM for the original image, mean per sample")
_kpi("api_total_tokens_after", None, "tokens", "usage.total_tokens of the hosted VLM for the image sent, mean per sample")
_kpi("api_tokens_reduction_pct", True, "%", "100 * (1 - api_total_tokens_after / api_total_tokens_before): the measured bill")
_kpi("api_prompt_tokens_before", None, "tokens", "usage.prompt_tokens for the original image, mean per sample")
_kpi("api_prompt_tokens_after", None, "tokens", "usage.prompt_tokens for the image sent, mean per sample")
_kpi("api_latency_s_p50", False, "s", "latency of the hosted VLM's call for the image sent, median")
_kpi("api_estimate_gap_pct", None, "%", "measured prompt-token saving vs the cost model's image-token saving, in % of the estimate")
_kpi("answer_wer", False, "", "word error rate of the hosted VLM's answer (image sent) against the ground-truth text, mean")
_kpi("answer_cer", False, "", "character error rate of the hosted VLM's answer (image sent) against the ground-truth text, mean")
_kpi("answer_wer_original", None, "", "word error rate of the hosted VLM's answer for the original image, mean")
_kpi("answer_fields_found", True, "", "fraction of SROIE key fields found in the hosted VLM's answer (image sent)")
