"""The Jupyter Book builds with warnings as errors, and its pages work with no network.

One module-wide build copies the book's sources to a temporary folder, adds a page made by
running a small notebook (math, a figure shown with ``llmcourse.viz.show``, a widget), and
builds it. Headless Chromium, with every host name unresolvable, then checks that the figure,
the math and the widget really render.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from sphinx_external_toc.parsing import parse_toc_yaml

from llmcourse import book as book_build
from llmcourse.cli import main
from llmcourse.errors import CourseError
from llmcourse.profiles import current_profile
from llmcourse.viz import PLOTLY_MIMETYPE

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
        "from llmcourse.viz import layout_defaults, show\n"
        "fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[2.0, 1.0, 0.5], name='loss'))\n"
        "show(layout_defaults(fig, title='Loss per step', x_title='step', y_title='loss'))"
    ),
    nbformat.v4.new_code_cell(
        "import ipywidgets\nipywidgets.IntSlider(value=7, min=0, max=10, description='steps')"
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
    named = [config["mathjax_path"], *config["html_js_files"], *config["nb_ipywidgets_js"]]

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
    return [name for name in parse_toc_yaml(REPO_ROOT / "_toc.yml") if name.startswith("chapters/")]


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
