#!/usr/bin/env python
"""Check the built docs site in a real headless browser (Chromium through Playwright).

Usage: python scripts/check_site.py [_docs] [--nbs nbs] [--screenshot _docs/index.png] [--chromium PATH]

Loads every page and fails on console errors, page errors, failed requests and any request leaving the machine; checks
that every internal link (to a page of the site or an #anchor) resolves, that every notebook has a page, that the index
lists every notebook in notebook order, that every image loads and that at least one plot image renders, that no output shows a progress bar or a warning
with a machine path; saves a
screenshot of the index page. Uses the system Chromium (Debian's `chromium`): `playwright install` is not needed.
Exits 1 with the list of problems.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hypercompress.docs import notebook_paths, page_name
from hypercompress.site import _PROGRESS, _WARNING

CHROMIUM_CANDIDATES = ["/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]

# What one page reports: its ids, its links, its images and the sidebar's links, in document order.
PAGE_FACTS = """() => ({
  ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(e => e.name)),
  links: [...document.querySelectorAll('a[href]')].map(a => ({raw: a.getAttribute('href'), url: a.href})),
  images: [...document.querySelectorAll('img')].map(i => ({src: i.getAttribute('src').slice(0, 40), complete: i.complete,
                                                           width: i.naturalWidth})),
  sidebar: [...document.querySelectorAll('nav.sidebar li a')].map(a => a.getAttribute('href')),
  title: document.title,
  outputs: [...document.querySelectorAll('.jp-OutputArea-output pre')].map(e => e.textContent),
})"""


def find_chromium(explicit=None):
    "Path of the Chromium to drive: `--chromium`, else the first system one found."
    for candidate in ([explicit] if explicit else CHROMIUM_CANDIDATES):
        path = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if path: return path
    return None


def check_site(site, nbs="nbs", screenshot=None, chromium=None):
    "Problems found in the site at `site` (an empty list when it passes) and a one-line summary."
    from playwright.sync_api import sync_playwright
    site = Path(site).resolve()
    expected = [page_name(p) for p in notebook_paths(nbs)]
    problems = [f"no page for notebook {p.name} (expected {page_name(p)})" for p in notebook_paths(nbs)
                if not (site / page_name(p)).is_file()]
    pages = sorted(p.name for p in site.glob("*.html"))
    if "index.html" not in pages: return problems + ["no index.html"], ""
    executable = find_chromium(chromium)
    if executable is None: return problems + ["no Chromium found (apt-get install chromium, or pass --chromium)"], ""
    facts, n_links = {}, 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        # Pages must work offline: anything that would leave the machine is refused and reported.
        def refuse(route):
            problems.append(f"request leaves the machine (pages must work offline): {route.request.url[:120]}")
            route.abort()
        context.route(lambda url: not url.startswith(("file:", "data:", "about:")), refuse)
        for name in pages:
            page = context.new_page()
            where = f"{name}:"
            page.on("console", lambda m, w=where: m.type == "error" and problems.append(f"{w} console error: {m.text}"))
            page.on("pageerror", lambda e, w=where: problems.append(f"{w} page error: {e}"))
            page.on("requestfailed", lambda r, w=where: problems.append(f"{w} request failed: {r.url[:120]} ({r.failure})"))
            page.goto((site / name).as_uri(), wait_until="load")
            facts[name] = page.evaluate(PAGE_FACTS)
            if name == "index.html":
                shot = Path(screenshot or site / "index.png")
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot))
            page.close()
        browser.close()

    ids = {name: set(f["ids"]) for name, f in facts.items()}
    for name, f in facts.items():
        for link in {link["raw"]: link for link in f["links"]}.values():  # each distinct link once per page
            url = urlsplit(link["url"])
            if url.fragment == "LNone": problems.append(f"{name}: source link {link['raw']!r} has no line number")
            if url.scheme != "file": continue  # external links are not followed: the check runs offline
            n_links += 1
            target = Path(unquote(url.path))
            if not target.is_file():
                problems.append(f"{name}: link {link['raw']!r} goes to a missing file"); continue
            # As browsers do: the fragment as written, then percent-decoded (nbconvert's ids keep the %-escapes).
            anchor = url.fragment
            if anchor and target.name in ids and not {anchor, unquote(anchor)} & ids[target.name]:
                problems.append(f"{name}: link {link['raw']!r}: no id {unquote(anchor)!r} in {target.name}")
        for image in f["images"]:
            if not image["complete"] or image["width"] == 0: problems.append(f"{name}: image {image['src']}... did not render")
        for text in f["outputs"]:  # saved streams as the page shows them (`clean_stream`)
            for line in text.splitlines():
                if _PROGRESS.search(line) or _WARNING.match(line):
                    problems.append(f"{name}: an output shows a progress bar or a machine-path warning: {line[:100]!r}"); break
        if f["sidebar"] != expected: problems.append(f"{name}: sidebar {f['sidebar']} is not the notebooks in order {expected}")
    missing = [p for p in expected if p not in facts["index.html"]["sidebar"]]
    if missing: problems.append(f"index.html does not list the notebooks {missing}")
    plots = [i for f in facts.values() for i in f["images"] if i["src"].startswith("data:image") and i["width"] > 0]
    if not plots: problems.append("no plot image rendered on any page")
    n_images = sum(len(f["images"]) for f in facts.values())
    summary = f"{len(facts)} pages, {n_links} internal links, {n_images} images ({len(plots)} plots rendered)"
    return problems, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default="_docs", help="folder of the built site")
    parser.add_argument("--nbs", default="nbs", help="folder of the notebooks the site was built from")
    parser.add_argument("--screenshot", default=None, help="where to save the index page's screenshot (default SITE/index.png)")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: the system one)")
    args = parser.parse_args(argv)
    start = time.time()
    problems, summary = check_site(args.site, args.nbs, args.screenshot, args.chromium)
    if problems:
        print(f"site check FAILED: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems: print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"site check passed in {time.time() - start:.1f} s: {summary}; screenshot {args.screenshot or Path(args.site) / 'index.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
