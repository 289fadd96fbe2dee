"""mkdocs hook: the site's Overview page (``index.md``) is the repository's README.md.

``docs/index.md`` is only a stub; this hook replaces its text with README.md's, its links
rewritten for the site: ``docs/X.md`` (with or without ``#anchor``) becomes ``X.md``, a URL or a
same-page anchor stays, and any other repository-relative link (``configs/...``, ``LICENSE``)
becomes a link into the repository when mkdocs.yml sets ``repo_url``, plain code text otherwise.
Code blocks and code spans are left as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\(\s*<?(?P<target>[^)\s>]+)>?(?P<title>\s+\"[^\"]*\")?\s*\)")
TOKEN = re.compile(rf"(?P<link>{LINK.pattern})|(?P<code>(?P<ticks>`+).+?(?P=ticks))", re.S)
"""A link or a code span, whichever starts first."""
URL_OR_ANCHOR = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:|#")


def _readme(config) -> Path:
    return Path(config.config_file_path).resolve().parent / "README.md"


def rewrite_link(match: re.Match, repo_url: str | None) -> str:
    """One markdown link of README.md as the docs site needs it."""
    target = match["target"]
    if URL_OR_ANCHOR.match(target):
        return match.group(0)
    path, sep, anchor = target.partition("#")
    if path.startswith("docs/"):
        new = path[len("docs/") :] + sep + anchor
        return f"{match['bang']}[{match['text']}]({new}{match['title'] or ''})"
    if repo_url:
        new = f"{repo_url.rstrip('/')}/blob/HEAD/{path}" + sep + anchor
        return f"{match['bang']}[{match['text']}]({new}{match['title'] or ''})"
    text = match["text"].strip()
    if text.strip("`") == path:
        return f"`{path}`"
    return f"{text} (`{path}`)"


def rewrite(markdown: str, repo_url: str | None) -> str:
    """README.md's text with its links rewritten; code blocks and code spans untouched (a link
    whose text is a code span, ``[`docs/`](docs/index.md)``, is a link)."""

    def one(match: re.Match) -> str:
        if match["link"] is None:
            return match.group(0)
        return rewrite_link(LINK.fullmatch(match.group(0)), repo_url)

    out, last = [], 0
    for fence in FENCE.finditer(markdown):
        out.append(TOKEN.sub(one, markdown[last : fence.start()]))
        out.append(fence.group(0))
        last = fence.end()
    out.append(TOKEN.sub(one, markdown[last:]))
    return "".join(out)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    return rewrite(_readme(config).read_text(encoding="utf-8"), config.get("repo_url"))


def on_serve(server, config, builder):
    server.watch(str(_readme(config)))
    return server
