"""The Jupyter Book builds with warnings as errors, and its pages work with no network.

One module-wide build copies the book's sources to a temporary folder, adds a page made by
running a small notebook (math, a figure shown with ``llmcourse.figures.display.show``, a
widget), and builds it. Headless Chromium, with every host name unresolvable, then checks that
the figure, the math and the widget really render. Further tests read the built HTML: one
numbering scheme, Jupyter Book's, from the sidebar to the headings; no nbval marker anywhere on
a page.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path

import nbformat
import pytest
import yaml
from bs4 import BeautifulSoup  # installed with jupyter-book (pydata-sphinx-theme uses it)
from nbclient import NotebookClient
from sphinx_external_toc.parsing import parse_toc_yaml

from llmcourse import book_build
from llmcourse.cli import main
from llmcourse.errors import CourseError
from llmcourse.figures.display import PLOTLY_MIMETYPE
from llmcourse.profiles import current_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
BOOK_SOURCES = ("_config.yml", "_toc.yml", "intro.md", "chapters", "solutions")
CHECK_PAGE = "checks/render"

CHECK_CELLS = [
    nbformat.v4.new_markdown_cell(
        "# Render check\n\nInline math $a^2 + b^2 = c^2$, and a display equation:\n\n"
        "$$\\mathrm{softmax}(z)_i = \\frac{e^{z_i}}{\\sum_j e^{z_j}}$$"
    ),
    nbformat.v4.new_code_cell(
        "import plotly.graph_objects as go\n"
        "from llmcourse.figures.display import layout_defaults, show\n"
        "fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[2.0, 1.0, 0.5], name='loss'))\n"
        "show(layout_defaults(fig, title='Loss per step', x_title='step', y_title='loss'))"
    ),
    nbformat.v4.new_code_cell(
        "import ipywidgets\nipywidgets.IntSlider(value=7, min=0, max=10, description='steps')"
    ),
    # A cell that is meant to fail: the tag lets nbclient, nbval and myst-nb accept its error.
    nbformat.v4.new_code_cell(
        "raise ValueError('shown on purpose')", metadata={"tags": ["raises-exception"]}
    ),
]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: nothing can be fetched
    "--virtual-time-budget=8000",
    "--dump-dom",
)
SCREENSHOT_FLAGS = tuple(flag for flag in CHROMIUM_FLAGS if flag != "--dump-dom")
# The top of every chapter page as the browser draws it, kept to be looked at after a test run.
SCREENSHOT_DIR = REPO_ROOT / "_build" / "screenshots"


def copy_static_assets(book_root: Path) -> None:
    """Give ``book_root`` the book's JavaScript, prepared once in the repository's own folder."""
    try:
        assets = book_build.prepare_static_assets(REPO_ROOT)
    except CourseError as error:  # no npm, or no network and nothing cached yet
        pytest.skip(f"the book's JavaScript packages are not available: {error}")
    shutil.copytree(assets, book_root / book_build.ASSETS_FOLDER)


def write_check_page(book_root: Path) -> None:
    """Run the check notebook in a kernel, save it with its outputs, add it to the toc."""
    notebook = nbformat.v4.new_notebook(cells=CHECK_CELLS)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=120,
        store_widget_state=True,
        resources={"metadata": {"path": str(book_root)}},
    )
    client.execute()
    path = book_root / f"{CHECK_PAGE}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)

    toc_path = book_root / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    part = {"caption": "Render checks", "chapters": [{"file": CHECK_PAGE}]}
    toc.setdefault("parts", []).append(part)
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False))


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built copy of the book, plus the render-check page; returns the book's root."""
    root = tmp_path_factory.mktemp("book")
    for name in BOOK_SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns(".ipynb_checkpoints")
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.is_file():
            shutil.copy(source, root / name)
    copy_static_assets(root)
    write_check_page(root)
    index = book_build.build_book(root, quiet=True)
    assert index == root / "_build" / "html" / "index.html"
    return root


def html_dir(root: Path) -> Path:
    return root / "_build" / "html"


def saved_figure_id(root: Path) -> str:
    """The div id of the figure saved in the check notebook."""
    notebook = nbformat.read(root / f"{CHECK_PAGE}.ipynb", as_version=4)
    (output,) = notebook.cells[1].outputs
    assert set(output.data) >= {PLOTLY_MIMETYPE, "text/html"}
    return re.search(r'<div id="(llmcourse-fig-[0-9a-f]+)"', output.data["text/html"])[1]


@pytest.mark.slow
def test_every_toc_page_is_built(built_book: Path) -> None:
    docnames = list(parse_toc_yaml(built_book / "_toc.yml"))

    assert "intro" in docnames and CHECK_PAGE in docnames
    for docname in docnames:
        assert (html_dir(built_book) / f"{docname}.html").is_file(), docname


@pytest.mark.slow
def test_figure_page_uses_the_local_plotly_js(built_book: Path) -> None:
    served = html_dir(built_book) / "_static" / "plotly.min.js"
    page = (html_dir(built_book) / f"{CHECK_PAGE}.html").read_text()

    assert served.read_bytes() == book_build.PLOTLY_JS.read_bytes()
    assert re.search(r'<script src="\.\./_static/plotly\.min\.js(\?v=\w+)?"></script>', page)
    assert f'<div id="{saved_figure_id(built_book)}" class="plotly-graph-div"' in page
    assert "application/vnd.plotly.v1+json" not in page


@pytest.mark.slow
def test_math_and_widgets_use_local_javascript(built_book: Path) -> None:
    page = (html_dir(built_book) / f"{CHECK_PAGE}.html").read_text()

    for local in ("mathjax/es5/tex-chtml.js", "requirejs/require.js", "html-manager/dist/"):
        assert f'src="../_static/{local}' in page, local


@pytest.mark.slow
def test_no_page_loads_scripts_or_styles_from_the_network(built_book: Path) -> None:
    remote = re.compile(r'<(script|link)\b[^>]*\b(src|href)="(https?:)?//[^"]*"[^>]*>')
    pages = sorted(html_dir(built_book).rglob("*.html"))

    assert len(pages) >= 3
    for page in pages:
        found = [
            tag.group(0)
            for tag in remote.finditer(page.read_text())
            if tag.group(1) == "script" or "stylesheet" in tag.group(0)
        ]
        assert found == [], page


@pytest.mark.slow
def test_config_names_only_files_that_prepare_provides(built_book: Path) -> None:
    config = yaml.safe_load((built_book / "_config.yml").read_text())["sphinx"]["config"]
    assets = built_book / book_build.ASSETS_FOLDER
    named = [
        config["mathjax_path"],
        *config["html_js_files"],
        *config["html_css_files"],
        *config["nb_ipywidgets_js"],
    ]

    assert config["html_static_path"] == [book_build.ASSETS_FOLDER]
    for path in named:
        assert (assets / path).is_file(), path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_figure_math_and_widget_render_offline_in_chromium(built_book: Path) -> None:
    page = html_dir(built_book) / f"{CHECK_PAGE}.html"
    with tempfile.TemporaryDirectory() as profile_dir:
        result = subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    dom = result.stdout

    figure = re.search(rf'<div id="{saved_figure_id(built_book)}".*?</svg>', dom, re.DOTALL)
    assert figure is not None, "the figure's div is missing"
    assert 'class="plot-container plotly"' in figure.group(0)
    assert 'class="main-svg"' in figure.group(0)
    assert f"profile: {current_profile().name}" in dom
    assert dom.count("<mjx-container") == 2  # the inline and the display equation
    assert re.search(r'class="widget-readout"[^>]*>7<', dom)  # the slider's saved value


def write_small_book(root: Path, intro: str, toc: str = "format: jb-book\nroot: intro\n") -> None:
    shutil.copy(REPO_ROOT / "_config.yml", root / "_config.yml")
    (root / "_toc.yml").write_text(toc)
    (root / "intro.md").write_text(intro)


@pytest.mark.slow
def test_a_warning_fails_the_build(tmp_path: Path) -> None:
    write_small_book(tmp_path, "# Intro\n\nSee {ref}`no-such-label`.\n")
    copy_static_assets(tmp_path)

    with pytest.raises(CourseError, match="every warning counts as an error") as caught:
        book_build.build_book(tmp_path, quiet=True)
    assert "no-such-label" in str(caught.value)


def test_figure_saved_without_html_stops_the_build(tmp_path: Path) -> None:
    toc = "format: jb-book\nroot: intro\nchapters:\n  - file: chapters/plot\n"
    write_small_book(tmp_path, "# Intro\n", toc)
    figure_only = nbformat.v4.new_output(
        "display_data", data={PLOTLY_MIMETYPE: {"data": [], "layout": {}}}
    )
    text_only = nbformat.v4.new_output("stream", text="hello\n")
    cells = [
        nbformat.v4.new_code_cell("print('hello')", outputs=[text_only]),
        nbformat.v4.new_code_cell("fig.show()", outputs=[figure_only]),
    ]
    (tmp_path / "chapters").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "chapters" / "plot.ipynb")

    with pytest.raises(CourseError, match=r"chapters/plot\.ipynb cell 2\. Display figures"):
        book_build.build_book(tmp_path, quiet=True)


@pytest.mark.slow
def test_cli_prints_where_to_open_the_book(
    built_book: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    status = main(["book", "build", "--root", str(built_book)])

    assert status == 0
    index = html_dir(built_book) / "index.html"
    assert f"The book is built: open {index.as_uri()}" in capfd.readouterr().out


def test_cli_without_a_book_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["book", "build", "--root", str(tmp_path)])

    assert status == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path} has no _config.yml: pass the folder that holds the book\n"
    )


def make_tarball(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def test_unpacking_keeps_only_the_listed_files(tmp_path: Path) -> None:
    tarball = tmp_path / "pkg.tgz"
    make_tarball(
        tarball,
        {
            "package/main.js": b"main",
            "package/README.md": b"readme",
            "package/fonts/a.woff": b"font",
            "package/fonts/deeper/b.woff": b"font b",
            "package/../escape.js": b"outside",
        },
    )
    keep = ("main.js", "fonts/*", "*.js")
    package = book_build.NpmPackage("pkg", "1.0.0", "sha512-x", "pkg", keep)
    target = tmp_path / "out"

    book_build.extract_kept_files(tarball, package, target)

    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == ["out/fonts/a.woff", "out/fonts/deeper/b.woff", "out/main.js", "pkg.tgz"]
    assert (target / "fonts" / "deeper" / "b.woff").read_bytes() == b"font b"


def test_a_package_counts_as_unpacked_only_with_its_exact_stamp(tmp_path: Path) -> None:
    package = book_build.NPM_PACKAGES[0]
    folder = tmp_path / package.folder

    assert not book_build.is_unpacked(package, folder)
    folder.mkdir()
    (folder / book_build.STAMP_NAME).write_text(f"{package.name}@0.0.1 {package.integrity}\n")
    assert not book_build.is_unpacked(package, folder)
    (folder / book_build.STAMP_NAME).write_text(f"{package.spec} {package.integrity}\n")
    assert book_build.is_unpacked(package, folder)


def chapter_pages() -> list[str]:
    """The chapter notebooks in the toc (chapter 7's own page is no notebook and has no figure)."""
    return [
        name
        for name in parse_toc_yaml(REPO_ROOT / "_toc.yml")
        if name.startswith("chapters/") and (REPO_ROOT / f"{name}.ipynb").is_file()
    ]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
@pytest.mark.parametrize("docname", chapter_pages())
def test_every_chapter_figure_renders_offline_in_chromium(built_book: Path, docname: str) -> None:
    page = html_dir(built_book) / f"{docname}.html"
    saved = set(re.findall(r'<div id="(llmcourse-fig-[0-9a-f-]+)"', page.read_text()))
    with tempfile.TemporaryDirectory() as profile_dir:
        dom = subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    drawn = {
        div_id
        for div_id in saved
        if re.search(rf'<div id="{div_id}"[^>]*>\s*<div class="plot-container plotly"', dom)
    }
    assert saved, f"{docname} shows no figure"
    assert drawn == saved, f"figures not drawn on {docname}: {sorted(saved - drawn)}"

    png = SCREENSHOT_DIR / f"{Path(docname).name}.png"
    png.unlink(missing_ok=True)
    take_screenshot(page, png)
    assert len(png_pixel_values(png)) > 16, f"the screenshot of {docname} is blank: {png}"


def take_screenshot(page: Path, png: Path, width: int = 1280, height: int = 1400) -> None:
    """Save a PNG of the top ``width`` x ``height`` pixels of ``page`` in headless Chromium."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile_dir:
        subprocess.run(
            ["chromium", *SCREENSHOT_FLAGS, f"--user-data-dir={profile_dir}",
             f"--window-size={width},{height}", f"--screenshot={png}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    assert png.is_file(), f"Chromium wrote no screenshot of {page}"


def png_pixel_values(png: Path) -> set[int]:
    """The distinct byte values of a PNG's decompressed image data (filter bytes included): a
    blank page has two or three, a page with text and figures has hundreds."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG file"
    position, image_data = 8, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        if kind == b"IDAT":
            image_data += data[position + 8:position + 8 + length]
        position += 12 + length
    return set(zlib.decompress(image_data))


# ---------------------------------------------------------------------------------------------
# What the pages say: nbval markers, errors shown on purpose, output wrapping, numbering

# A number written into a title by hand: "5. ", "5.3 ", "7.2.6 ", "A.1 ". ("Appendix A: ..."
# and "Exercise 1: ..." are words that carry a number, not a number of their own.)
HAND_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z]\.\d+(?:\.\d+)*\.?)\s")
SECTION_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.\s+(.*)$")  # how Sphinx writes "7.2. Title"


def soup(root: Path, docname: str) -> BeautifulSoup:
    return BeautifulSoup((html_dir(root) / f"{docname}.html").read_text(), "html.parser")


def expected_numbers(toc: dict) -> dict[str, str | None]:
    """Each toc page's number as Jupyter Book gives it (None in an unnumbered part)."""
    numbers: dict[str, str | None] = {toc["root"]: None}
    chapter = 0

    def add_sections(entry: dict, number: str | None) -> None:
        for index, section in enumerate(entry.get("sections", []), start=1):
            numbers[section["file"]] = f"{number}.{index}" if number else None
            add_sections(section, numbers[section["file"]])

    for part in toc.get("parts", []):
        for entry in part["chapters"]:
            number = None
            if part.get("numbered"):
                chapter += 1  # numbering goes on across numbered parts (multitoc numbering)
                number = str(chapter)
            numbers[entry["file"]] = number
            add_sections(entry, number)
    return numbers


def split_number(text: str) -> tuple[str | None, str]:
    """("7.2", "Title") from "7.2. Title"; (None, text) when the text has no Sphinx number."""
    found = SECTION_NUMBER.match(text)
    return (found[1], found[2]) if found else (None, text)


def sidebar_entries(root: Path) -> dict[str, str]:
    """docname -> text of every page link in the book's sidebar, read from the intro page."""
    nav = soup(root, "intro").select_one("nav.bd-docs-nav")
    assert nav is not None, "the intro page has no sidebar"
    entries = {}
    for link in nav.select("a.reference.internal"):
        docname = link["href"].split("#")[0].removesuffix(".html")
        entries[docname] = " ".join(link.get_text().split())
    return entries


def headings(page: BeautifulSoup) -> list[tuple[str, str | None, str]]:
    """(tag, Sphinx number or None, title) of each h1/h2/h3 of the page's article."""
    article = page.select_one("article.bd-article")
    assert article is not None
    found = []
    for heading in article.find_all(["h1", "h2", "h3"]):
        number = heading.find("span", class_="section-number")
        for unwanted in heading.select("span.section-number, a.headerlink"):
            unwanted.extract()
        title = " ".join(heading.get_text().split())
        number_text = number.get_text().strip().rstrip(".") if number else None
        found.append((heading.name, number_text, title))
    return found


@pytest.mark.slow
def test_no_page_shows_an_nbval_marker(built_book: Path) -> None:
    pages = sorted(html_dir(built_book).rglob("*.html"))

    assert len(pages) >= 3
    assert [page.name for page in pages if "NBVAL_" in page.read_text()] == []


@pytest.mark.slow
def test_a_cell_tagged_raises_exception_shows_its_error(built_book: Path) -> None:
    page = soup(built_book, CHECK_PAGE)

    errors = [output.get_text() for output in page.select("div.cell_output")]
    assert any("ValueError" in text and "shown on purpose" in text for text in errors)


@pytest.mark.slow
def test_code_outputs_wrap_long_lines(built_book: Path) -> None:
    served = html_dir(built_book) / "_static" / book_build.BOOK_CSS_NAME
    page = (html_dir(built_book) / f"{chapter_pages()[0]}.html").read_text()

    assert served.read_text() == book_build.BOOK_CSS
    assert re.search(r"div\.cell_output pre \{[^}]*white-space: pre-wrap;", book_build.BOOK_CSS)
    assert re.search(r"div\.cell_output pre \{[^}]*word-break: break-word;", book_build.BOOK_CSS)
    assert re.search(rf'<link rel="stylesheet"[^>]*href="\.\./_static/{served.name}', page)


@pytest.mark.slow
def test_sidebar_numbers_come_from_the_toc_alone(built_book: Path) -> None:
    expected = expected_numbers(yaml.safe_load((built_book / "_toc.yml").read_text()))
    entries = sidebar_entries(built_book)

    problems = []
    for docname, number in expected.items():
        if docname == "intro":
            continue  # the home link, the book's title
        text = entries.get(docname)
        if text is None:
            problems.append(f"{docname}: not in the sidebar")
            continue
        found, title = split_number(text)
        if found != number:
            problems.append(f"{docname}: sidebar says {text!r}, the toc numbers it {number}")
        if HAND_NUMBER.match(title):
            problems.append(f"{docname}: sidebar entry {text!r} has a second, hand-written number")
    assert problems == []


@pytest.mark.slow
def test_page_headings_carry_one_numbering_scheme(built_book: Path) -> None:
    """h1 to h3 of every toc page: Sphinx's numbers only, and the sidebar's number and title."""
    expected = expected_numbers(yaml.safe_load((built_book / "_toc.yml").read_text()))
    entries = sidebar_entries(built_book)

    problems = []
    for docname, number in expected.items():
        page = soup(built_book, docname)
        found = headings(page)
        titles = [title for tag, _, title in found if tag == "h1"]
        if len(titles) != 1:
            problems.append(f"{docname}: {len(titles)} h1 headings")
        for tag, heading_number, title in found:
            where = f"{docname} {tag} {heading_number or ''} {title!r}"
            if HAND_NUMBER.match(title):
                problems.append(f"{where}: a hand-written number besides the book's")
            if tag == "h1" and heading_number != number:
                problems.append(f"{where}: the toc numbers this page {number}")
            if tag != "h1" and number is None and heading_number is not None:
                problems.append(f"{where}: numbered in an unnumbered page")
            if tag != "h1" and number is not None:
                depth = number.count(".") + int(tag[1])
                if heading_number is None or not heading_number.startswith(f"{number}."):
                    problems.append(f"{where}: not numbered under {number}")
                elif heading_number.count(".") + 1 != depth:
                    problems.append(f"{where}: numbered at the wrong depth")
        if docname != "intro" and titles:
            sidebar_number, sidebar_title = split_number(entries.get(docname, ""))
            if (sidebar_number, sidebar_title) != (number, titles[0]):
                problems.append(f"{docname}: sidebar {entries.get(docname)!r}, page {titles[0]!r}")
        browser_title = " ".join(page.title.get_text().split()).split(" — ")[0]
        page_title = titles[0] if titles else ""
        if docname != "intro" and split_number(browser_title) != (number, page_title):
            problems.append(f"{docname}: the browser title {browser_title!r} differs from the page")
    assert problems == []


@pytest.mark.slow
def test_solution_pages_share_one_title_pattern(built_book: Path) -> None:
    entries = sidebar_entries(built_book)
    solutions = {name: text for name, text in entries.items() if name.startswith("solutions/")}

    assert len(solutions) >= 1
    other = {name: text for name, text in solutions.items() if not text.startswith("Solutions: ")}
    assert other == {}


@pytest.mark.slow
def test_section_references_in_prose_name_existing_numbers(built_book: Path) -> None:
    """ "section 6.4", "(7.3.2)", "chapter 5": each number is one the book's headings carry."""
    expected = expected_numbers(yaml.safe_load((built_book / "_toc.yml").read_text()))
    pages = {docname: soup(built_book, docname) for docname in expected}
    numbers = {number for page in pages.values() for _, number, _ in headings(page) if number}
    chapters = {number for number in numbers if "." not in number}
    references = re.compile(
        r"\b(?P<kind>[Cc]hapters?|[Ss]ections?) (?P<first>\d+(?:\.\d+)*)"
        r"(?:(?: and | to )(?P<second>\d+(?:\.\d+)*))?"
        r"|\((?P<bare>\d+\.\d+\.\d+)(?: and (?P<bare_second>\d+\.\d+\.\d+))?\)"
    )

    problems = []
    for docname, page in pages.items():
        article = page.select_one("article.bd-article")
        for code in article.select("div.cell_input, div.cell_output, pre"):
            code.extract()  # prose only
        text = " ".join(article.get_text(" ").split())
        for found in references.finditer(text):
            kind = (found["kind"] or "section").lower()
            for cited in filter(None, found.group("first", "second", "bare", "bare_second")):
                known = chapters if kind.startswith("chapter") else numbers
                if cited not in known:
                    problems.append(f"{docname}: {found[0]!r} cites a {kind} {cited} that is not")
    assert problems == []
