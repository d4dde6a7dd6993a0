"""Safe by default: isolation, limits, sign-in throttling, headers, secrets.

The isolation tests walk the URL resolver and the consumer's frame handlers rather than a
list written by hand, so a route or frame type added later is covered (or fails here
until the test learns what its parameters mean).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.resolvers import RegexPattern, RoutePattern

from chat import services
from chat.consumers import ChatConsumer
from chat.models import ApiToken, Conversation, Message, UserSettings
from tests.fakes import OpenAIServer, Script
from tests.helpers import BLOCK, ChatApi, ScriptedProvider, _handler, eventually
from tests.test_api_tokens import bearer_api
from tests.test_consumers import ORIGIN, headers, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
SECRETS = (
    "alice-title-secret",
    "alice-system-secret",
    "alice-question-secret",
    "alice-second-secret",
    "alice-token-name-secret",
)


# --- Alice's things, and a snapshot of them ---------------------------------------------


@dataclass
class Victim:
    conversation: str  # a finished exchange
    question: str
    answer: str
    live_conversation: str  # an answer that still streams
    live_answer: str
    token: str


@pytest.fixture
async def victim(user: Any, api: ChatApi, scripted: ScriptedProvider) -> Victim:
    scripted.script = ["Thinking about alice-second-secret", BLOCK]
    conversation = await api.create_conversation(
        title="alice-title-secret", system_prompt="alice-system-secret"
    )
    sent = await api.send(conversation["id"], "alice-question-secret")
    await api.finished(sent["assistant_message"]["id"])
    live = await api.create_conversation(model=scripted.model_id)
    live_sent = await api.send(live["id"], "alice-second-secret")
    live_answer = live_sent["assistant_message"]["id"]
    await api.read(live_answer, events=2)

    async def flushed() -> bool:  # the generation's timed write, before any snapshot
        return bool(await Message.objects.filter(id=live_answer).exclude(content="").aexists())

    await eventually(flushed)
    token, _secret = await sync_to_async(services.api_token_create)(
        user=user, name="alice-token-name-secret"
    )
    await sync_to_async(services.user_settings_update)(user=user, changes={"transport": "ws"})
    return Victim(
        conversation=conversation["id"],
        question=sent["user_message"]["id"],
        answer=sent["assistant_message"]["id"],
        live_conversation=live["id"],
        live_answer=live_sent["assistant_message"]["id"],
        token=str(token.id),
    )


# Written on a timer by a running generation, whoever reads: not a change made by a request.
VOLATILE = {"heartbeat_at", "updated_at"}


def snapshot(user_id: int) -> dict[str, Any]:
    """Every row of the user's, as values."""

    def rows(queryset: Any) -> list[dict[str, Any]]:
        return [
            {key: value for key, value in row.items() if key not in VOLATILE}
            for row in queryset.order_by("pk").values()
        ]

    return {
        "conversations": rows(Conversation.objects.filter(user_id=user_id)),
        "messages": rows(Message.objects.filter(conversation__user_id=user_id)),
        "tokens": rows(ApiToken.objects.filter(user_id=user_id)),
        "settings": rows(UserSettings.objects.filter(user_id=user_id)),
        "user": rows(get_user_model().objects.filter(pk=user_id)),
    }


def assert_no_secret(content: bytes | str, where: str) -> None:
    text = content if isinstance(content, str) else content.decode(errors="replace")
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked at {where}"


# --- The URL patterns -----------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    pattern: str  # the full pattern, for messages
    name: str | None  # qualified, for reverse()
    params: tuple[str, ...]
    regex: bool


def routes(
    resolver: URLResolver | None = None, prefix: str = "", namespace: str = ""
) -> Iterator[Route]:
    """Every URL pattern the site serves, found by walking the resolver."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = namespace + (f"{entry.namespace}:" if entry.namespace else "")
            yield from routes(entry, prefix + str(entry.pattern), inner)
            continue
        assert isinstance(entry, URLPattern)
        pattern = entry.pattern
        if isinstance(pattern, RoutePattern):
            params = tuple(pattern.converters)
        else:
            assert isinstance(pattern, RegexPattern)
            params = tuple(pattern.regex.groupindex)
        yield Route(
            pattern=prefix + str(pattern),
            name=f"{namespace}{entry.name}" if entry.name else None,
            params=params,
            regex=isinstance(pattern, RegexPattern),
        )


def id_values(victim: Victim) -> dict[str, list[str]]:
    """What each URL parameter can be: Alice's objects, for the parameters naming one."""
    return {
        "conversation_id": [victim.conversation, victim.live_conversation],
        "message_id": [victim.question, victim.answer, victim.live_answer],
        "token_id": [victim.token],
        # Not object ids: a value the route accepts, so that only the object decides.
        "file_format": ["md", "json"],
    }


def urls_of(route: Route, values: dict[str, list[str]]) -> list[str]:
    missing = [param for param in route.params if param not in values]
    assert not missing, (
        f"{route.pattern} takes {missing}: add them to id_values() (and, if one names an "
        "object, make sure it is looked up with services.*_for(user=...))"
    )
    assert route.name, f"{route.pattern} takes parameters but has no name"
    combos: list[dict[str, str]] = [{}]
    for param in route.params:
        combos = [{**combo, param: value} for combo in combos for value in values[param]]
    return [reverse(route.name, kwargs=combo) for combo in combos]


def plain_url(route: Route) -> str:
    assert not route.params and not route.regex, route
    return "/" + route.pattern


@dataclass
class Caller:
    name: str
    api: ChatApi


async def callers(other_user: Any) -> list[Caller]:
    session = AsyncClient()
    session.handler = _handler(False)
    await session.aforce_login(other_user)
    _token, secret = await sync_to_async(services.api_token_create)(user=other_user, name="bob")
    return [Caller("session", ChatApi(session)), Caller("token", bearer_api(secret))]


METHODS = ("get", "post", "patch", "delete", "put")
BODY = {"content": "x", "title": "pwned", "name": "pwned", "parent_id": None}


async def request(caller: Caller, method: str, url: str) -> Any:
    client = caller.api.client
    if method in {"get", "delete"}:
        return await getattr(client, method)(url)
    return await getattr(client, method)(url, json.dumps(BODY), content_type="application/json")


async def test_every_route_hides_another_users_objects_and_changes_nothing(
    user: Any, other_user: Any, victim: Victim, scripted: ScriptedProvider
) -> None:
    before = await sync_to_async(snapshot)(user.pk)
    values = id_values(victim)
    all_routes = list(routes())
    site_routes = [route for route in all_routes if not route.pattern.startswith("admin/")]
    assert any(route.params for route in site_routes)
    checked = []

    for caller in await callers(other_user):
        for route in site_routes:
            if caller.name == "token" and not route.pattern.startswith("api/"):
                continue  # a token signs in API calls only; pages see nobody
            if not route.params:
                # No id in the path: ids in the query (a page's `current`, a search) must
                # not reach Alice's things either.
                query = f"?current={victim.conversation}&q=alice&after=0"
                response = await caller.api.client.get(plain_url(route) + query)
                assert not getattr(response, "streaming", False), route.pattern
                assert_no_secret(response.content, f"GET {route.pattern} as {caller.name}")
                continue
            for url in urls_of(route, values):
                statuses = set()
                for method in METHODS:
                    response = await request(caller, method, url)
                    where = f"{method.upper()} {url} as {caller.name}"
                    assert not getattr(response, "streaming", False), where
                    assert response.status_code in {404, 405}, (where, response.status_code)
                    assert_no_secret(response.content, where)
                    if url.startswith("/api/"):
                        assert response["Content-Type"] == "application/json", where
                        if response.status_code == 404:
                            assert response.json()["error"]["code"] == "not_found", where
                    statuses.add(response.status_code)
                assert 404 in statuses, f"{url}: no method reached the object lookup"
                checked.append(url)

    assert {"chat:api-stream", "chat:api-stop", "account-token-revoke"} <= {
        route.name for route in site_routes if route.params
    }
    assert len(checked) >= 2 * 20
    # Nothing of Alice's changed, and her answer still streams.
    assert await sync_to_async(snapshot)(user.pk) == before
    assert (await Message.objects.aget(id=victim.live_answer)).status == "streaming"
    assert not scripted.runs[0].cancelled
    assert len(scripted.runs) == 1


async def test_the_admin_is_for_staff_only(
    user: Any, other_user: Any, victim: Victim, django_user_model: Any
) -> None:
    before = await sync_to_async(snapshot)(user.pk)
    session = AsyncClient()
    session.handler = _handler(False)
    await session.aforce_login(other_user)
    values = {
        "object_id": [victim.conversation, victim.answer, str(user.pk)],
        "id": [str(user.pk)],
        "content_type_id": ["1"],
        "app_label": ["chat", "auth"],
        "url": ["anything/"],
    }
    admin_routes = [route for route in routes() if route.pattern.startswith("admin/")]
    assert len(admin_routes) > 10

    for route in admin_routes:
        if route.name in {"admin:login", "admin:logout", None} and not route.params:
            continue  # the sign-in page itself, and signing out
        if route.name is None and route.params == ("url",):
            urls = ["/admin/anything/"]
        elif route.params:
            if route.name is None:
                continue  # unnamed duplicates of named routes (the admin's redirects)
            urls = urls_of(route, values)
        else:
            urls = [plain_url(route)]
        for url in urls:
            for method in ("get", "post"):
                response = await getattr(session, method)(url)
                where = f"{method.upper()} {url}"
                assert_no_secret(response.content, where)
                if response.status_code == 302:
                    assert response["Location"].startswith("/admin/login/"), where
                else:
                    assert response.status_code in {404, 405}, (where, response.status_code)

    assert await sync_to_async(snapshot)(user.pk) == before
    staff = await sync_to_async(django_user_model.objects.create_user)("carol", is_staff=True)
    await session.aforce_login(staff)
    assert (await session.get("/admin/")).status_code == 200


def consumer_frame_types() -> set[str]:
    return set(ChatConsumer().handlers)


async def test_every_frame_that_names_an_object_hides_another_users_objects(
    user: Any, other_user: Any, victim: Victim, scripted: ScriptedProvider
) -> None:
    """Each frame type, with each of Alice's ids, gets `not_found`, and nothing changes."""
    frames: dict[str, list[dict[str, Any]]] = {
        "send": [
            {"type": "send", "conversation_id": conversation, "content": "pwned"}
            for conversation in (victim.conversation, victim.live_conversation)
        ],
        "subscribe": [
            {"type": "subscribe", "message_id": message, **extra}
            for message in (victim.question, victim.answer, victim.live_answer)
            for extra in ({}, {"after": 0}, {"after": "x"})
        ],
        "cancel": [
            {"type": "cancel", "message_id": message}
            for message in (victim.question, victim.answer, victim.live_answer)
        ],
    }
    assert consumer_frame_types() == set(frames), "a new frame type: add its id fields here"
    before = await sync_to_async(snapshot)(user.pk)
    from chatsite.asgi import application

    socket = WebsocketCommunicator(
        application, "/ws/chat/", headers=headers(await session_cookie(other_user), ORIGIN)
    )
    assert (await socket.connect(timeout=5))[0]
    try:
        for kind, examples in frames.items():
            for frame in examples:
                await socket.send_json_to(frame)
                reply = await socket.receive_json_from(timeout=5)
                assert reply == {
                    "type": "error",
                    "code": "not_found",
                    "message": reply["message"],
                }, (kind, frame, reply)
                assert_no_secret(json.dumps(reply), f"{kind} frame")
        # A parent of Alice's in Bob's own conversation is no better than an unknown one.
        bobs = await sync_to_async(services.conversation_create)(user=other_user)
        answers = []
        for parent in (victim.answer, "00000000-0000-0000-0000-000000000000"):
            await socket.send_json_to(
                {
                    "type": "send",
                    "conversation_id": str(bobs.id),
                    "content": "x",
                    "parent_id": parent,
                }
            )
            answers.append(await socket.receive_json_from(timeout=5))
        assert answers[0]["code"] == answers[1]["code"]
        assert answers[0]["message"] == answers[1]["message"]
        assert await socket.receive_nothing(0.3)
    finally:
        await socket.disconnect()
    assert await sync_to_async(snapshot)(user.pk) == before
    assert not await Message.objects.filter(conversation__user=other_user).aexists()
    assert not scripted.runs[0].cancelled


def test_lookups_are_scoped_to_the_user_in_one_place(user: Any, other_user: Any) -> None:
    """Views and consumers find objects only through the services' `*_for(user=...)`."""
    conversation = services.conversation_create(user=user)
    token, _secret = services.api_token_create(user=user, name="t")
    with pytest.raises(services.NotFound):
        services.conversation_for(user=other_user, conversation_id=conversation.id)
    with pytest.raises(services.NotFound):
        services.api_token_for(user=other_user, token_id=token.id)
    sources = [
        *(BASE_DIR / "chat" / "views").glob("*.py"),
        BASE_DIR / "chat" / "consumers.py",
    ]
    for source in sources:
        text = source.read_text()
        for model in ("Conversation", "Message", "ApiToken"):
            assert f"{model}.objects" not in text, f"{source.name} looks up {model} itself"


# --- CSRF ---------------------------------------------------------------------------


async def test_every_unsafe_api_call_of_a_session_needs_the_csrf_token(
    user: Any, victim: Victim
) -> None:
    client = AsyncClient(enforce_csrf_checks=True)
    client.handler = _handler(True)
    await client.aforce_login(user)
    before = await sync_to_async(snapshot)(user.pk)
    values = id_values(victim)
    api_routes = [route for route in routes() if route.pattern.startswith("api/")]

    for route in api_routes:
        urls = urls_of(route, values) if route.params else [plain_url(route)]
        for url in urls:
            for method in ("post", "patch", "delete", "put"):
                response = await request(Caller("session", ChatApi(client)), method, url)
                where = f"{method.upper()} {url}"
                assert response.status_code in {403, 405}, (where, response.status_code)
                if response.status_code == 403:
                    assert response.json()["error"]["code"] == "csrf_failed", where

    assert await sync_to_async(snapshot)(user.pk) == before


# --- Limits -------------------------------------------------------------------------


async def test_an_oversize_body_is_a_json_413_before_anything_happens(
    api: ChatApi, anon_api: ChatApi, settings: Any
) -> None:
    conversation = await api.create_conversation(title="Kept")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    path = f"/api/conversations/{conversation['id']}"

    for client, where in ((api, "session"), (anon_api, "anonymous")):
        for response in (
            await client.post(f"{path}/messages", {"content": "x" * 3000}),
            await client.patch(path, {"title": "y" * 3000}),
        ):
            assert response.status_code == 413, where
            assert response.json()["error"]["code"] == "too_large"
    assert not await Message.objects.aexists()
    assert (await Conversation.objects.aget(id=conversation["id"])).title == "Kept"
    # A body under the limit goes through.
    response = await api.post(f"{path}/messages", {"content": "x" * 1500})
    assert response.status_code == 201
    await api.finished(response.json()["assistant_message"]["id"])


def test_the_request_body_limit_is_a_setting_that_holds_the_longest_message() -> None:
    from tests.test_settings import IGNORE_DOTENV, run

    show = IGNORE_DOTENV + (
        "from django.conf import settings\nprint(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)\n"
    )
    assert run(show, {"DJANGO_DEBUG": "1"}).stdout.split() == ["524288"]
    assert run(show, {"DJANGO_DEBUG": "1", "CHAT_MAX_REQUEST_BYTES": "1000000"}).stdout.split() == [
        "1000000"
    ]
    assert int(run(show, {"DJANGO_DEBUG": "1", "CHAT_MAX_PROMPT_CHARS": "200000"}).stdout) >= (
        4 * 200_000
    )
    too_small = run(show, {"DJANGO_DEBUG": "1", "CHAT_MAX_REQUEST_BYTES": "4096"})
    assert too_small.returncode != 0
    assert "CHAT_MAX_REQUEST_BYTES must be at least" in too_small.stderr


# --- Sign-in throttle ----------------------------------------------------------------


@pytest.fixture
def throttle(settings: Any, request: pytest.FixtureRequest) -> None:
    settings.CHAT_LOGIN_ATTEMPTS_PER_HOUR = 3
    settings.CHAT_LOGIN_ATTEMPTS_PER_IP_PER_HOUR = 5
    # A fast hasher: these tests make many attempts.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(params=["locmem", "redis"])
def login_cache(request: pytest.FixtureRequest, settings: Any) -> None:
    """The in-process cache, and Redis's (with REDIS_URL) on a key prefix of its own."""
    if request.param == "redis":
        import redis

        url = "redis://127.0.0.1:6379/0"
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as error:
            pytest.skip(f"Redis is needed: {error}")
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": f"chat-test-{secrets.token_hex(4)}:",
            }
        }


def sign_in(username: str, password: str, address: str, path: str = "/accounts/login/") -> Any:
    client = Client(REMOTE_ADDR=address)
    return client.post(path, {"username": username, "password": password}), client


@pytest.mark.usefixtures("throttle", "login_cache")
def test_failed_sign_ins_are_throttled_per_user_name(django_user_model: Any) -> None:
    django_user_model.objects.create_user("dora", password="right-password-1")
    django_user_model.objects.create_user("eve", password="right-password-2")

    for attempt in range(3):
        response, _client = sign_in("dora", f"guess-{attempt}", f"10.0.0.{attempt}")
        assert response.status_code == 200
        assert "correct username and password" in response.content.decode()

    # The right password from yet another address: refused, and told why.
    response, client = sign_in("dora", "right-password-1", "10.0.0.99")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    html = response.content.decode()
    assert "Too many failed sign-in attempts" in html
    assert 'role="alert"' in html
    assert "_auth_user_id" not in client.session
    # Another user signs in as usual.
    response, client = sign_in("eve", "right-password-2", "10.0.0.99")
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(django_user_model.objects.get(username="eve").pk)


@pytest.mark.usefixtures("throttle", "login_cache")
def test_failed_sign_ins_are_throttled_per_address(django_user_model: Any) -> None:
    django_user_model.objects.create_user("frank", password="right-password-3")
    for attempt in range(5):
        sign_in(f"someone-{attempt}", "guess", "10.9.9.9")

    assert sign_in("frank", "right-password-3", "10.9.9.9")[0].status_code == 429
    assert sign_in("frank", "right-password-3", "10.1.1.1")[0].status_code == 302


@pytest.mark.usefixtures("throttle")
def test_a_right_password_clears_the_user_names_failures(django_user_model: Any) -> None:
    django_user_model.objects.create_user("gina", password="right-password-4")
    for address in ("10.2.0.1", "10.2.0.2"):
        sign_in("gina", "guess", address)
    assert sign_in("gina", "right-password-4", "10.2.0.3")[0].status_code == 302
    for address in ("10.2.0.4", "10.2.0.5"):
        assert sign_in("gina", "guess", address)[0].status_code == 200
    assert sign_in("gina", "right-password-4", "10.2.0.6")[0].status_code == 302


@pytest.mark.usefixtures("throttle")
def test_the_admin_sign_in_is_throttled_too(django_user_model: Any) -> None:
    django_user_model.objects.create_user("root", password="right-password-5", is_staff=True)
    for attempt in range(3):
        assert sign_in("root", "guess", f"10.3.0.{attempt}", "/admin/login/")[0].status_code == 200

    response, client = sign_in("root", "right-password-5", "10.3.0.9", "/admin/login/")
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


# --- Headers ---------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def test_the_content_security_policy(user: Any) -> None:
    client = Client()
    client.force_login(user)
    responses = [client.get("/") for _ in range(2)]
    nonces = []
    for response in responses:
        policy = csp_directives(response["Content-Security-Policy"])
        script_src = policy["script-src"]
        assert script_src[0] == "'self'"
        assert len(script_src) == 2 and re.fullmatch(r"'nonce-[\w+/=-]{16,}'", script_src[1])
        nonce = script_src[1][len("'nonce-") : -1]
        nonces.append(nonce)
        # Every script of the page carries it; none runs inline without it.
        scripts = re.findall(r"<script\b[^>]*>", response.content.decode())
        assert scripts and all(f'nonce="{nonce}"' in tag for tag in scripts), scripts
        style_attr = policy.pop("style-src-attr")
        assert style_attr[0] == "'unsafe-hashes'"
        assert all(source.startswith("'sha256-") for source in style_attr[1:])
        assert policy == {
            "default-src": ["'self'"],
            "script-src": ["'self'", f"'nonce-{nonce}'"],
            "style-src": ["'self'"],
            "img-src": ["'self'", "data:"],
            "connect-src": ["'self'"],
            "font-src": ["'self'"],
            "object-src": ["'none'"],
            "base-uri": ["'none'"],
            "form-action": ["'self'"],
            "frame-ancestors": ["'none'"],
        }
        assert "unsafe-inline" not in response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
    assert nonces[0] != nonces[1]


HTTPS_PROBE = """
import json
import warnings
import django
django.setup()
from django.conf import settings
from django.test import Client

# Pages link static files by name: a fresh clone has no collected manifest, and whitenoise
# warns that the directory of collected files does not exist yet.
settings.STORAGES = {
    **settings.STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
warnings.filterwarnings("ignore", message="No directory at")

client = Client()
https = {"HTTP_HOST": "chat.example.com", "HTTP_X_FORWARDED_PROTO": "https"}
plain = {"HTTP_HOST": "chat.example.com"}
login = client.get("/accounts/login/", **https)
print(json.dumps({
    "login_status": login.status_code,
    "hsts": login.headers.get("Strict-Transport-Security"),
    "csrf_cookie": login.cookies["csrftoken"].output() if "csrftoken" in login.cookies else "",
    "redirect": [client.get("/accounts/login/", **plain).status_code,
                 client.get("/accounts/login/", **plain).headers.get("Location")],
    "healthz": client.get("/healthz", **plain).status_code,
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "session_cookie_httponly": settings.SESSION_COOKIE_HTTPONLY,
    "proxy_header": settings.SECURE_PROXY_SSL_HEADER,
}))
"""


@pytest.mark.parametrize("https", ["1", "0"])
def test_https_mode_turns_on_hsts_secure_cookies_and_the_proxy_header(https: str) -> None:
    from tests.test_settings import IGNORE_DOTENV, run

    database = Path(tempfile.gettempdir()) / f"chatsite-https-{secrets.token_hex(4)}.sqlite3"
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": https,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DATABASE_URL": f"sqlite:///{database}",
    }
    result = run(IGNORE_DOTENV + HTTPS_PROBE, env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    if https == "1":
        assert seen["login_status"] == 200
        assert seen["hsts"] == "max-age=31536000; includeSubDomains; preload"
        assert "Secure" in seen["csrf_cookie"]
        assert seen["redirect"] == [301, "https://chat.example.com/accounts/login/"]
        assert seen["healthz"] == 200  # health checks come over plain HTTP from inside
        assert seen["session_cookie_secure"] is True
        assert seen["proxy_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    else:
        assert seen["hsts"] is None
        assert "Secure" not in seen["csrf_cookie"]
        assert seen["redirect"][0] == 200
        assert seen["session_cookie_secure"] is False
        assert seen["proxy_header"] is None
    assert seen["session_cookie_httponly"] is True


def test_the_readme_production_settings_pass_the_deploy_check() -> None:
    """`manage.py check --deploy --fail-level WARNING`, as the README says to run it."""
    readme = (BASE_DIR / "README.md").read_text()
    assert "check --deploy" in readme and "DJANGO_HTTPS=1" in readme
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    }
    from tests.test_settings import run

    code = (
        "import sys, runpy, dotenv\n"
        "dotenv.load_dotenv = lambda *a, **k: False\n"  # a developer's .env must not count
        "sys.argv = ['manage.py', 'check', '--deploy', '--fail-level', 'WARNING']\n"
        "runpy.run_path('manage.py', run_name='__main__')\n"
    )
    result = run(code, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


# --- Secrets ---------------------------------------------------------------------------

KEY = "sk-proj-CANARY-security-5f2e9a7c3b1d"


@pytest.fixture
def leaky_upstream(settings: Any) -> Iterator[OpenAIServer]:
    """An OpenAI-compatible upstream that refuses the key and quotes it back."""
    with OpenAIServer() as server:
        settings.CHAT_MODELS = ["demo:demo", "openai:gpt-test"]
        settings.OPENAI_API_KEY = KEY
        settings.OPENAI_BASE_URL = f"{server.url}/v1"
        server.script = Script(status=401, error_message=f"Incorrect API key provided: {KEY}.")
        yield server


async def test_a_provider_key_reaches_no_page_answer_frame_or_log(
    user: Any,
    api: ChatApi,
    leaky_upstream: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
    django_user_model: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    conversation = await api.create_conversation(model="openai:gpt-test")
    sent = await api.send(conversation["id"], "Hello")
    stream = await api.read(sent["assistant_message"]["id"])
    assert stream.event("error").data["code"] == "auth"
    seen.append(json.dumps([event.data for event in stream.events]))

    from chatsite.asgi import application

    socket = WebsocketCommunicator(
        application, "/ws/chat/", headers=headers(await session_cookie(user), ORIGIN)
    )
    assert (await socket.connect(timeout=5))[0]
    try:
        await socket.send_json_to(
            {"type": "send", "conversation_id": conversation["id"], "content": "Again"}
        )
        while True:
            frame = await socket.receive_json_from(timeout=10)
            seen.append(json.dumps(frame))
            if frame["type"] == "final":
                break
    finally:
        await socket.disconnect()
    assert any('"code":"auth"' in text.replace(" ", "") for text in seen)

    answer = sent["assistant_message"]["id"]
    for path in (
        "/",
        f"/c/{conversation['id']}/",
        f"/c/{conversation['id']}/transcript",
        "/accounts/",
        "/api/conversations",
        f"/api/conversations/{conversation['id']}",
        f"/api/messages/{answer}",
    ):
        response = await api.get(path)
        assert response.status_code == 200, path
        seen.append(response.content.decode())
    staff = await sync_to_async(django_user_model.objects.create_superuser)(
        "root", password="x-unused-9"
    )
    admin = AsyncClient()
    await admin.aforce_login(staff)
    for path in (
        "/admin/chat/message/",
        f"/admin/chat/message/{answer}/change/",
        f"/admin/chat/conversation/{conversation['id']}/change/",
    ):
        response = await admin.get(path)
        assert response.status_code == 200, path
        seen.append(response.content.decode())
    stored = await Message.objects.aget(id=answer)
    seen.append(stored.error_message)
    seen.append(caplog.text)
    seen.extend(repr(record.args) for record in caplog.records)

    assert stored.error_code == "auth"
    for text in seen:
        assert KEY not in text
    # The key did go where it belongs: the upstream's Authorization header.
    assert leaky_upstream.requests[0].header("Authorization") == f"Bearer {KEY}"
