"""Model cards are written by whoever published the model: Markdown rendered safely, or not at all.

The card goes through a well-kept CommonMark parser with raw HTML switched off (markdown-it-py),
then through a safelist sanitizer (nh3, on Rust's ammonia): only the tags Markdown itself
produces survive, links keep only http/https/mailto or relative targets, and no `style` or `on*`
attribute exists at all. Relative links and images point into the repo at the shown commit
(`/{repo}/resolve/{commit}/{path}`), as they would on the Hub. The YAML front matter is not
rendered as Markdown: its simple top-level fields are returned as plain strings, which the page
escapes like every other value.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import nh3
from markdown_it import MarkdownIt

CARD_BYTES = 256 * 1024  # a card longer than this is shown cut (and says so); real cards are a few KB
MAX_FIELD = 200  # characters of one front-matter value shown; a card can hold anything there
MAX_ITEMS = 20  # items of one front-matter list shown

# The tags CommonMark plus tables and strikethrough produce; nothing else can appear.
TAGS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "code", "pre", "blockquote", "ul", "ol",
    "li", "a", "img", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "s",
})
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)(?:\r?\n)---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_KEY = re.compile(r"([A-Za-z_][\w-]*)[ \t]*:[ \t]*(.*)")
_ITEM = re.compile(r"[ \t]+-[ \t]+(.*)|-[ \t]+(.*)")

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"])


@dataclass(frozen=True)
class Card:
    html: str  # sanitised HTML, safe to place inside the page as is
    fields: tuple[tuple[str, str], ...]  # front-matter (key, value) pairs, plain text: escape them
    truncated: bool  # the card was longer than what was read


def split_front_matter(text: str) -> tuple[str, str]:
    """(front matter, body). No front matter: ("", text)."""
    m = _FRONT.match(text)
    if not m:
        return "", text
    return m.group(1), text[m.end():]


def _scalar(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def front_matter_fields(front: str) -> tuple[tuple[str, str], ...]:
    """The top-level `key: value`, `key: [a, b]` and `key:` + `- item` lines, as strings.
    Deliberately not a YAML parser: no aliases, tags or nesting to expand, and a card's
    display does not need them (nested values are left out)."""
    out: list[tuple[str, str]] = []
    key: str | None = None
    items: list[str] = []

    def flush() -> None:
        if key is not None and items:
            out.append((key, _cut(", ".join(items[:MAX_ITEMS]) + (", ..." if len(items) > MAX_ITEMS else ""))))

    for line in front.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = _ITEM.fullmatch(line)
        if item and key is not None:
            items.append(_scalar(item.group(1) or item.group(2) or ""))
            continue
        m = _KEY.fullmatch(line)
        if m:  # a new top-level key
            flush()
            key, value = m.group(1), m.group(2).strip()
            items = []
            if value.startswith("[") and value.endswith("]"):
                items = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
            elif value and not value.startswith(("{", "|", ">", "&", "*", "!")):
                items = [_scalar(value)]
            continue
        if not line[:1].isspace():  # anything else at the top level ends the current key
            flush()
            key, items = None, []
    flush()
    return tuple(out)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 1] + "…"


def _relative_target(value: str, base: str) -> str | None:
    """`value` rewritten under `base` (the repo's resolve URL at a commit) when it is a relative
    path inside the repo; None when it would leave the repo (`../..`)."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or value.startswith(("/", "#", "?")):
        return value
    path = posixpath.normpath(unquote(parts.path)) if parts.path else ""
    if not path or path == "." or path.startswith(".."):
        return None
    return base + quote(path) + (f"#{parts.fragment}" if parts.fragment else "")


def render(raw: bytes, *, resolve_base: str, truncated: bool = False) -> Card:
    """The sanitised card. `resolve_base` is the URL prefix relative links and images are
    resolved against, e.g. "/org/name/resolve/<commit>/"."""
    text = raw.decode("utf-8", "replace").replace("\x00", "\ufffd")
    front, body = split_front_matter(text)

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if (tag, attr) in (("a", "href"), ("img", "src")):
            return _relative_target(value, resolve_base)
        return value

    html = nh3.clean(
        _md.render(body),
        tags=set(TAGS),
        attributes={k: set(v) for k, v in ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        attribute_filter=attribute_filter,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return Card(html=html, fields=front_matter_fields(front), truncated=truncated)
