"""A fake Anthropic Messages server, speaking the streaming wire format exactly.

`POST /v1/messages` with `"stream": true` answers `text/event-stream` with named events:
`message_start` (input tokens), `content_block_start`, `ping`, one `content_block_delta`
(`text_delta`) per delta, `content_block_stop`, `message_delta` (stop reason, output
tokens), `message_stop`. Errors are JSON bodies
`{"type": "error", "error": {"type", "message"}, "request_id"}`; an error during the
stream is an `event: error` with the same `error` object.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.fakes.base import Exchange, FakeServer

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    529: ("overloaded_error", "Overloaded"),
}


class AnthropicServer(FakeServer):
    name = "anthropic"
    paths = ("/v1/messages",)

    def not_found_body(self, path: str) -> object:
        return {"type": "error", "error": {"type": "not_found_error", "message": path}}

    async def respond(self, exchange: Exchange) -> None:
        script = exchange.script
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        await exchange.sleep(script.headers_delay)
        if script.status != 200:
            kind, message = _DEFAULT_ERRORS.get(script.status, ("api_error", "Error."))
            error = {"type": script.error_type or kind, "message": script.error_message or message}
            headers = [("request-id", request_id)]
            if script.retry_after is not None:
                headers.append(("retry-after", script.retry_after))
            body = {"type": "error", "error": error, "request_id": request_id}
            await exchange.json(script.status, body, headers)
            return
        await exchange.start(
            200,
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "keep-alive"),
                ("Cache-Control", "no-cache"),
                ("request-id", request_id),
                ("anthropic-organization-id", "00000000-0000-0000-0000-000000000000"),
            ],
        )
        if script.hang_after_headers:
            await exchange.hang()

        def event(name: str, data: dict[str, Any]) -> bytes:
            return self.sse(script.newline, {"type": name, **data}, event=name)

        model = exchange.record.json.get("model", "claude-fake")
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": script.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        }
        await exchange.chunk(event("message_start", {"message": message}))
        block = {"index": 0, "content_block": {"type": "text", "text": ""}}
        await exchange.chunk(event("content_block_start", block))
        await exchange.chunk(event("ping", {}))

        async def send_delta(text: str) -> None:
            delta = {"index": 0, "delta": {"type": "text_delta", "text": text}}
            await exchange.chunk(event("content_block_delta", delta))

        ending = await self.stream_deltas(exchange, send_delta)
        if ending == "error":
            error = {
                "type": script.error_type or "overloaded_error",
                "message": script.error_message or "Overloaded",
            }
            await exchange.chunk(event("error", {"error": error}))
        if ending != "complete":
            await self.end_early(exchange, ending, event="content_block_delta")
            return
        await exchange.chunk(event("content_block_stop", {"index": 0}))
        stop = {"stop_reason": script.finish_reason or "end_turn", "stop_sequence": None}
        usage = {"output_tokens": script.completion_count()}
        await exchange.chunk(event("message_delta", {"delta": stop, "usage": usage}))
        await exchange.chunk(event("message_stop", {}))
        await exchange.end()
