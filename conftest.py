"""Test-wide settings: tests run in production mode, with a throwaway secret key."""

import os
import secrets

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "x" * 50)
os.environ.setdefault("DJANGO_DEBUG", "0")
if os.environ.get("REDIS_URL"):
    # A namespace of this run's own in a Redis others may share: its keys (stream logs,
    # cache) and channels never meet another run's, and only they are deleted at the end.
    os.environ["CHAT_REDIS_PREFIX"] = f"chat-test-{secrets.token_hex(6)}:"
