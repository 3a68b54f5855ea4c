"""Hosted VLM APIs: what a compressed image costs and reads like at a paid endpoint.

- :mod:`.client`: the safe client shared by every provider (bounded concurrency, retries with
  backoff on 429/5xx/timeouts, a per-run budget, an on-disk response cache, redaction of
  credentials in every message);
- :mod:`.backends`: one class per protocol: the OpenAI-compatible chat completions (the
  ``openai`` package: vLLM, SGLang, OpenAI, most gateways) and GigaChat (the ``gigachat``
  package: upload, then attachment; OAuth token refresh);
- :mod:`.case`: the case runner the engine dispatches ``kind == "api"`` models to.
"""
