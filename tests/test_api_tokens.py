"""Personal API tokens: only a hash stored, Bearer on the API and the stream, the account
page that creates, lists and revokes them, and the command that issues one."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.test import AsyncClient, Client

from chat import services
from chat.models import ApiToken, Conversation
from tests.helpers import ChatApi, _handler, async_client

pytestmark = pytest.mark.django_db(transaction=True)


class BearerClient(AsyncClient):
    """An AsyncClient that sends `Authorization: Bearer <secret>` with every request."""

    def __init__(self, secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secret = secret

    def generic(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["headers"] = {
            "Authorization": f"Bearer {self.secret}",
            **(kwargs.get("headers") or {}),
        }
        return super().generic(method, path, *args, **kwargs)


def bearer_api(secret: str) -> ChatApi:
    """The API through a client that sends the token, with CSRF checks on as in a browser."""
    client = BearerClient(secret, enforce_csrf_checks=True)
    client.handler = _handler(True)
    return ChatApi(client)


def issue(user: Any, name: str = "script") -> str:
    return services.api_token_create(user=user, name=name)[1]


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_token"
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'


# --- The token ------------------------------------------------------------------------


async def test_only_a_hash_of_the_token_is_stored(user: Any) -> None:
    token, secret = await sync_to_async(services.api_token_create)(user=user, name="laptop")

    assert secret.startswith("chat_") and len(secret) >= 40
    row = await ApiToken.objects.aget(id=token.id)
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.prefix == secret[:12]
    stored = await ApiToken.objects.filter(id=token.id).values().aget()
    assert all(secret not in str(value) for value in stored.values())
    found = await sync_to_async(services.api_token_for_secret)(secret=secret)
    assert found is not None and found.id == token.id and found.user_id == user.pk
    # Two tokens never share a secret.
    assert await sync_to_async(issue)(user) != secret


# --- Bearer on the API and the stream ---------------------------------------------------


async def test_a_bearer_token_drives_the_api_and_the_stream_without_csrf(user: Any) -> None:
    secret = await sync_to_async(issue)(user)
    api = bearer_api(secret)

    conversation = await api.create_conversation(title="From a script")
    sent = await api.send(conversation["id"], "Hello from curl")
    stream = await api.read(sent["assistant_message"]["id"])

    assert stream.status == 200
    assert stream.final is not None and stream.final["status"] == "complete"
    assert (await api.message(sent["assistant_message"]["id"]))["content"] == stream.text
    renamed = await api.patch(f"/api/conversations/{conversation['id']}", {"title": "Renamed"})
    assert renamed.status_code == 200
    assert (await api.delete(f"/api/conversations/{conversation['id']}")).status_code == 204
    assert not await Conversation.objects.filter(user=user).aexists()
    token = await ApiToken.objects.aget(user=user)
    assert token.last_used_at is not None


async def test_a_bearer_request_is_the_tokens_user_whatever_the_cookie(
    user: Any, other_user: Any, other_api: ChatApi
) -> None:
    await other_api.create_conversation(title="Bob's")
    secret = await sync_to_async(issue)(user)

    # Alice's token with Bob's session cookie: Alice, and no CSRF needed.
    api = bearer_api(secret)
    await api.client.aforce_login(other_user)
    created = await api.create_conversation(title="Alice's")
    listing = (await api.get("/api/conversations")).json()["conversations"]
    assert [c["title"] for c in listing] == ["Alice's"]
    assert await Conversation.objects.filter(id=created["id"], user=user).aexists()

    # A bad token never falls back on the cookie.
    with_bad_token = bearer_api("chat_not-a-real-token")
    await with_bad_token.client.aforce_login(other_user)
    assert_invalid_token(await with_bad_token.get("/api/conversations"))


@pytest.mark.parametrize("case", ["unknown", "malformed", "empty", "revoked", "disabled"])
async def test_a_wrong_revoked_or_disabled_token_is_401_json(
    user: Any, api: ChatApi, case: str
) -> None:
    answer = await api.ask()
    await api.finished(answer["id"])
    token, secret = await sync_to_async(services.api_token_create)(user=user, name="t")
    if case == "unknown":
        secret = "chat_" + "x" * 43
    elif case == "malformed":
        secret = "not a token at all"
    elif case == "empty":
        secret = ""
    elif case == "revoked":
        await sync_to_async(services.api_token_revoke)(token=token)
    else:
        user.is_active = False
        await user.asave()
    client = bearer_api(secret)
    conversations = await Conversation.objects.acount()

    assert_invalid_token(await client.get("/api/conversations"))
    assert_invalid_token(await client.post("/api/conversations", {}))
    assert_invalid_token(await client.get(f"/api/messages/{answer['id']}"))
    stream = await client.open_stream(answer["id"])
    assert not stream.response.streaming
    assert_invalid_token(stream.response)
    assert await Conversation.objects.acount() == conversations


async def test_session_requests_still_need_the_csrf_token(user: Any) -> None:
    client = async_client(enforce_csrf_checks=True)
    await client.aforce_login(user)

    for method in ("post", "patch", "delete"):
        response = await getattr(client, method)(
            "/api/settings" if method == "patch" else "/api/conversations",
            "{}",
            content_type="application/json",
        )
        assert response.status_code in {403, 405}, method
        if response.status_code == 403:
            assert response.json()["error"]["code"] == "csrf_failed"
    assert not await Conversation.objects.aexists()


# --- The account page -----------------------------------------------------------------


def test_the_chat_page_links_to_the_account_page(user: Any) -> None:
    client = Client()
    client.force_login(user)
    page = client.get("/").content.decode()
    assert re.search(r'<a href="/accounts/">Account</a>', page)


def test_the_account_page_creates_shows_once_lists_and_revokes_tokens(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    page = client.get("/accounts/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<h1>Your account</h1>" in html
    assert '<a href="/accounts/password/">Change your password</a>' in html
    assert '<label for="token-name">Token name</label>' in html
    assert "You have no API tokens." in html
    csrf = client.cookies["csrftoken"].value

    created = client.post("/accounts/tokens/", {"name": "Laptop", "csrfmiddlewaretoken": csrf})
    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    html = created.content.decode()
    match = re.search(r'id="new-token-secret" type="text" value="(chat_[^"]+)"', html)
    assert match, html
    secret = match.group(1)
    assert '<label for="new-token-secret">Your new token</label>' in html
    token = ApiToken.objects.get(user=user)
    assert token.name == "Laptop"
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()

    # Listed by name and prefix; the secret itself is never shown again.
    listed = client.get("/accounts/").content.decode()
    assert secret not in listed
    assert f"<code>{token.prefix}…</code>" in listed
    assert 'aria-label="Revoke Laptop"' in listed
    assert ">Never<" in listed

    revoked = client.post(
        f"/accounts/tokens/{token.id}/revoke", {"csrfmiddlewaretoken": csrf}, follow=True
    )
    assert revoked.redirect_chain == [("/accounts/", 302)]
    html = revoked.content.decode()
    assert "is revoked" in html
    assert "Revoke Laptop" not in html
    assert services.api_token_for_secret(secret=secret) is None
    assert ApiToken.objects.get(id=token.id).revoked_at is not None


def test_the_account_forms_need_their_csrf_token(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    _token, secret = services.api_token_create(user=user, name="Kept")
    token = ApiToken.objects.get(user=user)

    assert client.post("/accounts/tokens/", {"name": "Forged"}).status_code == 403
    assert client.post(f"/accounts/tokens/{token.id}/revoke").status_code == 403
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["Kept"]
    assert services.api_token_for_secret(secret=secret) is not None


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_token_needs_a_reasonable_name(user: Any, name: str) -> None:
    client = Client()
    client.force_login(user)

    response = client.post("/accounts/tokens/", {"name": name})

    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_anonymous_visitors_are_sent_to_sign_in() -> None:
    client = Client()
    response = client.get("/accounts/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert client.post("/accounts/tokens/", {"name": "x"}).status_code == 302
    assert not ApiToken.objects.exists()


# --- The management command -------------------------------------------------------------


async def test_the_command_prints_a_working_token_once(user: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    await sync_to_async(call_command)(
        "issue_api_token", "alice", "--name", "CI", stdout=out, stderr=err
    )

    secret = out.getvalue().strip()
    assert secret.startswith("chat_")
    assert "CI" in err.getvalue() and secret not in err.getvalue()
    token = await ApiToken.objects.aget(user=user)
    assert token.name == "CI"
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert (await bearer_api(secret).get("/api/conversations")).status_code == 200


def test_the_command_refuses_unknown_and_disabled_users(user: Any) -> None:
    with pytest.raises(CommandError, match="No user named"):
        call_command("issue_api_token", "nobody", stdout=io.StringIO())
    user.is_active = False
    user.save()
    with pytest.raises(CommandError, match="disabled"):
        call_command("issue_api_token", "alice", stdout=io.StringIO())
    assert not ApiToken.objects.exists()
