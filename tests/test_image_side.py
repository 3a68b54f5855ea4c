"""Image-side methods: the sent image, its guard against a dearer bill, and the billed KPIs of a case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evalsuite import image_side
from evalsuite.billing import image_tokens
from evalsuite.data.sample import Sample
from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
from evalsuite.methods import build, spec_of
from evalsuite.plan import TokenPlan


def page_with_blocks(size=(560, 840), blocks=((56, 84, 140, 112), (400, 700, 480, 760))) -> Image.Image:
    page = Image.new("RGB", size, "white")
    for i, box in enumerate(blocks):
        page.paste((40 * i, 0, 200 - 40 * i), box)
    return page


def test_crop_slim_pack_keep_every_inked_pixel_and_shrink_the_page():
    page = page_with_blocks()
    ink = int((np.asarray(page.convert("L")) < 200).sum())
    for fn in (image_side.crop, image_side.slim, image_side.pack):
        out = fn(page)
        assert out.width * out.height < page.width * page.height, fn.__name__
        if fn is not image_side.pack:  # pack resizes cells only when they differ in size: not here
            assert int((np.asarray(out.convert("L")) < 200).sum()) == ink, fn.__name__
    assert image_side.crop(page).size == (448, 700)  # cells 2..17 by 3..27 of 28 px
    # slim: only the cell rows/columns the two blocks touch survive
    assert image_side.slim(page).size == (28 * (3 + 4), 28 * (1 + 3))


def test_pack_keeps_reading_order():
    page = Image.new("RGB", (112, 112), "white")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for (x, y), colour in zip([(84, 0), (28, 56), (0, 84)], colours):  # row-major order: red, green, blue
        page.paste(colour, (x, y, x + 28, y + 28))
    packed = np.asarray(image_side.pack(page))
    assert packed.shape == (28, 112, 3)
    assert [tuple(packed[14, 14 + 28 * i]) for i in range(3)] == colours


def test_a_token_plan_drives_the_crop():
    page = Image.new("RGB", (400, 400), "white")  # no ink at all: only the plan says what to keep
    keep = np.full(16, -1, dtype=np.int32)
    keep[[5, 6, 9, 10]] = np.arange(4)  # the middle 2 x 2 of a 4 x 4 grid
    plan = TokenPlan((4, 4), keep, 4)
    assert image_side.crop(page, plan).size == (200, 200)
    assert image_side.slim(page, plan.keep_mask).size == (200, 200)
    assert image_side.crop(page).size == page.size  # nothing inked, nothing kept: the page whole


def test_guard_sends_the_original_when_the_transform_costs_more():
    page = Image.new("RGB", (621, 1803), "white")
    for y in range(0, 1803, 20):  # lines of "text" over all but a 49-px right margin
        page.paste((0, 0, 0), (0, y, 572, y + 3))
    sent = image_side.send("crop", page, cell=1)
    assert image_tokens("qwen2_vl", 572, 1803) > image_tokens("qwen2_vl", 621, 1803)
    assert sent.image is page and sent.tokens_sent == sent.tokens_original
    assert "crop: 1282 billed tokens under qwen2_vl" in sent.sent_original_reason
    # under GPT-4o's tiles the same crop is no dearer: it is sent
    assert image_side.send("crop", page, cell=1, target="gpt4o").image.size == (572, 1803)


def test_case_images_per_kind_of_method():
    page = page_with_blocks()
    samples = [Sample("s/1", "s", "document", lambda: page)]
    sizes = [page.size]
    assert image_side.case_images(build("v2drop", {"keep": 0.5}), samples, sizes) == (sizes, None)
    small, none = image_side.case_images(build("downscale", {"keep": 0.25}), samples, sizes)
    assert small == [(280, 420)] and none is None
    crop_sizes, sent = image_side.case_images(build("crop"), samples, sizes)
    assert crop_sizes == [(448, 700)] and sent[0].image.size == (448, 700)


def test_image_side_methods_are_registered_and_check_their_parameters():
    for name in ("crop", "slim", "pack"):
        spec = spec_of(name, {})
        assert spec.insertion == {"image"} and spec.id_part == name
        assert spec.schedule(256, 0, 12) == [256] * 24  # the encoder keeps every token
        assert build(name).send is not None
    assert spec_of("slim", {"target": "gpt4o", "cell": 32}).id_part == "slim_c32_gpt4o"
    with pytest.raises(ValueError, match="not a cost model"):
        spec_of("crop", {"target": "qwen"})
    with pytest.raises(ValueError, match="unknown key"):
        spec_of("pack", {"keep": 0.5})


@pytest.mark.slow
def test_a_case_reports_the_bill_beside_the_encoder_tokens(monkeypatch, tmp_path):
    """Dropping tokens inside the encoder leaves the bill as it was; sending a smaller image lowers it."""
    from evalsuite.data.datasets import DATASETS
    from evalsuite.engine import Engine, EngineSettings

    samples = [Sample(f"t/{i}", "t", "document", lambda i=i: page_with_blocks((560 + 56 * i, 840))) for i in range(1)]
    monkeypatch.setitem(DATASETS._entries, "pages", lambda root, **kw: samples)
    engine = Engine(EngineSettings(ocr_engine=None, timing_repeats=1, timing_warmup=0,  # one model load
                                   export_dir=tmp_path))
    for method, params, saves in [("v2drop", {"keep": 0.5}, False), ("crop", {}, True)]:
        case = CaseSpec(ModelSpec("dinov2_s14", "dinov2_s14", 112, "cpu", "float32"), method, params,
                        build(method, params).id_part, DatasetSpec("pages", "pages"), {}, "inline")
        result = engine.evaluate(case)
        kpis = result.kpis
        for model in ("qwen2_vl", "gpt4o"):
            before = np.mean([image_tokens(model, *s.load().size) for s in samples])
            assert kpis[f"billed_tokens_{model}_before"] == before, method
        assert (kpis["billed_tokens_qwen2_vl_reduction_pct"] > 0) == saves, method
        assert (kpis["tokens_reduction_pct"] > 0) == (method != "crop"), method
        assert result.samples[0].info["sent_size"] == ([448, 700] if method == "crop" else [560, 840])
        exported = np.load(tmp_path / f"{case.id}.npz")
        assert exported["sent_sizes"].tolist() == [result.samples[0].info["sent_size"]]
        assert ("sent_png_0" in exported.files) == (method == "crop")


def test_the_export_holds_the_image_sent(tmp_path):
    import io

    from evalsuite.export import export_case
    from evalsuite.models.base import EncoderOutput

    page = page_with_blocks()
    samples = [Sample("s/1", "s", "document", lambda: page)]
    sizes, sent = image_side.case_images(build("crop"), samples, [page.size])
    out = EncoderOutput(None, None, None, [TokenPlan.identity((8, 8))], 1)
    path = export_case(tmp_path / "c.npz", samples, [out], 112, sent_sizes=sizes, sent=[s.image for s in sent])
    z = np.load(path)
    assert z["sent_sizes"].tolist() == [[448, 700]]
    assert Image.open(io.BytesIO(z["sent_png_0"].tobytes())).size == (448, 700)
