"""Hostile text that model output (or a user) might contain.

One list, used by the renderer's tests, the browser tests and the admin tests: each entry
must render as inert text or harmless markup wherever the product shows it. A payload
"fires" by opening a dialog (`alert`, `confirm`, `prompt`) or by requesting a URL under
`/xss-fired/`, which the browser tests watch for.
"""

from __future__ import annotations

# Each payload, if it ever ran, would call alert() or fetch /xss-fired/<n>.
PAYLOADS: tuple[str, ...] = (
    "<script>alert(1)</script>",
    "<script src='/xss-fired/1'></script>",
    "<img src=x onerror=alert(2)>",
    "<img src='/xss-fired/2'>",
    "<svg onload=alert(3)></svg>",
    "<svg><script>alert(4)</script></svg>",
    "<iframe src='javascript:alert(5)'></iframe>",
    "<iframe srcdoc='<script>alert(6)</script>'></iframe>",
    '<a href="javascript:alert(7)">click me</a>',
    "[click me](javascript:alert(8))",
    "[click me](JaVaScRiPt:alert(9))",
    "[click me](java\tscript:alert(10))",
    "[click me](data:text/html;base64,PHNjcmlwdD5hbGVydCgxMSk8L3NjcmlwdD4=)",
    "<javascript:alert(12)>",
    "[ref]\n\n[ref]: javascript:alert(13)",
    "![x](javascript:alert(14))",
    "![x](/xss-fired/15)",
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMTYpPjwvc3ZnPg==)",
    '<div hx-get="/xss-fired/17" hx-trigger="load">x</div>',
    '<span data-hx-get="/xss-fired/18" data-hx-trigger="load">x</span>',
    '<form action="/xss-fired/19"><button>go</button></form>',
    '<object data="/xss-fired/20"></object>',
    '<embed src="/xss-fired/21">',
    '<link rel="stylesheet" href="/xss-fired/22">',
    "<style>@import '/xss-fired/23';</style>",
    '<meta http-equiv="refresh" content="0;url=/xss-fired/24">',
    "<details open ontoggle=alert(25)>",
    '<math><mtext><table><mglyph><style><img src=x onerror="alert(26)">',
    "`<img src=x onerror=alert(27)>`",
    "```html\n<script>alert(28)</script>\n```",
    "| a | <img src=x onerror=alert(29)> |\n|---|---|\n| <script>alert(30)</script> | b |",
    '<noscript><p title="</noscript><img src=x onerror=alert(31)>">',
    '"><script>alert(32)</script>',
    "{{ 7*7 }} {% debug %} ${alert(33)}",
)

# A payload cut into pieces the way a provider might stream it: the pieces only become
# dangerous together, so a renderer that works per token would let it through.
SPLIT_PAYLOADS: tuple[tuple[str, ...], ...] = (
    ("<scr", "ipt>al", "ert(40)</sc", "ript>"),
    ("<img src=x on", "error=alert(41)>"),
    ("[click](java", "script:alert(42))"),
    ("<div hx-", 'get="/xss-fired/43" hx-trig', 'ger="load">x</div>'),
)


def joined(pieces: tuple[str, ...]) -> str:
    return "".join(pieces)


ALL_TEXTS: tuple[str, ...] = PAYLOADS + tuple(joined(pieces) for pieces in SPLIT_PAYLOADS)
