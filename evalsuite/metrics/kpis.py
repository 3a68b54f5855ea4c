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
# In-LM visual-token dropping (evalsuite.vlm.lm_drop): each against the unpatched model's run on the same inputs.
_kpi("lm_visual_tokens_per_layer", None, "tokens", "visual tokens each language-model layer saw, per layer (mean per sample)")
_kpi("lm_visual_tokens_layer_avg", None, "tokens", "mean over LM layers of the visual tokens each saw (576 x 2 + 144 x 30 over 32 layers = 171)")
_kpi("lm_kv_cache_bytes", False, "B", "K/V cache bytes stored after prefill (kept tokens per layer, batch padding included)")
_kpi("lm_kv_cache_reduction_pct", True, "%", "100 * (1 - lm_kv_cache_bytes / the unpatched model's)")
_kpi("lm_prefill_ms", False, "ms", "language-model prefill (time to first token after the vision tower), CUDA-synchronised")
_kpi("lm_prefill_speedup", True, "x", "unpatched lm_prefill_ms / this one")
_kpi("lm_decode_ms_per_token", False, "ms", "greedy decode time per generated token (decode path recorded beside it)")
_kpi("lm_decode_speedup", True, "x", "unpatched lm_decode_ms_per_token / this one, same decode path")
_kpi("lm_generation_ms", False, "ms", "end to end: embedding, vision tower, prefill and decode of max_new_tokens")
_kpi("lm_generation_speedup", True, "x", "unpatched lm_generation_ms / this one")
_kpi("text_tokens", None, "tokens", "text_pixels pages: tokens of the drawn text under the text tokenizer (Qwen2 BPE unless the case brings its own), mean per page")
_kpi("vision_tokens", None, "tokens", "text_pixels pages: vision tokens the page cost (encoder tokens after compression, a VLM's or a provider's count where recorded), mean per page")
_kpi("optical_compression_ratio", True, "x", "text_pixels pages: text_tokens / vision_tokens (ratio of totals): tokens against tokens, as DeepSeek-OCR counts")
_kpi("char_accuracy", True, "", "text_pixels pages: 1 - CER of the PP-OCR read-back of what the compressed tokens kept, weighted by reference characters")
_kpi("char_accuracy_vlm", True, "", "text_pixels pages: 1 - CER of the VLM's read-back (VLM cases), weighted by reference characters")
_kpi("bytes_ratio_text_over_vision", None, "x", "BYTES, not tokens: UTF-8 bytes of the text over bytes of the vision-token activations (tokens x dim x dtype bytes), the way the 40-80x claims count")
_kpi("retrieval_recall_at_1", True, "", "share of images whose compressed embedding retrieves their own uncompressed one first, among the dataset's")
_kpi("retrieval_recall_at_5", True, "", "the same within the 5 nearest (datasets of more than 5 images)")
