"The docs site built from the notebooks without quarto: a page per notebook, the sidebar, links, plots; then a real browser."
import importlib.util
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from hypercompress.docs import notebook_paths, page_name
from hypercompress.site import build_site

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


class Page(HTMLParser):
    "The ids, links, images and sidebar links of one page."
    def __init__(self, text):
        super().__init__()
        self.ids, self.links, self.images, self.sidebar, self.title = set(), [], [], [], ""
        self._in_sidebar = self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs: self.ids.add(attrs["id"])
        if tag == "nav" and "sidebar" in attrs.get("class", ""): self._in_sidebar = True
        if tag == "title": self._in_title = True
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
            if self._in_sidebar and attrs.get("class") != "site-title": self.sidebar.append(attrs["href"])
        if tag == "img": self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "nav": self._in_sidebar = False
        if tag == "title": self._in_title = False

    def handle_data(self, data):
        if self._in_title: self.title += data


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    "The site, built once per test run (under pytest-xdist, once for all workers, as the xdist docs suggest)."
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("site")
        build_site(NBS, out)
        return out
    from filelock import FileLock
    out = tmp_path_factory.getbasetemp().parent / "docs_site"  # this run's folder, shared by its workers
    with FileLock(f"{out}.lock"):
        if not (out / "index.html").is_file(): build_site(NBS, out)
    return out


@pytest.fixture(scope="session")
def pages(site):
    return {p.name: Page(p.read_text()) for p in site.glob("*.html")}


def notebook_title(path):
    "The `# Title` of a notebook's first markdown cell."
    cell = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    return re.search(r"^#\s+(.+?)\s*$", "".join(cell["source"]), re.M).group(1)


def test_every_notebook_has_a_titled_page(site, pages):
    expected = [page_name(p) for p in notebook_paths(NBS)]
    assert expected[0] == "index.html" and len(expected) >= 20
    assert sorted(pages) == sorted(expected)
    for path in notebook_paths(NBS):
        assert pages[page_name(path)].title.startswith(notebook_title(path)), path.name
    assert (site / "site.css").is_file()


def test_sidebar_in_notebook_order_on_every_page(pages):
    expected = [page_name(p) for p in notebook_paths(NBS)]
    for name, page in pages.items():
        # one entry per notebook, index first, then in file order
        assert page.sidebar == expected, name


def test_internal_links_resolve(site, pages):
    problems, n = [], 0
    for name, page in pages.items():
        for href in page.links:
            url = urlsplit(href)
            if url.scheme or href.startswith("//"): continue
            n += 1
            target = url.path or name
            if not (site / target).is_file(): problems.append(f"{name}: {href} (no file)"); continue
            if url.fragment and target in pages and not {url.fragment, unquote(url.fragment)} & pages[target].ids:
                problems.append(f"{name}: {href} (no such id)")
    assert not problems, problems[:20]
    assert n > 100  # the doc links to API symbols are among them


def test_api_docs_and_plots(pages):
    assert "write_readme" in pages["docs.html"].ids  # an exported function is documented on its notebook's page
    # backticked symbols link to their page through _modidx.py, across pages
    cross = {h for name, p in pages.items() for h in p.links
             if re.match(r"^\w+\.html#", h) and h.split("#")[0] != name}
    assert len(cross) >= 10, cross
    images = [src for p in pages.values() for src in p.images]
    assert any(src.startswith("data:image/") for src in images), "no plot embedded in any page"


def test_site_in_a_browser(site, tmp_path):
    pytest.importorskip("playwright.sync_api")
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "scripts" / "check_site.py")
    check_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_site)
    if check_site.find_chromium() is None: pytest.skip("no system Chromium (apt-get install chromium)")
    problems, summary = check_site.check_site(site, NBS, screenshot=tmp_path / "index.png")
    assert not problems, "\n".join(problems)
    assert (tmp_path / "index.png").stat().st_size > 10_000, summary


def test_docs_command(tmp_path, capsys):
    import argparse
    from hypercompress.site import add_docs_command
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    shutil.copy(NBS / "index.ipynb", nbs)
    parser = argparse.ArgumentParser()
    add_docs_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["docs", "--nbs", str(nbs), "--out", str(tmp_path / "out")])
    args.func(args)
    assert "wrote 1 page to" in capsys.readouterr().out
    assert (tmp_path / "out" / "index.html").is_file()
