"""STAND-IN servers for hosted VLM APIs, for tests only: no hosted API can be reached from here.

:class:`StandInOpenAIServer` speaks the OpenAI-compatible chat-completions protocol,
:class:`StandInGigaChatServer` GigaChat's (OAuth token endpoint, file upload, chat
completions with attachments). Both run ``http.server`` on 127.0.0.1, port 0, in a thread,
and count image tokens by Qwen2-VL's formula (:func:`evalsuite.billing.image_tokens`) on the
decoded image, so usage moves with the size of the image the way a real endpoint's does:
``prompt_tokens = words of the prompt + image tokens``. The answer names the image size.

Faults are scripted per test: ``fail_next`` (HTTP statuses answered, in order, before
normal service), ``delay_s`` (a slow answer, to time out), ``malformed`` (a reply missing
its fields), ``refuse_over`` (400 for an image wider than that), ``fail_from`` ((n, status):
every chat request after the first n answers status). A 401 echoes the credential it was
given, as careless servers do, so that the tests see whether the client redacts it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from evalsuite.billing import image_tokens


class _StandIn:
    def __init__(self):
        self.requests: list[str] = []  # paths of every request received
        self.fail_next: list[int] = []
        self.delay_s = 0.0
        self.malformed = False
        self.refuse_over: int | None = None
        self.fail_from: tuple[int, int] | None = None
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests the server held at once
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the test reads what it needs from the server object
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    owner.requests.append(self.path)
                    status = owner.fail_next.pop(0) if owner.fail_next else None
                    chats = sum(p.endswith("/chat/completions") for p in owner.requests)
                    if status is None and owner.fail_from and self.path.endswith("/chat/completions") \
                            and chats > owner.fail_from[0]:
                        status = owner.fail_from[1]
                if status is not None:
                    return self.reply(status, {"error": {"message": f"stand-in scripted {status} for "
                                                                    f"{self.headers.get('Authorization')}"}})
                with owner.lock:
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    if owner.delay_s:
                        time.sleep(owner.delay_s)
                    owner.handle(self, body)
                except BrokenPipeError:  # the client timed out and went away
                    pass
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def reply(self, status: int, payload, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def chat_requests(self) -> int:
        return sum(path.endswith("/chat/completions") for path in self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def usage_reply(self, handler, model: str, prompt: str, image: Image.Image):
        if self.refuse_over is not None and image.width > self.refuse_over:
            return handler.reply(400, {"error": {"message": f"image too large: {image.width} px wide"}})
        answer = f"image {image.width}x{image.height}"
        if self.malformed:
            return handler.reply(200, None, raw=b'{"id": "x", "choices": []}')
        prompt_tokens = len(prompt.split()) + image_tokens("qwen2_vl", *image.size)
        completion = len(answer.split())
        handler.reply(200, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:8], "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        })


class StandInOpenAIServer(_StandIn):
    """``POST /v1/chat/completions``; answers 401 unless ``Authorization: Bearer <api_key>``."""

    def __init__(self, api_key: str):
        super().__init__()
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def handle(self, handler, body: bytes):
        if handler.path != "/v1/chat/completions":
            return handler.reply(404, {"error": {"message": "not found"}})
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return handler.reply(401, {"error": {"message": f"invalid api key: {handler.headers.get('Authorization')}"}})
        request = json.loads(body)
        parts = request["messages"][0]["content"]
        prompt = " ".join(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        self.usage_reply(handler, request["model"], prompt, image)


class StandInGigaChatServer(_StandIn):
    """GigaChat's paths as the ``gigachat`` package calls them: ``POST /api/v2/oauth`` (Basic
    ``credentials``) -> ``{access_token, expires_at}``; ``POST /v1/files`` (multipart) -> file
    object; ``POST /v1/chat/completions`` with ``attachments``. ``expire_tokens()`` makes every
    token issued so far answer 401, as an expired one does."""

    def __init__(self, credentials: str):
        super().__init__()
        self.credentials = credentials
        self.valid_tokens: set[str] = set()
        self.tokens_issued = 0
        self.files: dict[str, Image.Image] = {}

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    @property
    def auth_url(self) -> str:
        return self.origin + "/api/v2/oauth"

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def handle(self, handler, body: bytes):
        if handler.path == "/api/v2/oauth":
            if handler.headers.get("Authorization") != f"Basic {self.credentials}":
                return handler.reply(401, {"message": "bad credentials"})
            token = "tok-" + uuid.uuid4().hex
            self.valid_tokens.add(token)
            self.tokens_issued += 1
            return handler.reply(200, {"access_token": token, "expires_at": int(time.time() * 1000) + 1_800_000})
        bearer = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.valid_tokens:
            return handler.reply(401, {"message": "Token has expired"})
        if handler.path == "/v1/files":
            match = re.search(rb"\r\n\r\n(.*)\r\n--", body, re.S)  # the one file part of the multipart body
            png = body[body.index(b"\x89PNG"):]
            image = Image.open(io.BytesIO(png))
            image.load()
            file_id = str(uuid.uuid4())
            self.files[file_id] = image
            return handler.reply(200, {"id": file_id, "object": "file", "bytes": len(match.group(1)) if match else 0,
                                       "created_at": int(time.time()), "filename": "image.png",
                                       "purpose": "general"})
        if handler.path == "/v1/chat/completions":
            request = json.loads(body)
            message = request["messages"][0]
            image = self.files.get((message.get("attachments") or [None])[0])
            if image is None:
                return handler.reply(400, {"message": "unknown attachment"})
            return self.usage_reply(handler, request.get("model", ""), message["content"], image)
        handler.reply(404, {"message": "not found"})
