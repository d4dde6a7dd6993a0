"""Settings for chatsite, read from the environment (and a `.env` file if present).

There is one settings file. Production differs from development only by environment
variables; see `.env.example` and the README for the full list.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

load_dotenv(BASE_DIR / ".env")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# --- Core --------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is not 1. "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
        )
    SECRET_KEY = "django-insecure-development-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
if "*" in ALLOWED_HOSTS:
    # A wildcard would also switch off Channels' WebSocket origin check.
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list real host names, not '*'")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    # Django's admin, with the usage page (chat/admin_site.py).
    "chat.admin_site.ChatAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "chat",
]

# Django's own middleware, in subclasses that run their hooks on the event loop where
# those do no I/O (see chat/middleware.py): the stock ones switch to a thread and back
# for each hook of each request.
MIDDLEWARE = [
    "chat.middleware.SecurityMiddleware",
    "chat.middleware.StaticFilesMiddleware",
    "chat.middleware.SessionMiddleware",
    "chat.middleware.CommonMiddleware",
    "chat.middleware.CsrfViewMiddleware",
    "chat.middleware.AuthenticationMiddleware",
    "chat.middleware.LoginRequiredMiddleware",
    "chat.middleware.MessageMiddleware",
    "chat.middleware.XFrameOptionsMiddleware",
    "chat.middleware.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
# Django looks for the stock classes by name; chat/checks.py reports these three (under
# `chat.`) when the project's classes are missing, and runs the checks they guard.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.site",
            ],
        },
    },
]

ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = None

# --- Database ----------------------------------------------------------------------

# A server connection is opened per unit of work (CONN_MAX_AGE = 0, which Django's pool
# also requires: with it, "closing" hands the connection back to the pool). SQLite's are
# file handles, kept by the few long-lived threads that use them (chat/handlers.py): each
# open costs more than the queries of a request.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run while a generation flushes; IMMEDIATE avoids lock upgrades
    # that fail instead of waiting.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = None  # see above
    # A file, not SQLite's shared memory, so test threads wait for locks rather than fail.
    # One per test process, so that two test runs on one machine never share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"chatsite-tests-{os.getpid()}.sqlite3")
    }
# PostgreSQL: one psycopg pool per process, shared by its threads. Code that holds a
# connection for long (an event stream, a generation) gives it back after each use, so a
# few connections serve many streams; the generation's own four writer threads take at
# most four of them. 0 turns the pool off (a connection per unit of work).
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 10)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_MAX_SIZE:
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "pool": {
            "min_size": min(2, DATABASE_POOL_MAX_SIZE),
            "max_size": DATABASE_POOL_MAX_SIZE,
            # Waiting longer for a free connection fails the request (a 500) instead.
            "timeout": 10.0,
        },
    }
    # The pool tests a connection before lending it: none dies unseen after a restart.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth --------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Django's ModelBackend behind the sign-in throttle (CHAT_LOGIN_ATTEMPTS_PER_HOUR).
AUTHENTICATION_BACKENDS = ["chat.backends.ThrottledModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

# --- I18N, static ------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security ----------------------------------------------------------------------

HTTPS = env_bool("DJANGO_HTTPS", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "chat.views.errors.csrf_failure"
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True


def _csp_hash(value: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(value.encode()).digest()).decode() + "'"


# The only inline styles rendered Markdown may carry (nh3 keeps nothing else): the column
# alignment of tables, allowed by hash so that no other inline style can apply.
_ALIGNMENT_STYLES = [
    f"text-align:{space}{side}" for side in ("left", "center", "right") for space in ("", " ")
]

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "style-src-attr": [CSP.UNSAFE_HASHES, *map(_csp_hash, _ALIGNMENT_STYLES)],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# --- Logging -----------------------------------------------------------------------

# `text`: one human-readable line per record, `key=value` fields for the app's events;
# `json`: one JSON object per line, the same fields as keys (for log shippers).
CHAT_LOG_FORMAT = (env_str("CHAT_LOG_FORMAT") or "text").lower()
if CHAT_LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"CHAT_LOG_FORMAT must be text or json, not {CHAT_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "chat.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": CHAT_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # A line for every call to a model provider, which `generation_end` already
        # reports with more (and which costs CPU per answer): failures only.
        "httpx2": {"level": "WARNING"},
    },
}

# --- Chat --------------------------------------------------------------------------

CHAT_MODELS = env_list("CHAT_MODELS", "demo:demo")
CHAT_DEFAULT_MODEL = env_str("CHAT_DEFAULT_MODEL") or (CHAT_MODELS[0] if CHAT_MODELS else "")
if CHAT_DEFAULT_MODEL and CHAT_DEFAULT_MODEL not in CHAT_MODELS:
    raise ImproperlyConfigured(
        f"CHAT_DEFAULT_MODEL {CHAT_DEFAULT_MODEL!r} is not one of CHAT_MODELS {CHAT_MODELS!r}"
    )
CHAT_ALLOW_SIGNUP = env_bool("CHAT_ALLOW_SIGNUP", True)
CHAT_DEMO_TOKENS_PER_SECOND = env_float("CHAT_DEMO_TOKENS_PER_SECOND", 30.0, minimum=0.1)
CHAT_MAX_PROMPT_CHARS = env_int("CHAT_MAX_PROMPT_CHARS", 32000, minimum=1)
# The Django ASGI handler reads the whole body before the view runs: keep it small. It
# must hold the longest message allowed, at 4 bytes a character (UTF-8), with room for the
# other fields. A larger body answers 413 (`too_large` under /api/).
_REQUEST_MINIMUM = 4 * CHAT_MAX_PROMPT_CHARS + 4096
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "CHAT_MAX_REQUEST_BYTES", max(512 * 1024, _REQUEST_MINIMUM), minimum=1
)
if DATA_UPLOAD_MAX_MEMORY_SIZE < _REQUEST_MINIMUM:
    raise ImproperlyConfigured(
        f"CHAT_MAX_REQUEST_BYTES must be at least {_REQUEST_MINIMUM} so that a message of "
        f"CHAT_MAX_PROMPT_CHARS={CHAT_MAX_PROMPT_CHARS} characters fits in one request"
    )
CHAT_MAX_OUTPUT_TOKENS = env_int("CHAT_MAX_OUTPUT_TOKENS", 4096, minimum=1)
CHAT_GENERATION_TIMEOUT = env_float("CHAT_GENERATION_TIMEOUT", 300.0, minimum=1.0)
CHAT_RATE_LIMIT_PER_MINUTE = env_int("CHAT_RATE_LIMIT_PER_MINUTE", 20)
CHAT_MAX_CONCURRENT_STREAMS = env_int("CHAT_MAX_CONCURRENT_STREAMS", 3)
CHAT_DAILY_TOKEN_QUOTA = env_int("CHAT_DAILY_TOKEN_QUOTA", 0)
CHAT_ABANDON_AFTER = env_float("CHAT_ABANDON_AFTER", 30.0)
# Failed sign-ins allowed per hour, per user name and per client address (0 = no limit);
# past them, sign-in answers 429 until the hour is over, even with the right password.
CHAT_LOGIN_ATTEMPTS_PER_HOUR = env_int("CHAT_LOGIN_ATTEMPTS_PER_HOUR", 10)
CHAT_LOGIN_ATTEMPTS_PER_IP_PER_HOUR = env_int("CHAT_LOGIN_ATTEMPTS_PER_IP_PER_HOUR", 50)
CHAT_SYSTEM_PROMPT = env_str("CHAT_SYSTEM_PROMPT", "You are a helpful assistant.")
# After a conversation's first answer, ask its model for a short title (one small extra
# request); off, the first message stays the title.
CHAT_TITLES = env_bool("CHAT_TITLES", True)

# Model providers; empty means unset. `openai` is offered with a key, or with only a base
# URL, for keyless local OpenAI-compatible servers (Ollama, llama.cpp, vLLM); `anthropic`
# needs a key. A provider that is not configured offers none of its CHAT_MODELS.
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
# Seconds to open a connection to a provider, and the longest silence allowed between two
# reads of its answer (its headers included): a provider that stalls ends as `timeout`.
CHAT_PROVIDER_CONNECT_TIMEOUT = env_float("CHAT_PROVIDER_CONNECT_TIMEOUT", 10.0, minimum=0.01)
CHAT_PROVIDER_READ_TIMEOUT = env_float("CHAT_PROVIDER_READ_TIMEOUT", 120.0, minimum=0.01)

# How often a generation coalesces deltas into one frame of the stream log, writes its
# text to the database, and proves it is alive. A heartbeat older than the stale
# threshold means the process that ran the generation is gone.
CHAT_FRAME_INTERVAL = 0.04
CHAT_FLUSH_INTERVAL = 1.0
CHAT_HEARTBEAT_STALE_AFTER = env_float("CHAT_HEARTBEAT_STALE_AFTER", 20.0, minimum=2.0)
CHAT_PING_INTERVAL = 15.0
# How long a finished stream stays in the in-process log before readers use the database.
CHAT_LOG_RETENTION = 60.0

METRICS_TOKEN = env_str("METRICS_TOKEN")
# Several processes on one machine pool their metrics in this directory (chat/metrics.py).
# prometheus-client switches to that mode when the variable merely exists: an empty value
# (say, from a copied .env.example) must mean "unset".
if not env_str("PROMETHEUS_MULTIPROC_DIR"):
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

# --- WebSocket ---------------------------------------------------------------------

# The largest client frame the consumer reads; a larger one gets a `too_large` error frame.
# By default the HTTP body limit, or more when longer prompts are allowed: it must hold a
# message of CHAT_MAX_PROMPT_CHARS characters at 4 bytes each (UTF-8), plus the frame's
# other fields. daphne's own limit (`--websocket-max-message-size` in the Procfile) must be
# at least this; daphne closes the socket (1009) on a larger frame before the app sees it.
_WS_FRAME_MINIMUM = 4 * CHAT_MAX_PROMPT_CHARS + 4096
CHAT_WS_MAX_FRAME_BYTES = env_int(
    "CHAT_WS_MAX_FRAME_BYTES", max(DATA_UPLOAD_MAX_MEMORY_SIZE, _WS_FRAME_MINIMUM), minimum=1
)
if CHAT_WS_MAX_FRAME_BYTES < _WS_FRAME_MINIMUM:
    raise ImproperlyConfigured(
        f"CHAT_WS_MAX_FRAME_BYTES must be at least {_WS_FRAME_MINIMUM} so that a message of "
        f"CHAT_MAX_PROMPT_CHARS={CHAT_MAX_PROMPT_CHARS} characters fits in one frame"
    )
# Streams one socket may follow at once (each is a task reading the stream log).
CHAT_WS_MAX_SUBSCRIPTIONS = env_int("CHAT_WS_MAX_SUBSCRIPTIONS", 8, minimum=1)

# The channel layer carries control messages only (close a session's sockets when it logs
# out), never tokens: those come from the stream log. In-process by default, which serves
# one process; with REDIS_URL the Redis layer (channels_redis) replaces it.
CHANNEL_LAYERS: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
}

# --- Several processes -------------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
# Namespace of this site's keys and channels, so several sites can share one Redis.
CHAT_REDIS_PREFIX = env_str("CHAT_REDIS_PREFIX", "chat:")
# How long a finished stream stays in Redis before readers use the database.
CHAT_REDIS_LOG_RETENTION = 600.0
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's, with one connection pool per process instead of one per request.
            "BACKEND": "chat.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHAT_REDIS_PREFIX,
        }
    }
    # The PubSub layer: one PUBLISH per control message, no per-channel capacity to fill.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{CHAT_REDIS_PREFIX}layer"},
        }
    }
