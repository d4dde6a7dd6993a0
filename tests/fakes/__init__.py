"""Wire-faithful fake model providers on 127.0.0.1, for tests and benchmarks.

    with OpenAIServer(Script(deltas=["Hel", "lo"], interval=0.02)) as upstream:
        settings.OPENAI_BASE_URL = f"{upstream.url}/v1"   # AnthropicServer: upstream.url
        ...                                                # let the app call it
        upstream.requests[0].json          # the request body the provider sent
        upstream.requests[0].delta_times   # time.monotonic() of each delta sent
        upstream.requests[0].closed_at     # when the client left before the end, if it did

`server.script` answers every request; `server.queue(...)` scripts the next ones.
"""

from tests.fakes.anthropic_server import AnthropicServer
from tests.fakes.base import FakeServer, RecordedRequest, Script
from tests.fakes.openai_server import OpenAIServer

__all__ = ["AnthropicServer", "FakeServer", "OpenAIServer", "RecordedRequest", "Script"]
