"""Hosted-API cases against STAND-IN servers (tests/stand_in_openai_server.py) on 127.0.0.1.

The real ``openai`` and ``gigachat`` clients talk HTTP to local stand-ins that count image
tokens by Qwen2-VL's formula; nothing here contacts any other address.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
from PIL import Image, ImageDraw

from evalsuite.api.case import evaluate_api_case, gigachat, openai_compat, run_budget
from evalsuite.api.client import ApiClient
from evalsuite.api.redact import ApiError, BudgetExceeded
from evalsuite.billing import image_tokens
from evalsuite.data.sample import Sample
from evalsuite.matrix import CaseSpec, DatasetSpec, ModelSpec
from evalsuite.settings import EngineSettings

from .stand_in_openai_server import StandInGigaChatServer, StandInOpenAIServer

KEY = "sk-stand-in-7f3a9c2e51"
TEXT = "TOTAL 12.50"


def page(width: int = 600, height: int = 900) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((40, 40), TEXT, fill="black")
    ImageDraw.Draw(image).text((width - 200, 300), "THANK YOU", fill="black")  # each page crops differently
    return image


def samples(n: int = 3) -> list[Sample]:
    return [Sample(f"t/{i}", "t", "receipt", lambda i=i: page(600 + 28 * i), reference_text=TEXT + "\nTHANK YOU",
                   fields={"total": "12.50"}) for i in range(n)]


def case(method: str = "crop", params: dict | None = None, factory: str = "openai_compat") -> CaseSpec:
    return CaseSpec(ModelSpec("stand_in_vlm", factory, 224, "cpu", "float32"), method, params or {}, method,
                    DatasetSpec("t", "t"), {}, "inline")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("STAND_IN_KEY", KEY)
    with StandInOpenAIServer(KEY) as s:
        yield s


def api_model(server, tmp_path, **kw):
    options = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, "cache_dir": str(tmp_path / "cache"), **kw}
    return openai_compat("stand_in_vlm", base_url=server.base_url, model="stand-in-qwen2-vl",
                         api_key_env="STAND_IN_KEY", **options)


def run(server, tmp_path, method="crop", n=3, **kw):
    return evaluate_api_case(case(method), samples(n), EngineSettings(ocr_engine=None),
                             model=api_model(server, tmp_path, **kw))


def test_stand_in_usage_is_recorded_and_a_rerun_costs_no_request(server, tmp_path):
    result = run(server, tmp_path)
    assert result.error is None and all(r.error is None for r in result.samples)
    assert server.chat_requests() == 6  # original and cropped image of 3 samples
    row = result.samples[0]
    width, height = row.info["sent_size"]
    assert width < 600 and row.kpis["api_prompt_tokens_sent"] == len(
        "Transcribe all text in this receipt, line by line.".split()) + image_tokens("qwen2_vl", width, height)
    assert row.info["answer_sent"] == f"image {width}x{height}"
    assert result.kpis["api_tokens_reduction_pct"] > 0
    assert result.kpis["billed_tokens_qwen2_vl_reduction_pct"] > 0
    assert result.kpis["api_estimate_gap_pct"] == 0  # the stand-in bills by the same formula
    assert 0 <= result.kpis["answer_wer"] and "answer_fields_found" in result.kpis

    again = run(server, tmp_path)
    assert server.chat_requests() == 6  # every reply came from the cache
    assert again.kpis == result.kpis and all(r.info["cached"] for r in again.samples)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_stand_in_sees_at_most_concurrency_calls_at_once(server, tmp_path, concurrency):
    server.delay_s = 0.3
    result = run(server, tmp_path, n=4, concurrency=concurrency)
    assert result.error is None and server.chat_requests() == 8
    assert min(2, concurrency) <= server.max_in_flight <= concurrency  # bounded, and parallel when allowed


def test_stand_in_disagreement_between_usage_and_estimate_is_shown(server, tmp_path):
    result = run(server, tmp_path, cost_model="patches32")  # the stand-in bills like Qwen, not in 32-px patches
    assert "usage_vs_estimate" in result.env
    assert any("usage_vs_estimate" in r.info for r in result.samples)


def test_stand_in_retries_429_and_5xx_with_backoff(server, tmp_path):
    server.fail_next = [429, 503]
    waits = []
    client = ApiClient(api_model(server, tmp_path).backend(), retries=3, backoff_s=0.5, sleep=waits.append)
    reply = client.ask("read", b"" + _png())
    assert reply.answer == "image 64x64" and server.chat_requests() == 3 and waits == [0.5, 1.0]


def test_stand_in_timeout_is_retried_then_fails_the_call_with_the_reason(server, tmp_path):
    server.delay_s = 1.0
    client = ApiClient(api_model(server, tmp_path).backend(), retries=1, backoff_s=0.0, timeout_s=0.2)
    with pytest.raises(ApiError, match="Timeout"):
        client.ask("read", _png())
    assert server.chat_requests() == 2


def test_stand_in_budget_stops_the_run_and_keeps_the_rows_scored(server, tmp_path):
    result = run(server, tmp_path, max_requests=4, concurrency=2)  # two samples' worth, one sample at a time
    assert "API budget spent: 4 of 4 requests" in result.error
    assert [r.error is None for r in result.samples] == [True, True, False]
    assert server.chat_requests() == 4
    # the budget is the run's: a later case of the same endpoint sends nothing
    later = run(server, tmp_path, method="slim", max_requests=4, concurrency=2)
    assert "API budget spent" in later.error and server.chat_requests() == 4
    with pytest.raises(BudgetExceeded):
        run_budget(api_model(server, tmp_path, max_requests=4)).charge_request()


def test_stand_in_401_fails_the_case_keeps_earlier_rows_and_never_shows_the_key(server, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # the HTTP libraries' debug logs too
    server.fail_from = (2, 401)  # the key is refused from the second sample on; the reply echoes it
    result = run(server, tmp_path, concurrency=2)  # one sample at a time: the second is the first refused
    assert result.samples[0].error is None
    assert "HTTP 401" in result.error and "stopped at sample t/1" in result.error
    assert len(result.samples) == 2  # the case stopped: no row for t/2
    out = capsys.readouterr()
    for text in (result.to_json(), out.out, out.err, caplog.text, "\n".join(r.getMessage() for r in caplog.records)):
        assert KEY not in text
    assert "***" in result.error  # the echoed key was there, redacted


def test_a_log_record_of_any_logger_is_redacted(server, tmp_path, caplog):
    api_model(server, tmp_path).credential()  # reading the credential registers it for redaction
    ApiClient(api_model(server, tmp_path).backend())  # and installs the redaction of log records
    caplog.set_level(logging.DEBUG)
    logging.getLogger("openai._base_client.some_child").debug("sending with key %s", KEY)
    assert KEY not in caplog.text and "sending with key ***" in caplog.text


def test_stand_in_bad_replies_fail_only_their_sample(server, tmp_path):
    server.refuse_over = 600  # samples 1 and 2 are wider than 600 px: their originals are refused
    result = run(server, tmp_path, method="none")
    assert result.samples[0].error is None
    assert all("HTTP 400" in r.error and "image too large" in r.error for r in result.samples[1:])

    server.refuse_over, server.malformed = None, True
    result = run(server, tmp_path, method="none", n=1, cache_dir=str(tmp_path / "other"))
    assert "malformed response" in result.samples[0].error and result.error is None


def test_unreachable_endpoint_fails_each_sample_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("STAND_IN_KEY", KEY)
    with StandInOpenAIServer(KEY) as closed:
        url = closed.base_url
    model = openai_compat("stand_in_vlm", base_url=url, model="m", api_key_env="STAND_IN_KEY", retries=0,
                          cache_dir=str(tmp_path))
    result = evaluate_api_case(case("none"), samples(2), EngineSettings(ocr_engine=None), model=model)
    assert result.error is None
    assert all(url in r.error and "Connection" in r.error for r in result.samples)


def test_missing_credential_fails_the_case_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    model = openai_compat("stand_in_vlm", base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY")
    result = evaluate_api_case(case("none"), samples(1), EngineSettings(ocr_engine=None), model=model)
    assert "NO_SUCH_KEY is not set" in result.error


def test_stand_in_gigachat_uploads_attaches_and_refreshes_an_expired_token(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = base64.b64encode(b"client-id:client-secret-51e2").decode()
    monkeypatch.setenv("STAND_IN_GIGACHAT", credentials)
    with StandInGigaChatServer(credentials) as server:
        model = gigachat("stand_in_giga", base_url=server.base_url, auth_url=server.auth_url, model="GigaChat-Pro",
                         credentials_env="STAND_IN_GIGACHAT", cache_dir=str(tmp_path), concurrency=1)
        result = evaluate_api_case(case("slim"), samples(1), EngineSettings(ocr_engine=None), model=model)
        assert result.error is None and result.samples[0].error is None
        assert server.requests[:3] == ["/api/v2/oauth", "/v1/files", "/v1/chat/completions"]
        width, height = result.samples[0].info["sent_size"]
        assert result.samples[0].info["answer_sent"] == f"image {width}x{height}"
        server.expire_tokens()
        result = evaluate_api_case(case("crop"), samples(1), EngineSettings(ocr_engine=None), model=model)
        assert result.error is None and result.samples[0].error is None
        assert server.tokens_issued == 2  # a 401 on the expired token fetched a new one
        assert all(credentials not in text for text in (result.to_json(), caplog.text))


def test_engine_dispatches_api_models_to_the_api_case(server, tmp_path, monkeypatch):
    from evalsuite.data.datasets import DATASETS
    from evalsuite.engine import Engine

    monkeypatch.setitem(DATASETS._entries, "t", lambda root, **kw: samples(1))
    spec = CaseSpec(ModelSpec("stand_in_vlm", "openai_compat", 224, "auto", "float32",
                              {"base_url": server.base_url, "model": "m", "api_key_env": "STAND_IN_KEY",
                               "cache_dir": str(tmp_path)}),
                    "downscale", {"keep": 0.5}, "downscale_k0.5", DatasetSpec("t", "t"), {}, "inline")
    engine = Engine(EngineSettings(ocr_engine=None))
    result = engine.evaluate(spec)
    assert result.error is None and result.kpis["billed_tokens_qwen2_vl_reduction_pct"] > 40
    assert [s.sample_id for s, _ in engine.last_artifacts] == ["t/0"]  # the reports attach this case's samples
    assert json.loads(result.to_json())["env"]["protocol"] == "openai_compat"


def _png() -> bytes:
    from evalsuite.api.case import png_bytes

    return png_bytes(Image.new("RGB", (64, 64), "white"))


def test_the_api_matrix_and_its_commented_examples_load(tmp_path):
    from pathlib import Path

    from evalsuite.matrix import load

    text = Path("cases/api.toml").read_text(encoding="utf-8")
    ids = {c.id for c in load([Path("cases/api.toml")])}
    assert "vllm_qwen2_vl-crop-sroie" in ids and "vllm_qwen2_vl-downscale_k0.5-sroie" in ids
    lines, in_example = [], False  # uncomment each "# [models.X]" block, up to its blank line
    for line in text.splitlines():
        in_example = line.startswith("# [models.") or (in_example and line.startswith("# "))
        lines.append(line[2:] if in_example else line)
    examples = tmp_path / "api.toml"
    examples.write_text("\n".join(lines), encoding="utf-8")
    cases = load([examples])
    by_model = {c.model.id: c.model for c in cases}
    assert by_model["gigachat_pro"].factory == "gigachat" and by_model["gpt4o"].params["cost_model"] == "gpt4o"
    from evalsuite.models import MODELS

    for spec in by_model.values():  # the factories accept every key the examples use
        assert MODELS.get(spec.factory)(spec.id, **spec.params).name == spec.id
