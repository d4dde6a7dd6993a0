"""A conversation as a file to download: the page's Export links and the API's export."""

from __future__ import annotations

import json

from django.http import HttpResponse
from django.utils.http import content_disposition_header
from django.utils.text import slugify

from chat.export import conversation_export_json, conversation_export_markdown
from chat.models import Conversation

FORMATS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}


def download_name(conversation: Conversation, extension: str) -> str:
    """A file name from the title's slug (`conversation` when the title has none)."""
    slug = slugify(conversation.title, allow_unicode=True)[:80].strip("-_")
    return f"{slug or 'conversation'}.{extension}"


def conversation_download(conversation: Conversation, file_format: str) -> HttpResponse:
    """The conversation as Markdown (`md`: the current branch) or JSON (`json`: every
    branch), as an attachment. Precondition: `file_format` is a key of FORMATS."""
    if file_format == "md":
        body = conversation_export_markdown(conversation)
    else:
        body = json.dumps(conversation_export_json(conversation), ensure_ascii=False, indent=2)
    response = HttpResponse(body.encode(), content_type=FORMATS[file_format])
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=download_name(conversation, file_format)
    )
    # A private conversation: no cache in between may keep a copy.
    response["Cache-Control"] = "private, no-store"
    return response
