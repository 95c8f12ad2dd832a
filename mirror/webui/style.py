"""The pages' one stylesheet, served as /-/static/style.css (the CSP allows no inline style).

Kept as a Python string so it ships with the package whatever the packaging's data-file rules.
Long words (sha256 digests, hostile 100,000-character card lines) wrap or scroll inside their box,
never widen the page.
"""

from __future__ import annotations

import hashlib

CSS = """
:root { --fg: #1b1f24; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa;
        --accent: #0b57d0; --warn-bg: #fff4ce; --warn: #7a4d00; --bad-bg: #ffebe9; --bad: #a40e26;
        --ok: #116329; --ok-bg: #dafbe1; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); overflow-wrap: anywhere; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
header.top { display: flex; align-items: baseline; gap: 16px; padding: 10px 24px; border-bottom: 1px solid var(--line);
             background: var(--soft); }
header.top .brand { font-weight: 700; font-size: 17px; color: var(--fg); }
header.top .where { color: var(--muted); }
main { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; }
footer { max-width: 1280px; margin: 0 auto; padding: 12px 24px; color: var(--muted); font-size: 13px;
         border-top: 1px solid var(--line); }
h1 { font-size: 24px; margin: 8px 0 4px; word-break: break-all; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.muted { color: var(--muted); }
.nowrap { white-space: nowrap; }
.small { font-size: 13px; }
table { border-collapse: collapse; width: 100%; table-layout: auto; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
th a { color: var(--fg); }
td.num, th.num { text-align: right; white-space: nowrap; }
td.digest { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-all; }
tr:hover td { background: #fbfcfd; }
.tag { display: inline-block; padding: 0 7px; margin: 1px 2px; border-radius: 10px; font-size: 12px; line-height: 18px;
       border: 1px solid var(--line); background: var(--soft); color: var(--muted); white-space: nowrap; }
.tag.dataset { background: #eef4ff; color: #0a3069; border-color: #b6cff5; }
.tag.demo, .tag.warn { background: var(--warn-bg); color: var(--warn); border-color: #e8c36a; }
.tag.bad { background: var(--bad-bg); color: var(--bad); border-color: #f5b3ba; }
.tag.ok { background: var(--ok-bg); color: var(--ok); border-color: #9fdfb0; }
.tag.local { background: #f3f0ff; color: #5a32a3; border-color: #d0c4f5; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.banner.demo { background: var(--warn-bg); color: var(--warn); border: 1px solid #e8c36a; }
.banner.bad { background: var(--bad-bg); color: var(--bad); border: 1px solid #f5b3ba; }
form.filter { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 8px 0 12px; }
form.filter input[type=search] { flex: 1 1 320px; max-width: 520px; padding: 6px 10px; font-size: 15px;
                                  border: 1px solid var(--line); border-radius: 6px; }
select, button, input[type=password] { padding: 6px 10px; font-size: 14px; border: 1px solid var(--line); border-radius: 6px;
                                       background: var(--bg); }
button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 4px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; min-width: 0; word-break: break-all; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; white-space: pre; max-width: 100%; }
pre.snippet { white-space: pre-wrap; word-break: break-all; }
ul.downloads { padding-left: 20px; }
article.card { border: 1px solid var(--line); border-radius: 6px; padding: 4px 20px 12px; min-width: 0;
               overflow-x: auto; }
article.card img { max-width: 100%; }
article.card table { width: auto; max-width: 100%; display: block; overflow-x: auto; }
article.card p, article.card li { overflow-wrap: anywhere; word-break: break-word; }
.columns { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 24px; }
@media (max-width: 900px) { .columns { grid-template-columns: minmax(0, 1fr); } }
.login { max-width: 460px; margin: 48px auto; }
.login input[type=password] { width: 100%; margin: 8px 0; }
.error { color: var(--bad); font-weight: 600; }
.flags li { margin: 2px 0; }
"""

VERSION = hashlib.sha256(CSS.encode()).hexdigest()[:12]  # the stylesheet's URL changes with it: cacheable for a year
PATH = f"/-/static/style.{VERSION}.css"
