"""Build tooling, not used by the course itself: build the course's Jupyter Book so that its
pages work offline.

The book's pages load no JavaScript from the network. Before a build,
:func:`prepare_static_assets` fills ``book_assets/`` (git-ignored, served as static files):

* ``plotly.min.js``, copied from the installed plotly package: draws the saved figures;
* MathJax 3, require.js and the ipywidgets HTML manager, unpacked from their npm packages
  (fetched once with ``npm pack`` and checked against pinned sha512 digests): typeset math
  and show the saved state of widgets;
* ``llmcourse.css``, written from :data:`BOOK_CSS`: the book's own style rules.

:func:`build_book` then runs ``jupyter-book build`` with warnings as errors. Notebooks are
never executed: the book shows the outputs saved in them.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import plotly

from llmcourse.errors import InputError, MissingFileError, ToolError
from llmcourse.figures.display import PLOTLY_MIMETYPE

ASSETS_FOLDER = "book_assets"  # under the book root; named in _config.yml's html_static_path
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
STAMP_NAME = ".package"  # in each unpacked package's folder: "name@version integrity"
NPM_TIMEOUT_S = 300

BOOK_CSS_NAME = "llmcourse.css"  # named in _config.yml's html_css_files
BOOK_CSS = """\
/* The llmcourse book's own style rules (written by llmcourse.book_build; do not edit the copy in
   book_assets/). */

/* Code-cell outputs (printed text, reprs, tracebacks) wrap long lines instead of scrolling
   sideways, so a wide tensor or a long log line stays readable on a narrow screen. */
div.cell_output pre {
  white-space: pre-wrap;
  word-break: break-word;
  overflow-wrap: anywhere;
}
"""


@dataclass(frozen=True)
class NpmPackage:
    """An npm package whose files the book serves, pinned by version and sha512 digest."""

    name: str
    version: str
    integrity: str  # the registry's "sha512-<base64>" digest of the package tarball
    folder: str  # where its files go, under book_assets/
    keep: tuple[str, ...]  # glob patterns (relative to the package root) of the files to keep

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


NPM_PACKAGES = (
    NpmPackage(
        name="mathjax",
        version="3.2.2",
        integrity="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        folder="mathjax",
        # tex-chtml.js and what it loads on demand: TeX extensions, fonts, menu, a11y.
        keep=(
            "LICENSE",
            "es5/tex-chtml.js",
            "es5/input/tex/extensions/*",
            "es5/output/chtml/fonts/woff-v2/*",
            "es5/ui/*",
            "es5/a11y/*",
        ),
    ),
    NpmPackage(
        name="requirejs",
        version="2.3.7",
        integrity="sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        folder="requirejs",
        keep=("require.js",),
    ),
    NpmPackage(
        name="@jupyter-widgets/html-manager",
        version="1.0.6",
        integrity="sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        folder="html-manager",
        # The AMD bundle and the icon fonts it loads from beside itself.
        keep=(
            "LICENSE",
            "dist/embed-amd.js",
            *(f"dist/*.{suffix}" for suffix in ("woff2", "woff", "ttf", "eot", "svg")),
        ),
    ),
)


# ---------------------------------------------------------------------------------------------
# Static assets


def prepare_static_assets(book_root: Path | str = ".") -> Path:
    """Fill ``<book_root>/book_assets/`` with the scripts and styles the pages need; returns it.

    Up-to-date files are left alone, so only the first call needs the npm registry (npm also
    keeps a cache of its own). Raises :class:`CourseError` when a package cannot be fetched.
    """
    assets = Path(book_root).resolve() / ASSETS_FOLDER
    assets.mkdir(parents=True, exist_ok=True)
    copy_if_changed(PLOTLY_JS, assets / PLOTLY_JS.name)
    write_if_changed(assets / BOOK_CSS_NAME, BOOK_CSS)
    for package in NPM_PACKAGES:
        destination = assets / package.folder
        if not is_unpacked(package, destination):
            unpack_npm_package(package, destination)
    return assets


def copy_if_changed(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` unless ``target`` already has the same bytes."""
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    shutil.copyfile(source, target)


def write_if_changed(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` unless ``target`` already holds exactly that text."""
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    target.write_text(text, encoding="utf-8")


def is_unpacked(package: NpmPackage, destination: Path) -> bool:
    """Whether ``destination`` holds this exact version of ``package`` (its stamp matches)."""
    stamp = destination / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == _stamp_text(package)


def _stamp_text(package: NpmPackage) -> str:
    return f"{package.spec} {package.integrity}"


def unpack_npm_package(package: NpmPackage, destination: Path) -> None:
    """Fetch ``package`` with ``npm pack``, check its digest, unpack its kept files.

    The files land in a sibling folder first and replace ``destination`` in one rename.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".unpack-") as scratch:
        tarball = fetch_npm_tarball(package, Path(scratch))
        unpacked = Path(scratch) / "files"
        extract_kept_files(tarball, package, unpacked)
        (unpacked / STAMP_NAME).write_text(_stamp_text(package) + "\n")
        if destination.exists():
            shutil.rmtree(destination)
        unpacked.rename(destination)


def fetch_npm_tarball(package: NpmPackage, folder: Path) -> Path:
    """Download the package tarball into ``folder`` with ``npm pack`` and verify its sha512."""
    npm = shutil.which("npm")
    manual = (
        f"or unpack {package.spec} from the npm registry into {ASSETS_FOLDER}/{package.folder}/ "
        f"with a file {STAMP_NAME} holding '{_stamp_text(package)}'"
    )
    if npm is None:
        raise ToolError(
            f"the book serves {package.spec} from a local copy, fetched with npm, which is not "
            f"installed: install Node.js and npm (Debian: apt-get install -y npm), {manual}"
        )
    command = [npm, "pack", package.spec, "--json", "--prefer-offline", "--pack-destination"]
    try:
        result = subprocess.run(
            [*command, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            timeout=NPM_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as error:
        said = error.stderr.strip().splitlines()[-3:]
        raise ToolError(
            f"could not fetch {package.spec} from the npm registry (npm said: {' / '.join(said)}). "
            f"Run the build once with network access (npm caches the package), {manual}"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise ToolError(
            f"npm took more than {NPM_TIMEOUT_S} s to fetch {package.spec}: check the network, "
            f"{manual}"
        ) from error
    tarball = folder / json.loads(result.stdout)[0]["filename"]
    found = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if found != package.integrity:
        raise ToolError(
            f"{package.spec} from the npm registry has digest {found}, expected "
            f"{package.integrity}: the download is corrupt or the package changed; delete npm's "
            "cache entry (npm cache clean --force) and try again"
        )
    return tarball


def extract_kept_files(tarball: Path, package: NpmPackage, target: Path) -> None:
    """Write the regular files of ``tarball`` that match ``package.keep`` under ``target``.

    npm tarballs put everything under ``package/``; that prefix is dropped.
    """
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            path = PurePosixPath(member.name)
            relative = PurePosixPath(*path.parts[1:])
            if not member.isfile() or ".." in path.parts or path.is_absolute():
                continue
            if not any(fnmatch.fnmatch(str(relative), pattern) for pattern in package.keep):
                continue
            output = target.joinpath(*relative.parts)
            output.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has content
            output.write_bytes(source.read())


# ---------------------------------------------------------------------------------------------
# Checks and build


def figures_missing_html(notebook: Path) -> list[int]:
    """Indices of the cells of ``notebook`` whose plotly figure output has no ``text/html``.

    Such a figure (from ``fig.show()``) is silently absent from the book: use
    ``llmcourse.figures.display.show(fig)`` instead.
    """
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    return [
        index
        for index, cell in enumerate(cells)
        for output in cell.get("outputs", [])
        if PLOTLY_MIMETYPE in output.get("data", {}) and "text/html" not in output["data"]
    ]


def toc_notebooks(book_root: Path) -> list[Path]:
    """The notebooks that ``<book_root>/_toc.yml`` puts in the book."""
    from sphinx_external_toc.parsing import parse_toc_yaml  # installed with jupyter-book

    site_map = parse_toc_yaml(book_root / "_toc.yml")
    candidates = (book_root / f"{docname}.ipynb" for docname in site_map)
    return [notebook for notebook in candidates if notebook.is_file()]


def check_figure_outputs(book_root: Path) -> None:
    """Raise :class:`CourseError` naming every notebook cell whose figure the book would drop."""
    problems = [
        f"{notebook.relative_to(book_root)} cell {index + 1}"  # cells counted from 1
        for notebook in toc_notebooks(book_root)
        for index in figures_missing_html(notebook)
    ]
    if problems:
        raise InputError(
            "these saved plotly figures have no HTML form and would be missing from the book: "
            f"{', '.join(problems)}. Display figures with llmcourse.figures.display.show(fig), not "
            "fig.show(), and run the notebook again"
        )


def jupyter_book_command() -> str:
    """Path of the ``jupyter-book`` program of this Python environment."""
    beside_python = Path(sys.executable).with_name("jupyter-book")
    found = str(beside_python) if beside_python.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise ToolError(
            "jupyter-book is not installed: install the course with its dev extra "
            "(pip install -e '.[dev]', or run make book)"
        )
    return found


def build_book(book_root: Path | str = ".", *, quiet: bool = False) -> Path:
    """Build the HTML book under ``<book_root>/_build/html``; returns the path of index.html.

    Runs ``jupyter-book build -W -n --keep-going``: any warning fails the build. With
    ``quiet`` the build's output is captured, and its last lines go into the error raised when
    the build fails.
    """
    root = Path(book_root).resolve()
    for required in ("_config.yml", "_toc.yml"):
        if not (root / required).is_file():
            raise MissingFileError(f"{root} has no {required}: pass the folder that holds the book")
    command = [jupyter_book_command(), "build", "-W", "-n", "--keep-going", str(root)]
    check_figure_outputs(root)
    prepare_static_assets(root)
    env = os.environ | ({"NO_COLOR": "1"} if quiet else {})
    result = subprocess.run(command, capture_output=quiet, text=True, env=env, check=False)
    if result.returncode != 0:
        advice = "the book did not build: every warning counts as an error; fix the warnings"
        if not quiet:
            raise ToolError(f"{advice} reported above (each names its file and line)")
        log = f"{result.stdout}\n{result.stderr}".splitlines()[-60:]
        raise ToolError(f"{advice} at the end of the build's output:\n" + "\n".join(log))
    return root / "_build" / "html" / "index.html"
