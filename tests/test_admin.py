"""The admin: read-only transcripts for reviewers, filters, export, inert hostile text,
and query counts that do not grow with the number of rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from chat.models import Conversation, Message
from tests.html import Elements
from tests.transcripts import Branched, ask, branched, reply
from tests.xss_corpus import ALL_TEXTS

pytestmark = pytest.mark.django_db

REVIEWERS = "Transcript reviewers"
CONVERSATIONS = "/admin/chat/conversation/"
MESSAGES = "/admin/chat/message/"
Y2K = "2000-01-01%2000:00:00%2B00:00"  # as the admin's date filters write it, URL-encoded


def change_url(obj: Conversation | Message) -> str:
    return f"/admin/chat/{obj._meta.model_name}/{obj.pk}/change/"


def delete_url(obj: Conversation | Message) -> str:
    return f"/admin/chat/{obj._meta.model_name}/{obj.pk}/delete/"


@pytest.fixture
def superuser(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def reviewer(django_user_model: Any) -> Any:
    """Staff, and in the group the migration created; no permission of their own."""
    reviewer = django_user_model.objects.create_user("rita", is_staff=True)
    reviewer.groups.add(Group.objects.get(name=REVIEWERS))
    return reviewer


@pytest.fixture
def as_user(client: Client) -> Callable[[Any], Client]:
    def sign_in(user: Any) -> Client:
        client.force_login(user)
        return client

    return sign_in


@pytest.fixture
def trip(user: Any) -> Branched:
    return branched(user)


# --- Who may do what -----------------------------------------------------------------


def test_the_reviewers_group_may_view_chat_records_and_nothing_else() -> None:
    group = Group.objects.get(name=REVIEWERS)

    codenames = set(group.permissions.values_list("content_type__app_label", "codename"))

    assert codenames == {
        ("chat", "view_conversation"),
        ("chat", "view_message"),
        ("chat", "view_usersettings"),
    }


def test_a_reviewer_reads_every_users_transcripts(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    theirs = branched(other_user, title="Bob's recipes")
    client = as_user(reviewer)

    listing = client.get(CONVERSATIONS)
    page = client.get(change_url(trip.conversation))
    message_page = client.get(change_url(trip.failed))

    assert listing.status_code == 200
    assert {row.pk for row in listing.context["cl"].result_list} == {
        trip.conversation.pk,
        theirs.conversation.pk,
    }
    assert page.status_code == 200
    for message in trip.everything:
        assert f'data-message-id="{message.id}"' in page.content.decode()
    assert message_page.status_code == 200
    assert "The model provider failed." in message_page.content.decode()


def test_a_reviewer_changes_nothing(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched
) -> None:
    client = as_user(reviewer)
    conversation, message = trip.conversation, trip.regenerated

    page = client.get(change_url(conversation)).content.decode()
    listing = client.get(CONVERSATIONS).content.decode()

    # No button or link that would change or delete, only the way back.
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert delete_url(conversation) not in page
    assert 'value="delete_selected"' not in listing
    assert "/add/" not in listing
    # And asking anyway is refused.
    assert client.post(change_url(conversation), {"title": "Mine now"}).status_code == 403
    assert client.post(delete_url(conversation), {"post": "yes"}).status_code == 403
    assert client.get(delete_url(conversation)).status_code == 403
    assert client.post(f"{CONVERSATIONS}add/", {"title": "New"}).status_code == 403
    assert client.post(change_url(message), {"content": "Rewritten"}).status_code == 403
    assert client.post(delete_url(message), {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [conversation.pk], "post": "yes"}
    client.post(CONVERSATIONS, bulk)

    conversation.refresh_from_db()
    message.refresh_from_db()
    assert conversation.title == "Trip plans"
    assert message.content == "Start at the *Colosseum*."
    assert Message.objects.filter(conversation=conversation).count() == 5


def test_even_a_superuser_cannot_edit_a_transcript_but_may_delete_it(
    as_user: Callable[[Any], Client], superuser: Any, trip: Branched
) -> None:
    client = as_user(superuser)

    assert client.post(change_url(trip.conversation), {"title": "Edited"}).status_code == 403
    assert client.post(change_url(trip.answer), {"content": "Edited"}).status_code == 403
    assert client.post(delete_url(trip.answer), {"post": "yes"}).status_code == 403
    response = client.post(delete_url(trip.conversation), {"post": "yes"})

    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=trip.conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=trip.conversation.pk).exists()


@pytest.mark.parametrize("path", ["/admin/", CONVERSATIONS, MESSAGES, "/admin/usage/"])
def test_a_user_who_is_not_staff_sees_no_admin(
    as_user: Callable[[Any], Client], user: Any, trip: Branched, path: str
) -> None:
    client = as_user(user)

    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={path}"
    assert "Trip plans" not in client.get(response["Location"]).content.decode()


@pytest.mark.parametrize("path", ["/admin/", CONVERSATIONS, "/admin/usage/"])
def test_anonymous_visitors_are_sent_to_a_login_page(client: Client, path: str) -> None:
    response = client.get(path)

    # Django sends visitors of a model's pages to the site's login, the others to the
    # admin's; either brings them back to `path` once signed in.
    assert response.status_code == 302
    assert response["Location"] in {
        f"/admin/login/?next={path}",
        f"/accounts/login/?next={path}",
    }


def test_staff_without_permissions_see_no_transcripts(
    as_user: Callable[[Any], Client], django_user_model: Any, trip: Branched
) -> None:
    client = as_user(django_user_model.objects.create_user("stan", is_staff=True))

    assert client.get(CONVERSATIONS).status_code == 403
    assert client.get(change_url(trip.conversation)).status_code == 403
    assert client.get("/admin/usage/").status_code == 403


def test_the_index_links_to_the_usage_page(as_user: Callable[[Any], Client], reviewer: Any) -> None:
    page = Elements(as_user(reviewer).get("/admin/").content.decode())

    assert "/admin/usage/" in {attrs.get("href") for attrs in page.named("a")}


# --- The transcript ------------------------------------------------------------------


def test_the_transcript_shows_every_branch_and_marks_the_current_one(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched
) -> None:
    page = Elements(as_user(reviewer).get(change_url(trip.conversation)).content.decode())

    articles = [attrs for attrs in page.named("article") if "data-message-id" in attrs]
    shown = [attrs["data-message-id"] for attrs in articles]
    current = [a["data-message-id"] for a in articles if "is-current" in (a.get("class") or "")]
    # Depth first, oldest version first: the first version's whole thread, then the second's.
    assert shown == [str(message.id) for message in trip.everything]
    assert current == [str(message.id) for message in trip.current_branch]
    badges = [attrs for attrs in page.named("span") if attrs.get("class") == "chat-admin-badge"]
    assert len(badges) == 2
    assert page.text.count("Version 1 of 2") == 2
    assert page.text.count("Version 2 of 2 · current branch") == 2
    # Model text is rendered Markdown, inside elements where htmx does nothing.
    contents = [a for a in page.named("div") if "chat-admin-content" in (a.get("class") or "")]
    assert len(contents) == 5
    assert all("hx-disable" in attrs for attrs in contents)
    assert "Colosseum" in page.text and ("em", {}) in page.tags
    assert "upstream" in page.text and "The model provider failed." in page.text
    assert "30.0 tokens/s" in page.text and "first token 200 ms" in page.text


def test_a_message_page_shows_status_model_error_tokens_and_speed(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched
) -> None:
    listing = as_user(reviewer).get(f"{MESSAGES}?status=error")
    page = Elements(as_user(reviewer).get(change_url(trip.failed)).content.decode())

    assert [row.pk for row in listing.context["cl"].result_list] == [trip.failed.pk]
    row = Elements(listing.content.decode()).text
    assert "upstream" in row
    assert "12 / 2" in row  # tokens in and out
    assert "2.0" in row  # 2 tokens in the second after the first
    for text in ("Error", "demo:demo", "upstream", "12", "200", "1200", "2.0", "Rome is"):
        assert text in page.text


# --- Filters and search --------------------------------------------------------------


def listed(client: Client, url: str) -> set[Any]:
    response = client.get(url)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_conversations_filter_by_user_model_status_error_and_date(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    calm = Conversation.objects.create(user=other_user, title="Calm", model="test:other")
    reply(calm, ask(calm, None, "Hi"), "Hello", status="stopped")
    client = as_user(reviewer)
    mine, theirs = trip.conversation.pk, calm.pk

    assert listed(client, f"{CONVERSATIONS}?user__id__exact={other_user.pk}") == {theirs}
    assert listed(client, f"{CONVERSATIONS}?model=test:other") == {theirs}
    assert listed(client, f"{CONVERSATIONS}?has_error=yes") == {mine}
    assert listed(client, f"{CONVERSATIONS}?has_error=no") == {theirs}
    assert listed(client, f"{CONVERSATIONS}?answer_status=stopped") == {theirs}
    assert listed(client, f"{CONVERSATIONS}?updated_at__gte={Y2K}") == {mine, theirs}
    assert listed(client, f"{CONVERSATIONS}?updated_at__lt={Y2K}") == set()


def test_messages_filter_by_user_model_status_error_and_date(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    calm = Conversation.objects.create(user=other_user, title="Calm", model="test:other")
    hello = reply(calm, ask(calm, None, "Hi"), "Hello", status="stopped")
    client = as_user(reviewer)

    theirs = listed(client, f"{MESSAGES}?conversation__user__id__exact={other_user.pk}")
    assert theirs == set(calm.messages.values_list("pk", flat=True))
    assert listed(client, f"{MESSAGES}?model=test:other") == {hello.pk}
    assert listed(client, f"{MESSAGES}?status=stopped") == {hello.pk}
    assert listed(client, f"{MESSAGES}?has_error=yes") == {trip.failed.pk}
    assert listed(client, f"{MESSAGES}?created_at__lt={Y2K}") == set()


def test_search_finds_titles_and_message_text_without_miscounting(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    porto = branched(other_user, title="Weekend in Porto")
    client = as_user(reviewer)

    # Two messages of each conversation say "trip": each is listed once, counted right.
    by_text = client.get(f"{CONVERSATIONS}?q=trip").context["cl"].result_list
    assert {row.pk for row in by_text} == {trip.conversation.pk, porto.conversation.pk}
    assert [row.message_total for row in by_text] == [5, 5]
    assert [row.token_total for row in by_text] == [98, 98]
    assert [row.error_total for row in by_text] == [1, 1]
    assert listed(client, f"{CONVERSATIONS}?q=Porto") == {porto.conversation.pk}
    assert listed(client, f"{CONVERSATIONS}?q=bob") == {porto.conversation.pk}
    assert listed(client, f"{MESSAGES}?q=Colosseum") == {
        trip.regenerated.pk,
        porto.regenerated.pk,
    }
    assert listed(client, f"{MESSAGES}?q=Porto") == set(
        porto.conversation.messages.values_list("pk", flat=True)
    )


# --- Export --------------------------------------------------------------------------


def export(client: Client, action: str, conversations: list[Conversation]) -> Any:
    return client.post(
        CONVERSATIONS,
        {"action": action, "index": 0, "_selected_action": [c.pk for c in conversations]},
    )


def test_a_reviewer_exports_selected_conversations_as_json(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    other = branched(other_user, title="Recipes")
    branched(other_user, title="Not selected")

    response = export(as_user(reviewer), "export_json", [trip.conversation, other.conversation])

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    document = json.loads(response.content)
    exported = {item["title"]: item for item in document["conversations"]}
    assert set(exported) == {"Trip plans", "Recipes"}
    trip_json = exported["Trip plans"]
    assert trip_json["user"] == "alice"
    assert [m["id"] for m in trip_json["messages"]] == [str(m.id) for m in trip.everything]
    parents = {m["id"]: m["parent_id"] for m in trip_json["messages"]}
    assert parents[str(trip.failed.id)] == str(trip.edited.id)
    assert parents[str(trip.edited.id)] is None
    assert trip_json["current_branch"] == [str(m.id) for m in trip.current_branch]


def test_a_reviewer_exports_selected_conversations_as_markdown(
    as_user: Callable[[Any], Client], reviewer: Any, trip: Branched, other_user: Any
) -> None:
    other = branched(other_user, title="Recipes")

    response = export(as_user(reviewer), "export_markdown", [trip.conversation, other.conversation])

    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    assert "# Trip plans\n" in text and "# Recipes\n" in text
    assert text.count("Plan a trip to Rome") == 2  # the current branch of each
    assert "Lisbon" not in text  # the other branch is in the JSON export only


def test_exporting_many_conversations_takes_a_fixed_number_of_queries(
    as_user: Callable[[Any], Client],
    superuser: Any,
    user: Any,
    django_assert_num_queries: Any,
) -> None:
    few = [branched(user).conversation for _ in range(2)]
    many = [branched(user).conversation for _ in range(6)]
    client = as_user(superuser)
    export(client, "export_json", few)

    # The changelist's own work (session, user, filters, counts), then the conversations
    # with their users and, in one more query, all their messages.
    with django_assert_num_queries(10):
        response = export(client, "export_json", many)
    assert len(json.loads(response.content)["conversations"]) == 6


# --- Query counts --------------------------------------------------------------------


def conversations_of(users: list[Any], count: int) -> list[Branched]:
    return [branched(users[i % len(users)], title=f"Chat {i}") for i in range(count)]


def test_the_conversation_list_takes_the_same_queries_for_many_rows(
    as_user: Callable[[Any], Client],
    reviewer: Any,
    user: Any,
    other_user: Any,
    django_assert_num_queries: Any,
) -> None:
    conversations_of([user, other_user], 2)
    client = as_user(reviewer)
    client.get(CONVERSATIONS)
    conversations_of([user, other_user], 10)

    # Session, user, the reviewer's two permission lookups, the user and model filters,
    # the two counts, the page.
    with django_assert_num_queries(9):
        response = client.get(CONVERSATIONS)
    assert len(response.context["cl"].result_list) == 12


def test_the_message_list_takes_the_same_queries_for_many_rows(
    as_user: Callable[[Any], Client],
    reviewer: Any,
    user: Any,
    other_user: Any,
    django_assert_num_queries: Any,
) -> None:
    conversations_of([user, other_user], 2)
    client = as_user(reviewer)
    client.get(MESSAGES)
    conversations_of([user, other_user], 10)

    with django_assert_num_queries(9):
        response = client.get(MESSAGES)
    assert len(response.context["cl"].result_list) == 60


def test_the_transcript_page_takes_the_same_queries_for_many_messages(
    as_user: Callable[[Any], Client],
    reviewer: Any,
    user: Any,
    django_assert_num_queries: Any,
) -> None:
    small = branched(user)
    big = branched(user)
    parent = big.regenerated
    for turn in range(20):
        parent = reply(big.conversation, ask(big.conversation, parent, f"More {turn}"), "Sure")
    big.conversation.current_leaf = parent
    big.conversation.save()
    client = as_user(reviewer)
    client.get(change_url(small.conversation))

    # Session, user, the two permission lookups, the conversation, its messages.
    with django_assert_num_queries(6):
        response = client.get(change_url(big.conversation))
    assert response.content.decode().count("data-message-id=") == 45


def test_a_message_page_takes_a_fixed_number_of_queries(
    as_user: Callable[[Any], Client],
    reviewer: Any,
    trip: Branched,
    django_assert_num_queries: Any,
) -> None:
    client = as_user(reviewer)
    client.get(change_url(trip.answer))

    # Session, user, the two permission lookups, the message with its conversation,
    # user and parent.
    with django_assert_num_queries(5):
        assert client.get(change_url(trip.failed)).status_code == 200


# --- Hostile text --------------------------------------------------------------------

DANGEROUS_SCHEMES = ("javascript:", "vbscript:", "data:")
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "srcdoc", "xlink:href"}


def assert_inert(html: str) -> None:
    """Nothing in the page can run a script, fetch a resource or drive htmx on its own."""
    page = Elements(html)
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, attrs)
            if name.startswith(("hx-", "data-hx-")):
                # The one htmx attribute allowed is the one that switches htmx off.
                assert name == "hx-disable", (tag, attrs)
            if name in URL_ATTRIBUTES:
                url = "".join((value or "").split()).lower()
                assert not url.startswith(DANGEROUS_SCHEMES), (tag, attrs)
                assert "xss-fired" not in url or tag == "a", (tag, attrs)
        if tag in {"script", "img", "link"}:
            # The admin's own files only: no inline script, no remote or made-up resource.
            source = attrs.get("src") or attrs.get("href") or ""
            assert source.startswith(("/static/", "/admin/jsi18n/")), (tag, attrs)
        assert tag not in {"iframe", "object", "embed", "style", "math", "frame"}, tag
        if tag == "svg":  # the admin's icon sprite and theme icons, nothing else
            assert (attrs.get("class") or "").startswith(("base-svgs", "theme-icon-")), attrs
        if tag == "meta":
            assert "http-equiv" not in attrs, attrs
        if tag == "form":
            assert (attrs.get("action") or "").startswith(("", "/admin/")), attrs


def test_hostile_text_renders_inert_on_every_admin_page(
    as_user: Callable[[Any], Client], superuser: Any, user: Any
) -> None:
    """Each payload as a title, a question, an answer and an error message, everywhere."""
    pages = [CONVERSATIONS, MESSAGES, f"{MESSAGES}?q=script", "/admin/usage/"]
    for text in ALL_TEXTS:
        conversation = Conversation.objects.create(user=user, title=text[:200], model="demo:demo")
        asked = ask(conversation, None, text)
        answered = reply(
            conversation, asked, text, status="error", error_code="upstream", error_message=text
        )
        conversation.current_leaf = answered
        conversation.save()
        pages += [change_url(conversation), change_url(asked), change_url(answered)]
    client = as_user(superuser)

    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        try:
            assert_inert(response.content.decode())
        except AssertionError as error:
            raise AssertionError(f"{path}: {error}") from error
    # The lists really showed the hostile rows.
    assert len(client.get(MESSAGES).context["cl"].result_list) == 2 * len(ALL_TEXTS)
