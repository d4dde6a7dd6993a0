"""The user's preferences: the transport the chat page follows answers with."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ChatApi

pytestmark = pytest.mark.django_db(transaction=True)


def page_transport(html: str) -> str:
    match = re.search(r'class="app"[^>]*data-transport="(\w+)"', html)
    assert match, "the page names no transport"
    return match.group(1)


def selected_transport(html: str) -> str:
    select = re.search(r'<select name="transport"[^>]*>(.*?)</select>', html, re.S)
    assert select, "the page has no transport control"
    match = re.search(r'<option value="(\w+)" selected>', select.group(1))
    assert match
    return match.group(1)


async def test_the_transport_is_sse_until_the_user_chooses_the_websocket(
    api: ChatApi, other_api: ChatApi
) -> None:
    assert (await api.get("/api/settings")).json() == {"transport": "sse"}
    page = (await api.get("/")).content.decode()
    assert page_transport(page) == selected_transport(page) == "sse"

    response = await api.patch("/api/settings", {"transport": "ws"})
    assert response.status_code == 200
    assert response.json() == {"transport": "ws"}
    assert (await api.get("/api/settings")).json() == {"transport": "ws"}
    page = (await api.get("/")).content.decode()
    assert page_transport(page) == selected_transport(page) == "ws"
    conversation = await api.create_conversation()
    page = (await api.get(f"/c/{conversation['id']}/")).content.decode()
    assert page_transport(page) == "ws"

    # Each user has their own.
    assert (await other_api.get("/api/settings")).json() == {"transport": "sse"}
    # Back again.
    await api.patch("/api/settings", {"transport": "sse"})
    assert page_transport((await api.get("/")).content.decode()) == "sse"


async def test_the_url_chooses_the_transport_for_one_page(api: ChatApi) -> None:
    assert page_transport((await api.get("/?transport=ws")).content.decode()) == "ws"
    await api.patch("/api/settings", {"transport": "ws"})
    assert page_transport((await api.get("/?transport=sse")).content.decode()) == "sse"
    # An unknown value falls back to the preference.
    assert page_transport((await api.get("/?transport=pigeon")).content.decode()) == "ws"
    assert (await api.get("/api/settings")).json() == {"transport": "ws"}


async def test_bad_settings_are_refused(api: ChatApi, anon_api: ChatApi) -> None:
    for body, code in (
        ({"transport": "pigeon"}, "invalid"),
        ({"transport": ["ws"]}, "invalid"),
        ({"theme": "dark"}, "invalid"),
        ("[]", "bad_json"),
        ("{", "bad_json"),
    ):
        response = await api.patch("/api/settings", body)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == code, body
    assert (await api.get("/api/settings")).json() == {"transport": "sse"}
    assert (await anon_api.get("/api/settings")).status_code == 401
    assert (await anon_api.patch("/api/settings", {"transport": "ws"})).status_code == 401
    assert (await api.post("/api/settings", {"transport": "ws"})).status_code == 405
