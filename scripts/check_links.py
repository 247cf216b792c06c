#!/usr/bin/env python3
"""Checks the links of weir's built book (and of Markdown files such as README.md).

    scripts/check_links.py BOOK_DIR [--markdown FILE ...]

BOOK_DIR is mdBook's HTML output. Every relative `href`/`src` of every page must name a file
of the book, and every `#anchor` an `id` (or `name`) in the page it points to. For each
Markdown FILE, every relative link must name a file or folder of the repository, and an
`#anchor` into a Markdown file must match one of its headings (GitHub's and mdBook's ids).
External links (http, https, mailto...) are not fetched (the build machines have no internet):
they are listed at the end. Exits 1 when a link is broken. Standard library only.
"""

import argparse
import html.parser
import os
import re
import sys
import urllib.parse

EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, data:, ...


class Page(html.parser.HTMLParser):
    """The ids and the links of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []  # (line, attribute value)
        self.base = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        if tag == "base" and a.get("href") is not None:
            self.base = a["href"]
        for key in ("href", "src"):
            if a.get(key) is not None and tag in ("a", "link", "script", "img", "iframe", "source"):
                self.links.append((self.getpos()[0], a[key]))

    handle_startendtag = handle_starttag


def parse(path):
    p = Page()
    with open(path, encoding="utf-8", errors="replace") as f:
        p.feed(f.read())
    return p


def check_book(root):
    root = os.path.abspath(root)
    pages = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".html"):
                path = os.path.join(d, f)
                pages[path] = parse(path)
    if not pages:
        return [f"{root}: no HTML pages (was the book built?)"], set()
    broken, external = [], set()
    for path, page in sorted(pages.items()):
        rel = os.path.relpath(path, root)
        if page.base is not None and page.base.startswith("/"):
            # mdBook's 404 page: links are relative to the site's root
            base_dir = os.path.join(root, page.base.lstrip("/"))
        else:
            base_dir = os.path.dirname(path)
        for line, link in page.links:
            if not link or link.startswith("javascript:"):
                continue
            if EXTERNAL.match(link) or link.startswith("//"):
                external.add(link)
                continue
            url = urllib.parse.urlsplit(link)
            target_path = urllib.parse.unquote(url.path)
            if target_path == "":
                target = path
            elif target_path.startswith("/"):
                target = os.path.join(root, target_path.lstrip("/"))
            else:
                target = os.path.normpath(os.path.join(base_dir, target_path))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            if not target.startswith(root + os.sep) and target != root:
                broken.append(f"{rel}:{line}: `{link}` points outside the book")
                continue
            if not os.path.exists(target):
                broken.append(f"{rel}:{line}: `{link}`: no file {os.path.relpath(target, root)}")
                continue
            if url.fragment:
                fragment = urllib.parse.unquote(url.fragment)
                target_page = pages.get(target)
                if target_page is None:
                    broken.append(f"{rel}:{line}: `{link}`: #{fragment} into a file that is not HTML")
                elif fragment not in target_page.ids:
                    broken.append(
                        f"{rel}:{line}: `{link}`: no id `{fragment}` in {os.path.relpath(target, root)}"
                    )
    return broken, external


def slug(heading):
    """The id GitHub and mdBook give a heading: lowercase, punctuation dropped, spaces to `-`."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = text.strip().lower()
    out = []
    for ch in text:
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def markdown_anchors(path):
    ids, seen = set(), {}
    fence = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            m = None if fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if m:
                s = slug(m.group(2))
                n = seen.get(s, 0)
                seen[s] = n + 1
                ids.add(s if n == 0 else f"{s}-{n}")
    return ids


LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\[[^\]]+\]:\s*(\S+)", re.M)


def check_markdown(files):
    broken, external = [], set()
    for md in files:
        md_dir = os.path.dirname(os.path.abspath(md))
        with open(md, encoding="utf-8") as f:
            text = f.read()
        # links inside code spans and fences are not links
        scrubbed = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        scrubbed = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), scrubbed)
        for m in LINK.finditer(scrubbed):
            link = m.group(1) or m.group(2)
            line = scrubbed.count("\n", 0, m.start()) + 1
            if EXTERNAL.match(link) or link.startswith("//"):
                external.add(link)
                continue
            url = urllib.parse.urlsplit(link)
            target = os.path.normpath(os.path.join(md_dir, urllib.parse.unquote(url.path))) if url.path else os.path.abspath(md)
            if not os.path.exists(target):
                broken.append(f"{md}:{line}: `{link}`: no such file")
                continue
            if url.fragment and target.endswith(".md"):
                if urllib.parse.unquote(url.fragment) not in markdown_anchors(target):
                    broken.append(f"{md}:{line}: `{link}`: no heading with id `{url.fragment}`")
    return broken, external


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("book", help="mdBook's HTML output folder")
    ap.add_argument("--markdown", nargs="*", default=[], help="Markdown files to check as well")
    args = ap.parse_args()
    broken, external = check_book(args.book)
    b2, e2 = check_markdown(args.markdown)
    broken += b2
    external |= e2
    if external:
        print(f"{len(external)} external link(s), not fetched:")
        for link in sorted(external):
            print(f"  {link}")
    if broken:
        print(f"{len(broken)} broken link(s):", file=sys.stderr)
        for b in broken:
            print(f"  {b}", file=sys.stderr)
        return 1
    print("links: every relative link and anchor resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
