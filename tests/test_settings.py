"""Settings come from the environment, and production refuses to start when they are unsafe.

Each case starts a fresh interpreter, as a server would, with only the variables given.
A developer's `.env` file is ignored here so that it cannot change the outcome.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
IGNORE_DOTENV = "import dotenv; dotenv.load_dotenv = lambda *args, **kwargs: False\n"
# Loading the settings is where a server process fails or goes on.
START = IGNORE_DOTENV + "from django.conf import settings\nprint('DEBUG', settings.DEBUG)\n"


def run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "CHAT_", "DATABASE_", "REDIS_URL", "METRICS_"))
    }
    clean["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    # Cache bytecode outside the repository even where writing it is switched off: a
    # fresh interpreter that compiles Django, Twisted and the SDKs takes seconds.
    clean.pop("PYTHONDONTWRITEBYTECODE", None)
    clean["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "chatsite-test-pycache")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "env",
    [{"DJANGO_DEBUG": "0"}, {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "  "}, {}],
    ids=["debug-0", "blank-key", "debug-unset"],
)
def test_production_refuses_to_start_without_a_secret_key(env: dict[str, str]) -> None:
    result = run(START, env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY is required" in result.stderr
    assert "DEBUG" not in result.stdout


def test_development_starts_without_a_key() -> None:
    result = run(START, {"DJANGO_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert "DEBUG True" in result.stdout


def test_production_starts_with_a_key() -> None:
    result = run(START, {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)})
    assert result.returncode == 0, result.stderr
    assert "DEBUG False" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be 1 or 0"),
        ({"DJANGO_DEBUG": "1", "DJANGO_ALLOWED_HOSTS": "*"}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "1", "CHAT_DEFAULT_MODEL": "openai:gpt-4o"}, "CHAT_DEFAULT_MODEL"),
        ({"DJANGO_DEBUG": "1", "CHAT_RATE_LIMIT_PER_MINUTE": "many"}, "whole number"),
        ({"DJANGO_DEBUG": "1", "CHAT_WS_MAX_FRAME_BYTES": "65536"}, "CHAT_WS_MAX_FRAME_BYTES"),
    ],
    ids=["debug-flag", "wildcard-host", "default-model", "limit", "ws-frame-too-small"],
)
def test_bad_configuration_fails_loudly(env: dict[str, str], message: str) -> None:
    result = run(START, env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_the_websocket_frame_limit_grows_with_the_prompt_limit() -> None:
    """A message of CHAT_MAX_PROMPT_CHARS 4-byte characters always fits in one frame."""
    show = (
        IGNORE_DOTENV
        + "from django.conf import settings\nprint(settings.CHAT_WS_MAX_FRAME_BYTES)\n"
    )
    default = run(show, {"DJANGO_DEBUG": "1"})
    assert default.stdout.split() == ["524288"], default.stderr
    longer = run(show, {"DJANGO_DEBUG": "1", "CHAT_MAX_PROMPT_CHARS": "200000"})
    assert int(longer.stdout) >= 4 * 200_000, longer.stderr


def test_postgresql_connections_come_from_a_pool_unless_it_is_turned_off() -> None:
    show = IGNORE_DOTENV + (
        "import importlib, os\n"
        "import chatsite.settings as settings\n"
        "def show():\n"
        "    db = settings.DATABASES['default']\n"
        "    pool = db.get('OPTIONS', {}).get('pool')\n"
        "    print(db['CONN_MAX_AGE'], db['CONN_HEALTH_CHECKS'], pool)\n"
        "show()\n"
        "os.environ['DATABASE_POOL_MAX_SIZE'] = '0'\n"
        "importlib.reload(settings)\n"
        "show()\n"
    )
    result = run(show, {"DJANGO_DEBUG": "1", "DATABASE_URL": "postgres://chat@db.internal/chat"})

    pooled, unpooled = result.stdout.splitlines()
    # Django's pool refuses persistent connections; it checks each one it lends.
    assert pooled == "0 True {'min_size': 2, 'max_size': 10, 'timeout': 10.0}", result.stderr
    assert unpooled == "0 False None"


def test_a_production_configuration_passes_the_deploy_check() -> None:
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    }
    code = IGNORE_DOTENV + (
        "import sys\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])\n"
    )
    result = run(code, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
