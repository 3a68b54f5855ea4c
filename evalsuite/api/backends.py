"""The provider protocols: OpenAI-compatible chat completions and GigaChat.

Each backend sends one prompt with one PNG and returns usage and answer; retries, budget,
cache and redaction are :class:`~evalsuite.api.client.ApiClient`'s. The libraries' own
retries are off, so that one policy (and one budget) counts every request.
"""

from __future__ import annotations

import base64
import time

from .client import ApiReply
from .redact import ApiError


def _malformed(endpoint: str, what: str) -> ApiError:
    return ApiError(f"{endpoint}: malformed response: {what}")


class OpenAICompat:
    """``POST {base_url}/chat/completions`` with the image as a ``data:image/png;base64`` URL."""

    def __init__(self, base_url: str, model: str, api_key: str, detail: str | None = None):
        import openai

        self.endpoint, self.model, self.detail = base_url.rstrip("/"), model, detail
        self._client = openai.OpenAI(base_url=self.endpoint, api_key=api_key, max_retries=0)

    def complete(self, prompt: str, png: bytes, timeout: float) -> ApiReply:
        url = {"url": "data:image/png;base64," + base64.b64encode(png).decode()}
        if self.detail:
            url["detail"] = self.detail
        start = time.perf_counter()
        response = self._client.chat.completions.create(
            model=self.model, timeout=timeout, temperature=0,
            messages=[{"role": "user", "content": [{"type": "text", "text": prompt},
                                                   {"type": "image_url", "image_url": url}]}])
        latency = time.perf_counter() - start
        try:
            answer = response.choices[0].message.content
            usage = response.usage
            reply = ApiReply(str(answer), int(usage.prompt_tokens), int(usage.completion_tokens),
                             int(usage.total_tokens), latency)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise _malformed(self.endpoint, f"{type(exc).__name__}: {exc}") from None
        if answer is None:
            raise _malformed(self.endpoint, "no message content")
        return reply

    def close(self) -> None:
        self._client.close()


class GigaChatBackend:
    """GigaChat through its ``gigachat`` package: the image is uploaded (``POST /files``), then
    attached to the message by id. The package fetches the OAuth token from ``auth_url`` with
    ``credentials`` and fetches a new one when a call answers 401 (an expired token)."""

    def __init__(self, base_url: str, model: str, credentials: str, auth_url: str | None = None,
                 scope: str | None = None, verify_ssl_certs: bool = True, timeout: float = 60.0):
        from gigachat import GigaChat

        self.endpoint, self.model = base_url.rstrip("/"), model
        options = {"auth_url": auth_url, "scope": scope}
        self._client = GigaChat(base_url=self.endpoint, credentials=credentials, model=model, timeout=timeout,
                                verify_ssl_certs=verify_ssl_certs, max_retries=0,
                                **{k: v for k, v in options.items() if v})

    def complete(self, prompt: str, png: bytes, timeout: float) -> ApiReply:
        start = time.perf_counter()
        uploaded = self._client.upload_file(("image.png", png, "image/png"))
        response = self._client.chat({"model": self.model, "temperature": 0.0001,  # GigaChat refuses 0
                                      "messages": [{"role": "user", "content": prompt,
                                                    "attachments": [uploaded.id_]}]})
        latency = time.perf_counter() - start
        try:
            usage = response.usage
            return ApiReply(str(response.choices[0].message.content), int(usage.prompt_tokens),
                            int(usage.completion_tokens), int(usage.total_tokens), latency)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise _malformed(self.endpoint, f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._client.close()
