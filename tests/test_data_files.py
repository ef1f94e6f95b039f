"""The data registry and ``fetch``: mirror, cache, download, checksums, offline errors."""

from __future__ import annotations

import email.message
import hashlib
import http.client
import io
import re
import threading
import urllib.error
import urllib.response
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmcourse import data_files
from llmcourse.errors import (
    ConfigError,
    CourseError,
    DataError,
    DestinationError,
    MissingFileError,
)

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MANIFEST.md"
TWO_MIB = 2 * 1024 * 1024
EXPECTED_PATHS = {
    "the-verdict": "the-verdict.txt",
    "instruction-data": "instruction-data.json",
    "gpt2-encoder": "gpt2/encoder.json",
    "gpt2-vocab": "gpt2/vocab.bpe",
    "sms-spam": "SMSSpamCollection.tsv",
    "sms-spam-readme": "SMSSpamCollection.readme.txt",
    "tinystories-2mib": "corpus/tinystories-train-first2MiB.txt",
    "tinyshakespeare": "corpus/tinyshakespeare.txt",
}

Requests = list[tuple[str, dict[str, str]]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache directory."""
    root = tmp_path / "cache"
    monkeypatch.setenv(data_files.CACHE_ENV, str(root))
    return root / "data"


@pytest.fixture
def published(data_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], bytes]:
    """Reads a published file's bytes from the mirror, then hides the mirror from ``fetch``."""
    monkeypatch.delenv(data_files.MIRROR_ENV)
    return lambda name: (data_mirror / data_files.get(name).relative_path).read_bytes()


def serve(monkeypatch: pytest.MonkeyPatch, bodies: dict[str, bytes]) -> Requests:
    """Replace the HTTP opener: ``bodies`` maps URL -> bytes, other URLs fail with 404.

    Returns the list of (url, headers) requests made, filled in as ``fetch`` runs.
    """
    requests: Requests = []

    def fake_open_url(url: str, headers: dict[str, str]) -> urllib.response.addinfourl:
        requests.append((url, dict(headers)))
        if url not in bodies:
            raise urllib.error.HTTPError(url, 404, "Not Found", email.message.Message(), None)
        return urllib.response.addinfourl(io.BytesIO(bodies[url]), email.message.Message(), url)

    monkeypatch.setattr(data_files, "open_url", fake_open_url)
    return requests


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(url: str, headers: dict[str, str]) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data_files, "open_url", unreachable)


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def files_under(directory: Path) -> list[str]:
    """Every file and directory below ``directory`` (hidden ones included), as relative paths."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


# --- the registry ------------------------------------------------------------------------------


def test_registry_names_and_layout() -> None:
    assert {entry.name: entry.relative_path for entry in data_files.registry()} == EXPECTED_PATHS
    sms_spam = data_files.get("sms-spam")
    assert sms_spam.extract == "SMSSpamCollection"
    assert data_files.get("sms-spam-readme").extract == "readme"
    assert sms_spam.urls == (
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
    )
    assert data_files.get("tinystories-2mib").first_bytes_only
    assert data_files.get("tinystories-2mib").size == TWO_MIB


def test_registry_matches_every_mirror_file(data_mirror: Path) -> None:
    for entry in data_files.registry():
        data = (data_mirror / entry.relative_path).read_bytes()
        assert len(data) == entry.size, entry.name
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.name
    mirrored = {
        str(path.relative_to(data_mirror))
        for path in data_mirror.rglob("*")
        if path.is_file() and path.name != "MANIFEST.md"
    }
    assert mirrored == set(EXPECTED_PATHS.values())


def test_registry_matches_manifest() -> None:
    if not MANIFEST.is_file():
        pytest.skip(f"no {MANIFEST}")
    row = re.compile(
        r"^\| `data/(?P<path>[^`]+)` \| (?P<size>[\d,]+) \| `(?P<sha>[0-9a-f]{64})` \|$"
    )
    table = {
        match["path"]: (int(match["size"].replace(",", "")), match["sha"])
        for match in map(row.match, MANIFEST.read_text().splitlines())
        if match
    }
    registered = {
        entry.relative_path: (entry.size, entry.sha256) for entry in data_files.registry()
    }
    assert table == registered


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        data_files.fetch("the-verdikt")
    assert isinstance(raised.value, CourseError)
    message = str(raised.value)
    assert "'the-verdikt'" in message
    assert all(name in message for name in EXPECTED_PATHS)


def test_cache_dir_follows_the_environment(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_files.cache_root() == cache.parent
    assert data_files.cache_dir() == cache
    assert data_files.cache_path("gpt2-vocab") == cache / "gpt2" / "vocab.bpe"
    monkeypatch.delenv(data_files.CACHE_ENV)
    monkeypatch.setenv("HOME", "/home/learner")
    assert data_files.cache_dir() == Path("/home/learner/.cache/llmcourse/data")


def test_a_file_as_cache_folder_says_to_point_the_variable_at_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv(data_files.CACHE_ENV, str(a_file))
    with pytest.raises(DestinationError) as raised:
        data_files.cache_dir()
    assert isinstance(raised.value, CourseError) and isinstance(raised.value, ValueError)
    assert str(raised.value) == (
        f"the cache folder {a_file} (from ${data_files.CACHE_ENV}) is a file, not a directory; "
        f"point {data_files.CACHE_ENV} at a directory (or unset it to use ~/.cache/llmcourse)"
    )
    monkeypatch.setenv(data_files.CACHE_ENV, str(a_file / "inside"))
    with pytest.raises(DestinationError, match=f"lies inside {a_file}, which is a "
                       "file, not a directory"):
        data_files.cache_path("the-verdict")
    monkeypatch.setenv(data_files.CACHE_ENV, str(tmp_path / "not" / "yet" / "made"))
    assert data_files.cache_root() == tmp_path / "not" / "yet" / "made"  # created when needed


def test_sha256_of_is_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"abc")
    first = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert data_files.sha256_of(path) == first
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(data_files.hashlib, "sha256", None)  # any rehash would now fail
    assert data_files.sha256_of(path) == first
    monkeypatch.setattr(data_files.hashlib, "sha256", real_sha256)
    path.write_bytes(b"abcd")
    assert data_files.sha256_of(path) == real_sha256(b"abcd").hexdigest()


# --- the mirror --------------------------------------------------------------------------------


def test_fetch_uses_the_mirror_without_network(
    data_mirror: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch)
    for entry in data_files.registry():
        assert data_files.fetch(entry.name) == data_mirror / entry.relative_path
    assert not cache.exists()


def test_corrupt_mirror_file_is_an_error(
    tmp_path: Path, data_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = (data_mirror / "the-verdict.txt").read_bytes()
    (mirror / "the-verdict.txt").write_bytes(good.replace(b"Gisburn", b"Gisbury"))
    monkeypatch.setenv(data_files.MIRROR_ENV, str(mirror))
    go_offline(monkeypatch)
    with pytest.raises(DataError, match=re.escape(str(mirror / "the-verdict.txt"))):
        data_files.fetch("the-verdict")


def test_a_file_missing_from_the_mirror_comes_from_the_cache(
    tmp_path: Path, published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty-mirror").mkdir()
    monkeypatch.setenv(data_files.MIRROR_ENV, str(tmp_path / "empty-mirror"))
    (cache / "gpt2").mkdir(parents=True)
    (cache / "gpt2" / "vocab.bpe").write_bytes(published("gpt2-vocab"))
    go_offline(monkeypatch)
    assert data_files.fetch("gpt2-vocab") == cache / "gpt2" / "vocab.bpe"


# --- downloads through a replaced opener ------------------------------------------------------


def test_download_goes_into_the_cache_once(
    tmp_path: Path,
    published: Callable[[str], bytes],
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = tmp_path / "upstream.txt"
    upstream.write_bytes(published("the-verdict"))
    entry = data_files.get("the-verdict")
    requests = serve(monkeypatch, {entry.url: upstream.read_bytes()})

    path = data_files.fetch("the-verdict")

    assert "the-verdict: 100%" in capsys.readouterr().err  # the progress bar, in bytes
    assert path == cache / "the-verdict.txt"
    assert path.read_bytes() == upstream.read_bytes()
    assert files_under(cache) == ["the-verdict.txt"]
    assert requests == [(entry.url, {})]
    assert data_files.fetch("the-verdict") == path
    assert len(requests) == 1


def test_unreachable_url_falls_back_to_the_next(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = data_files.get("gpt2-vocab")
    requests = serve(monkeypatch, {entry.fallback_urls[0]: published("gpt2-vocab")})
    assert data_files.fetch("gpt2-vocab", quiet=True).read_bytes() == published("gpt2-vocab")
    assert [url for url, _ in requests] == [entry.url, entry.fallback_urls[0]]


def test_zip_members_are_extracted(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = zip_of(
        {"SMSSpamCollection": published("sms-spam"), "readme": published("sms-spam-readme")}
    )
    serve(monkeypatch, {data_files.get("sms-spam").url: archive})
    for name in ("sms-spam", "sms-spam-readme"):
        assert data_files.fetch(name, quiet=True).read_bytes() == published(name)
    assert files_under(cache) == ["SMSSpamCollection.readme.txt", "SMSSpamCollection.tsv"]


def test_zip_without_the_member_is_rejected(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = data_files.get("sms-spam")
    serve(monkeypatch, {url: zip_of({"readme": b"no data"}) for url in entry.urls})
    with pytest.raises(DataError, match="no member 'SMSSpamCollection'"):
        data_files.fetch("sms-spam", quiet=True)
    assert files_under(cache) == []


def test_server_ignoring_range_gives_only_the_first_bytes(
    published: Callable[[str], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_2mib = published("tinystories-2mib")
    entry = data_files.get("tinystories-2mib")
    requests = serve(monkeypatch, {entry.url: first_2mib + b"Once upon a time, " * 1000})
    assert data_files.fetch("tinystories-2mib", quiet=True).read_bytes() == first_2mib
    assert requests == [(entry.url, {"Range": "bytes=0-2097151"})]


def test_corrupt_cache_file_is_downloaded_again_with_a_warning(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = published("instruction-data")
    cached = cache / "instruction-data.json"
    cache.mkdir(parents=True)
    cached.write_bytes(good[:-1] + b"!")  # same size, one byte wrong
    requests = serve(monkeypatch, {data_files.get("instruction-data").url: good})
    with pytest.warns(UserWarning, match="wrong size or sha256"):
        assert data_files.fetch("instruction-data", quiet=True) == cached
    assert cached.read_bytes() == good
    assert len(requests) == 1


@pytest.mark.parametrize(
    "tamper",
    [lambda good: b"", lambda good: good[:1000], lambda good: good.replace(b"Gisburn", b"Gisbury")],
    ids=["empty", "truncated", "same-size-edit"],
)
def test_download_with_wrong_content_leaves_nothing_behind(
    tamper: Callable[[bytes], bytes],
    published: Callable[[str], bytes],
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = tamper(published("the-verdict"))
    serve(monkeypatch, {data_files.get("the-verdict").url: served})
    with pytest.raises(DataError, match=f"gave {len(served)} bytes"):
        data_files.fetch("the-verdict", quiet=True)
    assert files_under(cache) == []


def test_offline_without_any_copy_says_what_to_do(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch)
    entry = data_files.get("sms-spam")
    with pytest.raises(MissingFileError) as raised:
        data_files.fetch("sms-spam")
    assert isinstance(raised.value, CourseError)
    assert isinstance(raised.value, FileNotFoundError)
    message = str(raised.value)
    for fragment in (*entry.urls, str(cache / "SMSSpamCollection.tsv"), data_files.MIRROR_ENV,
                     "'SMSSpamCollection'", "Temporary failure in name resolution"):
        assert fragment in message
    assert files_under(cache) == []


def test_connection_cut_mid_download_is_unavailable(
    published: Callable[[str], bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CutOff(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise http.client.IncompleteRead(b"I HAD always", 20_000)

    def open_url(url: str, headers: dict[str, str]) -> urllib.response.addinfourl:
        return urllib.response.addinfourl(CutOff(), email.message.Message(), url)

    monkeypatch.setattr(data_files, "open_url", open_url)
    with pytest.raises(MissingFileError, match="IncompleteRead"):
        data_files.fetch("the-verdict", quiet=True)
    assert files_under(cache) == []


# --- downloads from a real HTTP server on 127.0.0.1 -------------------------------------------


class LocalServer:
    """Serves ``files`` (path -> bytes) over HTTP; honours single ``Range`` requests if asked."""

    def __init__(self, files: dict[str, bytes], honour_range: bool) -> None:
        self.files = files
        self.honour_range = honour_range
        self.seen_ranges: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.files.get(self.path)
                byte_range = self.headers.get("Range")
                server.seen_ranges.append(byte_range)
                if body is None:
                    self.send_error(404)
                    return
                status = 200
                if byte_range and server.honour_range:
                    start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", byte_range).groups())
                    body, status = body[start : end + 1], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading after the bytes it needed

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalServer]]:
    """Starts a LocalServer; the real ``open_url`` is redirected to it by URL file name."""
    servers: list[LocalServer] = []
    real_open_url = data_files.open_url

    def start(files: dict[str, bytes], honour_range: bool = True) -> LocalServer:
        server = LocalServer(files, honour_range)
        server.thread.start()
        servers.append(server)
        def open_on_local_server(url: str, headers: dict[str, str]) -> object:
            return real_open_url(f"{server.root}/{url.rsplit('/', 1)[-1]}", headers)

        monkeypatch.setattr(data_files, "open_url", open_on_local_server)
        return server

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_download_of_the_first_bytes(
    honour_range: bool, published: Callable[[str], bytes], local_server: Callable[..., LocalServer]
) -> None:
    first_2mib = published("tinystories-2mib")
    server = local_server(
        {"/TinyStories-train.txt": first_2mib + b"Lily smiled.\n" * 5000}, honour_range
    )
    assert data_files.fetch("tinystories-2mib", quiet=True).read_bytes() == first_2mib
    assert server.seen_ranges == ["bytes=0-2097151"]


def test_http_download_of_a_zip_member_and_a_plain_file(
    published: Callable[[str], bytes], cache: Path, local_server: Callable[..., LocalServer]
) -> None:
    local_server({
        "/sms+spam+collection.zip": zip_of({"SMSSpamCollection": published("sms-spam")}),
        "/input.txt": published("tinyshakespeare"),
    })
    assert data_files.fetch("sms-spam", quiet=True).read_bytes() == published("sms-spam")
    assert data_files.fetch("tinyshakespeare", quiet=True).read_bytes() == published(
        "tinyshakespeare"
    )
    assert files_under(cache) == ["SMSSpamCollection.tsv", "corpus", "corpus/tinyshakespeare.txt"]


def test_http_404_everywhere_is_unavailable(
    published: Callable[[str], bytes], cache: Path, local_server: Callable[..., LocalServer]
) -> None:
    local_server({})
    with pytest.raises(MissingFileError, match="HTTP Error 404") as raised:
        data_files.fetch("gpt2-encoder", quiet=True)
    assert str(cache / "gpt2" / "encoder.json") in str(raised.value)
    assert files_under(cache) == ["gpt2"]
