"""The course's data files: where they come from, how to check them, how to get them.

Every file has a canonical URL, a sha256 and a size. ``fetch(name)`` returns a verified local
path, looking in this order:

1. the mirror directory named by ``$LLMCOURSE_DATA_MIRROR`` (same layout as ``shared/data``);
2. the user cache, ``$LLMCOURSE_CACHE_DIR`` (default ``~/.cache/llmcourse/data``);
3. the network: the file is downloaded next to its cache path, checked, then moved into place
   atomically, so a cache never holds a half-written or unverified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from llmcourse.errors import (
    ConfigError,
    DataError,
    DestinationError,
    MissingFileError,
)
from llmcourse.saving import publish_file, scratch_directory

MIRROR_ENV = "LLMCOURSE_DATA_MIRROR"
CACHE_ENV = "LLMCOURSE_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path("~/.cache/llmcourse")
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class DataFile:
    """One published data file and how to obtain it byte for byte.

    ``relative_path`` is its place under a mirror or cache directory. ``size`` is in bytes.
    ``extract`` names the zip member to take when ``url`` serves a zip archive.
    ``first_bytes_only`` means the file is the first ``size`` bytes of what ``url`` serves.
    """

    name: str
    relative_path: str
    url: str
    sha256: str
    size: int
    license: str
    description: str
    extract: str | None = None
    fallback_urls: tuple[str, ...] = ()
    first_bytes_only: bool = False

    @property
    def urls(self) -> tuple[str, ...]:
        """The canonical URL followed by the fallbacks, in the order they are tried."""
        return (self.url, *self.fallback_urls)


_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_GPT2_ENCODINGS = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
_SMS_SPAM_ZIP = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
_SMS_SPAM_BACKUP = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"

_REGISTRY: dict[str, DataFile] = {
    entry.name: entry
    for entry in (
        DataFile(
            "the-verdict", "the-verdict.txt",
            f"{_RASBT}/ch02/01_main-chapter-code/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f", 20_479,
            "public domain", "'The Verdict' by Edith Wharton (1908): a short story, ASCII.",
        ),
        DataFile(
            "instruction-data", "instruction-data.json",
            f"{_RASBT}/ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944", 203_524,
            "Apache-2.0", "1,100 instruction/input/output examples for instruction tuning.",
        ),
        DataFile(
            "gpt2-encoder", "gpt2/encoder.json", f"{_GPT2_ENCODINGS}/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783", 1_042_301,
            "Modified MIT (OpenAI GPT-2)", "GPT-2 BPE token-to-id map, 50,257 entries.",
            fallback_urls=(f"{_RASBT}/ch02/02_bonus_bytepair-encoder/gpt2_model/encoder.json",),
        ),
        DataFile(
            "gpt2-vocab", "gpt2/vocab.bpe", f"{_GPT2_ENCODINGS}/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5", 456_318,
            "Modified MIT (OpenAI GPT-2)", "GPT-2 BPE merge rules, 50,000 merges.",
            fallback_urls=(f"{_RASBT}/ch02/02_bonus_bytepair-encoder/gpt2_model/vocab.bpe",),
        ),
        DataFile(
            "sms-spam", "SMSSpamCollection.tsv", _SMS_SPAM_ZIP,
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d", 477_907,
            "free use (readme); CC BY 4.0 (UCI)",
            "UCI SMS Spam Collection v.1: 5,574 'label<TAB>text' lines, ham or spam.",
            extract="SMSSpamCollection", fallback_urls=(_SMS_SPAM_BACKUP,),
        ),
        DataFile(
            "sms-spam-readme", "SMSSpamCollection.readme.txt", _SMS_SPAM_ZIP,
            "8753cd2d3cab68f80c8257851b8c2037778c267f55accb6fd1b5a2e32d36a84e", 5_868,
            "free use (readme); CC BY 4.0 (UCI)",
            "The SMS Spam Collection's readme: terms of use and citation, Latin-1.",
            extract="readme", fallback_urls=(_SMS_SPAM_BACKUP,),
        ),
        DataFile(
            "tinystories-2mib", "corpus/tinystories-train-first2MiB.txt",
            "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
            "TinyStories-train.txt",
            "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d", 2_097_152,
            "CDLA-Sharing-1.0", "First 2 MiB of TinyStories V1 train: simple English stories.",
            first_bytes_only=True,
        ),
        DataFile(
            "tinyshakespeare", "corpus/tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
            "input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1_115_394,
            "public domain (text); MIT (repo)", "Tiny Shakespeare from char-rnn, 65 characters.",
        ),
    )
}


def registry() -> list[DataFile]:
    """Every data file the course uses, in a fixed order."""
    return list(_REGISTRY.values())


def get(name: str) -> DataFile:
    """The registry entry called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ConfigError(f"unknown data file {name!r}; known names: {known}") from None


def cache_root() -> Path:
    """The course's cache folder (data files, trained models): ``$LLMCOURSE_CACHE_DIR`` or
    ``~/.cache/llmcourse``. It need not exist yet, but a file in its place (or in place of one
    of the folders above it) raises ``DestinationError``."""
    from_environment = bool(os.environ.get(CACHE_ENV))
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()
    blocking = next((path for path in (root, *root.parents) if path.exists()), None)
    if blocking is not None and not blocking.is_dir():
        where = "is a file" if blocking == root else f"lies inside {blocking}, which is a file"
        remedy = (
            f"point {CACHE_ENV} at a directory (or unset it to use {DEFAULT_CACHE_ROOT})"
            if from_environment
            else f"move that file away, or set {CACHE_ENV} to a directory"
        )
        source = f" (from ${CACHE_ENV})" if from_environment else ""
        raise DestinationError(
            f"the cache folder {root}{source} {where}, not a directory; {remedy}"
        )
    return root


def cache_dir() -> Path:
    """The user cache of downloaded data files: ``data/`` inside the cache root."""
    return cache_root() / "data"


def cache_path(name: str) -> Path:
    """Where ``fetch`` keeps the file ``name`` in the user cache (it may not exist yet)."""
    return cache_dir() / get(name).relative_path


def mirror_path(name: str) -> Path | None:
    """Where the mirror holds ``name``, or None when no mirror is set (it may not exist)."""
    mirror = os.environ.get(MIRROR_ENV)
    return Path(mirror).expanduser() / get(name).relative_path if mirror else None


_digests: dict[tuple[str, int, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file; remembered per (path, inode, mtime, size), so reads happen once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def is_intact(path: Path, entry: DataFile) -> bool:
    """Whether ``path`` has exactly the size and sha256 of the published file."""
    return path.stat().st_size == entry.size and sha256_of(path) == entry.sha256


def open_url(url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
    """Open ``url`` with urllib, following redirects; the one place that touches the network."""
    request = urllib.request.Request(url, headers={"User-Agent": "llmcourse", **headers})
    return urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)


def fetch(name: str, *, quiet: bool = False) -> Path:
    """A verified local copy of data file ``name``: mirror, else cache, else download.

    ``quiet`` hides the download progress bar. Raises ``DataError`` for a corrupted
    mirror file or download, ``MissingFileError`` when no copy can be obtained.
    """
    entry = get(name)
    mirrored = mirror_path(name)
    if mirrored is not None and mirrored.is_file():
        if not is_intact(mirrored, entry):
            raise DataError(
                f"mirror file {mirrored} is not the published {entry.relative_path} (expected "
                f"{entry.size} bytes, sha256 {entry.sha256}). Replace it with an unmodified copy "
                f"from {entry.url} or unset {MIRROR_ENV}."
            )
        return mirrored
    cached = cache_path(name)
    if cached.is_file():
        if is_intact(cached, entry):
            return cached
        warnings.warn(
            f"cached {cached} has the wrong size or sha256; downloading it again", stacklevel=2
        )
    _download(entry, cached, quiet)
    return cached


def _download(entry: DataFile, target: Path, quiet: bool) -> None:
    """Try each URL of ``entry`` until one yields the published file at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    wrong_content: list[str] = []
    unreachable: list[str] = []
    for url in entry.urls:
        try:
            _download_from(url, entry, target, quiet)
            return
        except DataError as error:
            wrong_content.append(str(error))
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, cut-offs
            unreachable.append(f"{url} ({error})")
    reasons = "; ".join(wrong_content + unreachable)
    error_type = DataError if wrong_content else MissingFileError
    raise error_type(
        f"could not download {entry.name} ({entry.relative_path}): {reasons}. "
        + _how_to_place(entry, target)
    )


def _download_from(url: str, entry: DataFile, target: Path, quiet: bool) -> None:
    """Download, check and atomically move one file into ``target`` from ``url``."""
    with scratch_directory(target) as scratch:
        downloaded = scratch / "download"
        _copy_url_to_file(url, downloaded, entry, quiet)
        result = _extract_member(downloaded, entry, url) if entry.extract else downloaded
        if not is_intact(result, entry):
            raise DataError(
                f"{url} gave {result.stat().st_size} bytes with sha256 {sha256_of(result)}, "
                f"expected {entry.size} bytes with sha256 {entry.sha256}"
            )
        publish_file(result, target)


def _copy_url_to_file(url: str, destination: Path, entry: DataFile, quiet: bool) -> None:
    """Stream ``url`` into ``destination`` with a progress bar in bytes.

    For ``first_bytes_only`` entries, asks for the byte range of the file and stops after
    ``entry.size`` bytes in case the server ignores the range and sends everything.
    """
    headers = {"Range": f"bytes=0-{entry.size - 1}"} if entry.first_bytes_only else {}
    limit = entry.size if entry.first_bytes_only else None
    with open_url(url, headers) as response, destination.open("wb") as sink:
        archive_bytes = int(response.headers.get("Content-Length") or 0) or None
        total = archive_bytes if entry.extract else entry.size
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=entry.name, disable=quiet) as progress:
            copied = 0
            while limit is None or copied < limit:
                wanted = CHUNK_BYTES if limit is None else min(CHUNK_BYTES, limit - copied)
                chunk = response.read(wanted)
                if not chunk:
                    break
                sink.write(chunk)
                copied += len(chunk)
                progress.update(len(chunk))


def _extract_member(archive: Path, entry: DataFile, url: str) -> Path:
    """Unpack zip member ``entry.extract`` next to ``archive``; returns the member's path."""
    member = archive.with_name("member")
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(entry.extract) as source:
            with member.open("wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
    except zipfile.BadZipFile as error:
        raise DataError(f"{url} did not serve a valid zip archive ({error})") from None
    except KeyError:
        raise DataError(f"the zip from {url} has no member {entry.extract!r}") from None
    return member


def _how_to_place(entry: DataFile, target: Path) -> str:
    """The message's remedy: where to download the file by hand and where to save it."""
    step = ""
    if entry.extract:
        step = f", take the member {entry.extract!r} out of the zip,"
    elif entry.first_bytes_only:
        step = f", keep only its first {entry.size} bytes (head -c {entry.size}),"
    return (
        f"Download it yourself from {' or '.join(entry.urls)}{step} and save it as {target}; "
        f"or set {MIRROR_ENV} to a directory that holds {entry.relative_path}."
    )
