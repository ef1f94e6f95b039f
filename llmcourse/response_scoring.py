"""Scoring an instruction-tuned model's responses against the reference answers.

Two kinds of score:

- Offline and automatic (``score_responses``): ROUGE-L F1, the main one, and token F1, both on
  lower-cased words (runs of letters and digits; punctuation is dropped), plus the exact-match
  rate. They need no model download and no server, are deterministic, run in milliseconds, and
  measure what a reference answer can measure: how much of its wording a response reproduces.
  ROUGE-L (Lin, 2004) counts the longest common subsequence of words, so it rewards the right
  words in the right order ("A is not B" and "B is not A" differ); token F1, the SQuAD metric,
  counts shared words in any order. Neither knows that a correct answer in other words is
  correct, which is why the book asks a larger model instead.
- LLM-as-judge (``OllamaJudge``), the book's evaluation: a local Llama 3 served by Ollama reads
  the instruction, the reference answer and the response, and answers a score from 0 to 100.
  It needs Ollama running (https://ollama.com); ``OLLAMA_HOST`` and ``LLMCOURSE_JUDGE_MODEL``
  choose another server or judge model.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from llmcourse.errors import InputError, ToolError
from llmcourse.instruction import ENTRY_FIELDS, RESPONSE_KEY, format_alpaca

WORD = re.compile(r"[^\W_]+")  # letters and digits, any script
HOST_ENV = "OLLAMA_HOST"
MODEL_ENV = "LLMCOURSE_JUDGE_MODEL"
DEFAULT_HOST = "http://localhost:11434"
DEFAULT_JUDGE_MODEL = "llama3"
OLLAMA_PORT = 11434


# ---------------------------------------------------------------------------------------------
# Offline scores


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``: runs of letters and digits; the rest separates them."""
    return WORD.findall(text.lower())


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists (dynamic programming,
    O(len(first) * len(second)) time, one row of memory)."""
    if len(second) > len(first):
        first, second = second, first
    previous = [0] * (len(second) + 1)  # LCS lengths of first[:i] and second[:j], for each j
    for word in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class Overlap:
    """How much a response overlaps a reference: precision (share of the response's words that
    match), recall (share of the reference's words matched) and F1, their harmonic mean."""

    precision: float
    recall: float
    f1: float


def rouge_l(response: str, reference: str) -> Overlap:
    """ROUGE-L: matches are the longest common subsequence of the two texts' ``words``."""
    response_words, reference_words = words(response), words(reference)
    matches = lcs_length(response_words, reference_words)
    return _overlap(matches, len(response_words), len(reference_words))


def token_f1(response: str, reference: str) -> Overlap:
    """SQuAD's token F1: matches are the words the texts share, counted with multiplicity, in
    any order. (SQuAD also drops "a", "an" and "the"; here every word counts.)"""
    response_words, reference_words = words(response), words(reference)
    matches = sum((Counter(response_words) & Counter(reference_words)).values())
    return _overlap(matches, len(response_words), len(reference_words))


def _overlap(matches: int, response_length: int, reference_length: int) -> Overlap:
    """Precision, recall and F1 from a match count; two texts without words match fully, and
    one without words matches nothing."""
    if response_length == 0 and reference_length == 0:
        return Overlap(1.0, 1.0, 1.0)
    precision = matches / response_length if response_length else 0.0
    recall = matches / reference_length if reference_length else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matches else 0.0
    return Overlap(precision, recall, f1)


@dataclass(frozen=True)
class ItemScore:
    """The scores of one response, each in [0, 1]."""

    rouge_l: float  # ROUGE-L F1
    token_f1: float
    exact_match: bool  # the same words in the same order


@dataclass(frozen=True)
class ScoreSummary:
    """Means over all responses (each in [0, 1]) and the score of every response, in order."""

    rouge_l: float
    token_f1: float
    exact_match: float  # the share of responses that match exactly
    items: list[ItemScore]

    def to_dict(self) -> dict[str, Any]:
        return {"count": len(self.items), **asdict(self)}


def score_response(response: str, reference: str) -> ItemScore:
    """ROUGE-L F1, token F1 and exact match of one response against its reference."""
    return ItemScore(
        rouge_l=rouge_l(response, reference).f1,
        token_f1=token_f1(response, reference).f1,
        exact_match=words(response) == words(reference),
    )


def score_responses(
    entries: Sequence[Mapping[str, Any]], response_key: str = RESPONSE_KEY
) -> ScoreSummary:
    """Score every entry's ``response_key`` against its ``output``; returns the means and the
    per-entry scores."""
    check_responses(entries, response_key)
    items = [score_response(entry[response_key], entry["output"]) for entry in entries]
    return ScoreSummary(
        rouge_l=_mean([item.rouge_l for item in items]),
        token_f1=_mean([item.token_f1 for item in items]),
        exact_match=_mean([float(item.exact_match) for item in items]),
        items=items,
    )


def check_responses(entries: Sequence[Mapping[str, Any]], response_key: str) -> None:
    """Raise ``InputError`` naming the entries that lack one of the string fields
    "instruction", "input", "output" and ``response_key``."""
    if not entries:
        raise InputError("there are no responses to score")
    fields = (*ENTRY_FIELDS, response_key)
    bad = [
        index
        for index, entry in enumerate(entries)
        if not all(isinstance(entry.get(name), str) for name in fields)
    ]
    if bad:
        shown = ", ".join(map(str, bad[:20])) + (" ..." if len(bad) > 20 else "")
        names = ", ".join(repr(name) for name in fields)
        raise InputError(
            f"{len(bad)} of {len(entries)} entries lack one of the string fields {names} "
            f"(entries {shown}, counting from 0); generate the responses with "
            "llmcourse.instruction.generate_responses"
        )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# LLM-as-judge through Ollama


def judge_prompt(entry: Mapping[str, str], response: str) -> str:
    """The book's request to the judge: the Alpaca prompt of ``entry``, its reference output
    and the response to score."""
    return (
        f"Given the input `{format_alpaca(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{response}`"
        " on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")  # a number that is not part of a word


def parse_score(reply: str) -> int | None:
    """The first whole number from 0 to 100 in the judge's ``reply``, or None.

    Numbers outside that range, negative numbers and decimals are passed over:
    "85" and "Score: 85/100" give 85, "150? No: 90" gives 90, "85.5" and "good" give None.
    """
    for number in NUMBER.findall(reply):
        if number.isdigit() and int(number) <= 100:
            return int(number)
    return None


@dataclass(frozen=True)
class JudgeSummary:
    """The judge's scores (None where its reply held no score from 0 to 100), its raw replies,
    the mean of the scores it gave (None if it gave none) and the indices of the entries it
    gave none for."""

    model: str
    scores: list[int | None]
    replies: list[str]
    mean: float | None
    unparsable: list[int]


class OllamaJudge:
    """Score responses with a model served by Ollama (https://github.com/ollama/ollama), through
    its HTTP API: ``GET /api/tags`` lists the pulled models, ``POST /api/chat`` with
    ``"stream": false`` answers ``{"message": {"content": ...}}``.

    ``model`` defaults to ``$LLMCOURSE_JUDGE_MODEL`` or "llama3"; ``host`` to ``$OLLAMA_HOST``
    or http://localhost:11434 (a host without a scheme gets "http://", one without a port gets
    11434, as Ollama reads that variable). ``seed``, ``temperature`` 0 and ``num_ctx`` go into
    the request's options, so the judge answers the same way every time. ``timeout`` is in
    seconds, per request.
    """

    def __init__(
        self,
        model: str | None = None,
        host: str | None = None,
        timeout: float = 120.0,
        *,
        seed: int = 123,
        num_ctx: int = 2048,
    ):
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_JUDGE_MODEL
        self.host = normalize_host(host or os.environ.get(HOST_ENV) or DEFAULT_HOST)
        self.timeout = timeout
        self.options = {"seed": seed, "temperature": 0, "num_ctx": num_ctx}

    def is_available(self) -> bool:
        """Whether an Ollama server answers at the host (the model may still be missing)."""
        try:
            self.models()
        except ToolError:
            return False
        return True

    def models(self) -> list[str]:
        """The names of the models the server has pulled ("llama3:latest" ...)."""
        listing = self._request("/api/tags")
        models = listing.get("models") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            raise ToolError(
                f"{self.host}/api/tags did not answer a model list as Ollama does; is "
                f"{self.host} an Ollama server?"
            )
        return [model.get("name", "") for model in models if isinstance(model, dict)]

    def check(self) -> None:
        """Raise ``ToolError`` unless the server answers and has the judge model."""
        pulled = self.models()
        if self.model not in pulled and f"{self.model}:latest" not in pulled:
            raise ToolError(
                f"the Ollama server at {self.host} does not have the model {self.model!r} "
                f"(it has: {', '.join(pulled) or 'none'}); fetch it with `ollama pull "
                f"{self.model}`, or choose one it has with {MODEL_ENV}"
            )

    def ask(self, prompt: str) -> str:
        """The judge model's reply to one user message."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": False,
            "options": self.options,
        }
        answer = self._request("/api/chat", body)
        message = answer.get("message") if isinstance(answer, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ToolError(
                f"{self.host}/api/chat answered without a message content: {_shorten(answer)}; "
                f"is {self.host} an Ollama server?"
            )
        return content

    def score(self, entry: Mapping[str, str], response: str) -> tuple[int | None, str]:
        """The judge's score of ``response`` to ``entry`` and its raw reply. An empty response
        scores 0 without asking, as in the book."""
        if not response.strip():
            return 0, ""
        reply = self.ask(judge_prompt(entry, response))
        return parse_score(reply), reply

    def judge_responses(
        self,
        entries: Sequence[Mapping[str, Any]],
        response_key: str = RESPONSE_KEY,
        *,
        progress: bool = True,
    ) -> JudgeSummary:
        """Score every entry's ``response_key``; checks first that the judge is available."""
        check_responses(entries, response_key)
        self.check()
        scores: list[int | None] = []
        replies: list[str] = []
        for entry in tqdm(entries, desc=f"judging with {self.model}", disable=not progress):
            score, reply = self.score(entry, entry[response_key])
            scores.append(score)
            replies.append(reply)
        given = [score for score in scores if score is not None]
        return JudgeSummary(
            model=self.model,
            scores=scores,
            replies=replies,
            mean=_mean(given) if given else None,
            unparsable=[index for index, score in enumerate(scores) if score is None],
        )

    def _request(self, path: str, body: object | None = None) -> Any:
        """GET ``path`` (or POST ``body`` as JSON) and return the decoded JSON answer."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            self.host + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as error:
            raise ToolError(self._http_error_message(path, error)) from None
        except (urllib.error.URLError, OSError) as error:
            raise ToolError(self._unreachable_message(error)) from None
        except http.client.HTTPException as error:
            raise ToolError(
                f"{self.host}{path} did not answer in HTTP ({error!r}); is {self.host} an "
                "Ollama server?"
            ) from None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ToolError(
                f"{self.host}{path} answered with something that is not JSON "
                f"({_shorten(raw)}); is {self.host} an Ollama server?"
            ) from None

    def _http_error_message(self, path: str, error: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(error.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        message = f"{self.host}{path} answered HTTP {error.code}"
        if detail:
            message += f": {detail}"
        if error.code == 404 and path == "/api/chat":
            message += f"; fetch the judge model with `ollama pull {self.model}`"
        return message

    def _unreachable_message(self, error: Exception) -> str:
        reason = getattr(error, "reason", error)
        return (
            f"cannot reach an Ollama server at {self.host} ({reason}). The LLM judge needs "
            f"Ollama: install it from https://ollama.com, start it with `ollama serve`, and "
            f"fetch the judge model with `ollama pull {self.model}`. For a server elsewhere set "
            f"{HOST_ENV} (e.g. http://gpu-box:11434); for another judge model set {MODEL_ENV} "
            "(e.g. llama3.1); or pass host= and model= to OllamaJudge"
        )


def normalize_host(host: str) -> str:
    """``host`` as a base URL: "http://" added when there is no scheme, port 11434 when there is
    no port (http only), no trailing slash. "localhost" -> "http://localhost:11434"."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"http://{host}"
    parts = urlsplit(host)
    if parts.scheme == "http" and parts.port is None and parts.hostname:
        host = host.replace(parts.netloc, f"{parts.netloc}:{OLLAMA_PORT}", 1)
    return host


def _shorten(value: object, limit: int = 80) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else json.dumps(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")
