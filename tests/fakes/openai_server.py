"""A fake OpenAI Chat Completions server, speaking the streaming wire format exactly.

`POST /v1/chat/completions` (or `/chat/completions`) with `"stream": true` answers
`text/event-stream`: one `data: <chunk JSON>` event per delta (no `event:` lines), a chunk
with the `finish_reason`, then - when `stream_options.include_usage` was asked for - a
chunk with empty `choices` and the `usage`, and finally `data: [DONE]`. Every chunk
carries `"usage": null` when usage was asked for, as the API does. Errors are JSON
bodies `{"error": {"message", "type", "param", "code"}}`; an error during the stream is
a `data:` event holding such an `error` object.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.fakes.base import Exchange, FakeServer

_DEFAULT_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Not allowed."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", "", "The server had an error while processing your request."),
    503: ("server_error", "", "The engine is currently overloaded, please try again later."),
}


class OpenAIServer(FakeServer):
    name = "openai"
    paths = ("/v1/chat/completions", "/chat/completions")

    async def respond(self, exchange: Exchange) -> None:
        script = exchange.script
        request_id = f"req_{uuid.uuid4().hex}"
        await exchange.sleep(script.headers_delay)
        if script.status != 200:
            await self._error_response(exchange, request_id)
            return
        await exchange.start(
            200,
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "keep-alive"),
                ("Cache-Control", "no-cache"),
                ("x-request-id", request_id),
                ("openai-processing-ms", "41"),
            ],
        )
        if script.hang_after_headers:
            await exchange.hang()

        body = exchange.record.json
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "gpt-fake"),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {**base, "choices": choices, **({"usage": None} if include_usage else {})}
            return self.sse(script.newline, {**chunk, **extra})

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        role_sent = False

        async def send_delta(text: str) -> None:
            nonlocal role_sent
            if not role_sent:
                # The API opens with the role (and empty content) right before the text.
                role_sent = True
                role = {"role": "assistant", "content": "", "refusal": None}
                await exchange.chunk(frame([choice(role)]))
            await exchange.chunk(frame([choice({"content": text})]))

        ending = await self.stream_deltas(exchange, send_delta)
        if ending == "error":
            error = {
                "message": script.error_message or "The server had an error while processing.",
                "type": script.error_type or "server_error",
                "param": None,
                "code": script.error_code or None,
            }
            await exchange.chunk(self.sse(script.newline, {"error": error}))
        if ending != "complete":
            await self.end_early(exchange, ending)
            return
        await exchange.chunk(frame([choice({}, script.finish_reason or "stop")]))
        if include_usage:
            prompt, completion = script.prompt_tokens, script.completion_count()
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            await exchange.chunk(self.sse(script.newline, {**base, "choices": [], "usage": usage}))
        await exchange.chunk(self.sse(script.newline, "[DONE]"))
        await exchange.end()

    async def _error_response(self, exchange: Exchange, request_id: str) -> None:
        script = exchange.script
        kind, code, message = _DEFAULT_ERRORS.get(script.status, ("server_error", "", "Error."))
        error = {
            "message": script.error_message or message,
            "type": script.error_type or kind,
            "param": None,
            "code": script.error_code or code or None,
        }
        headers = [("x-request-id", request_id)]
        if script.retry_after is not None:
            headers.append(("retry-after", script.retry_after))
        await exchange.json(script.status, {"error": error}, headers)
