"""Test-wide settings: tests run in production mode, with a throwaway secret key."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "x" * 50)
os.environ.setdefault("DJANGO_DEBUG", "0")
