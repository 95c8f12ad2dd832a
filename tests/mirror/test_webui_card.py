"""Model cards are hostile input: what survives markdown-it + nh3, and what the front matter yields."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from mirror.webui import card

BASE = "/acme/m/resolve/" + "a" * 40 + "/"


def render(text: str) -> card.Card:
    return card.render(text.encode(), resolve_base=BASE)


class _Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML (text is not markup)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            self.attrs.add(name)
            if name in ("href", "src"):
                self.urls.append(value or "")


def elements(html: str) -> _Elements:
    p = _Elements()
    p.feed(html)
    p.close()
    return p


HOSTILE = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror=\"window.pwned=1\">",
    "<svg onload=alert(1)></svg>",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<style>body { display: none }</style>",
    "<div style=\"position:fixed;top:0;left:0;width:100%;height:100%\">overlay</div>",
    "<a href=\"javascript:alert(1)\">raw html link</a>",
    "[md link](javascript:alert(1))",
    "[md link upper](JaVaScRiPt:alert(1))",
    "[entity](&#106;avascript:alert(1))",
    "[vb](vbscript:msgbox(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![img](javascript:alert(1))",
    "<form action=\"https://evil.example\"><input name=q></form>",
    "<object data=x></object><embed src=x>",
    "<meta http-equiv=refresh content=\"0;url=https://evil.example\">",
    "<base href=\"https://evil.example/\">",
    "<link rel=stylesheet href=\"https://evil.example/x.css\">",
]


@pytest.mark.parametrize("attack", HOSTILE)
def test_no_hostile_card_yields_script_handlers_styles_or_dangerous_urls(attack):
    html = render(f"# Card\n\n{attack}\n\ntext after\n").html
    found = elements(html)
    assert found.tags <= card.TAGS, found.tags - card.TAGS
    assert found.attrs <= {"href", "title", "src", "alt", "start", "rel"}, found.attrs
    for url in found.urls:
        assert url.startswith(("https://", "http://", "mailto:", "/")), url
    assert "text after" in html  # the rest of the card still renders


def test_raw_html_is_shown_as_text_not_dropped():
    html = render("<script>window.pwned=1</script>\n").html
    assert "<script" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html


def test_markdown_renders_headings_tables_code_and_safe_links():
    html = render(
        "# Title\n\n| a | b |\n|--:|---|\n| 1 | 2 |\n\n```python\nprint('<b>')\n```\n\n"
        "[site](https://example.org) [mail](mailto:a@b.c) ~~old~~\n"
    ).html
    assert "<h1>Title</h1>" in html
    assert "<td>1</td>" in html and "style" not in html  # markdown-it's alignment style is stripped
    assert "print('&lt;b&gt;')" in html
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">site</a>' in html
    assert 'href="mailto:a@b.c"' in html
    assert "<s>old</s>" in html


def test_relative_links_and_images_point_into_the_repo_at_the_commit():
    html = render("[cfg](config.json) ![plot](img/loss%20curve.png) [sec](#usage) [out](../../etc/passwd) [abs](/other/repo)\n").html
    assert f'href="{BASE}config.json"' in html
    assert f'src="{BASE}img/loss%20curve.png"' in html
    assert 'href="#usage"' in html
    assert 'href="/other/repo"' in html
    assert "etc/passwd" not in html  # a link leaving the repo loses its target


def test_front_matter_is_stripped_and_read_as_plain_fields():
    c = render(
        "---\nlicense: \"<script>alert(1)</script>\"\ntags:\n- random-init\n- demo\nbase_model: [org/base, other/x]\n"
        "nested:\n  deep: value\nanchor: &a x\nalias: *a\n---\n# Body\n"
    )
    fields = dict(c.fields)
    assert fields["license"] == "<script>alert(1)</script>"  # plain text: the page escapes it
    assert fields["tags"] == "random-init, demo"
    assert fields["base_model"] == "org/base, other/x"
    assert "nested" not in fields and "anchor" not in fields and "alias" not in fields
    assert "license" not in c.html and c.html.startswith("<h1>Body</h1>")


def test_very_long_lines_and_binary_garbage_render_bounded():
    long_line = "x" * 200_000
    c = card.render((f"# T\n\n{long_line}\n").encode() + b"\xff\xfe\x00 tail\n", resolve_base=BASE)
    assert long_line in c.html and "tail" in c.html
    assert "\x00" not in c.html
    long_field = render("---\nlicense: " + "y" * 5000 + "\n---\nbody\n")
    assert len(dict(long_field.fields)["license"]) == card.MAX_FIELD
