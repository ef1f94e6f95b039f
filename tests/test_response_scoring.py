"""Scoring responses: ROUGE-L and token F1 on hand examples, and the Ollama judge against a
local server that speaks Ollama's API."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmcourse import response_scoring as ev
from llmcourse.errors import InputError, ToolError

ENTRY = {
    "instruction": "Name the capital of France.",
    "input": "",
    "output": "The capital of France is Paris.",
}
ENTRY_WITH_INPUT = {
    "instruction": "Correct the spelling.",
    "input": "Ocassion",
    "output": "Occasion",
}


# ---------------------------------------------------------------------------------------------
# Offline scores


def test_words_are_lower_cased_runs_of_letters_and_digits():
    assert ev.words("The cat's 2 hats, e.g. Über-cool!") == [
        "the", "cat", "s", "2", "hats", "e", "g", "über", "cool"
    ]
    assert ev.words(" ... ") == []


def test_longest_common_subsequence():
    assert ev.lcs_length("a b c d".split(), "a c e".split()) == 2
    assert ev.lcs_length("a c e".split(), "a b c d".split()) == 2
    assert ev.lcs_length("x y z".split(), "a b".split()) == 0
    assert ev.lcs_length([], ["a"]) == 0
    assert ev.lcs_length("b a b a".split(), "a b a b".split()) == 3


def test_rouge_l_on_hand_examples():
    # LCS "the cat on the mat": 5 of 6 words on each side
    assert ev.rouge_l("the cat sat on the mat", "The cat is on the mat.") == ev.Overlap(
        5 / 6, 5 / 6, pytest.approx(5 / 6, abs=1e-12)
    )
    # LCS "a c": precision 2/4, recall 2/3, F1 = 2 * (1/2 * 2/3) / (1/2 + 2/3) = 4/7
    score = ev.rouge_l("a b c d", "a c e")
    assert (score.precision, score.recall) == (0.5, 2 / 3)
    assert score.f1 == pytest.approx(4 / 7, abs=1e-12)
    assert ev.rouge_l("c b a", "a b c").f1 == pytest.approx(1 / 3, abs=1e-12)  # order matters


def test_token_f1_on_hand_examples():
    assert ev.token_f1("c b a", "a b c") == ev.Overlap(1.0, 1.0, 1.0)  # order does not
    score = ev.token_f1("the the the", "the cat")  # one "the" matches
    assert (score.precision, score.recall) == (1 / 3, 1 / 2)
    assert score.f1 == pytest.approx(0.4, abs=1e-12)
    assert ev.token_f1("dog", "cat") == ev.Overlap(0.0, 0.0, 0.0)


def test_texts_without_words():
    assert ev.rouge_l("", "!") == ev.Overlap(1.0, 1.0, 1.0)
    assert ev.token_f1("", "Paris") == ev.Overlap(0.0, 0.0, 0.0)
    assert ev.rouge_l("Paris", "...") == ev.Overlap(0.0, 0.0, 0.0)


def test_score_responses_averages_the_per_item_scores():
    entries = [
        {**ENTRY, "model_response": "the capital of france is paris"},  # exact, up to case
        {**ENTRY, "model_response": "Paris is the capital of France."},
        {**ENTRY, "model_response": ""},
    ]
    summary = ev.score_responses(entries)
    # second: LCS "the capital of france" (4 of 6 words), all 6 words shared
    assert summary.items == [
        ev.ItemScore(rouge_l=1.0, token_f1=1.0, exact_match=True),
        ev.ItemScore(rouge_l=pytest.approx(4 / 6, abs=1e-12), token_f1=1.0, exact_match=False),
        ev.ItemScore(rouge_l=0.0, token_f1=0.0, exact_match=False),
    ]
    assert summary.rouge_l == pytest.approx((1 + 4 / 6) / 3, abs=1e-12)
    assert summary.token_f1 == pytest.approx(2 / 3, abs=1e-12)
    assert summary.exact_match == pytest.approx(1 / 3, abs=1e-12)
    assert summary.to_dict()["count"] == 3


def test_score_responses_names_the_entries_without_a_response(tmp_path):
    entries = [{**ENTRY, "model_response": "Paris"}, ENTRY, {**ENTRY, "model_response": 3},
               {"output": "Paris", "model_response": "Paris"}]
    with pytest.raises(InputError) as caught:
        ev.score_responses(entries)
    assert str(caught.value).startswith(
        "3 of 4 entries lack one of the string fields 'instruction', 'input', 'output', "
        "'model_response' (entries 1, 2, 3, counting from 0)"
    )
    with pytest.raises(InputError, match="no responses"):
        ev.score_responses([])
    summary = ev.score_responses(entries[:1], "model_response")
    assert summary.to_dict() == {
        "count": 1, "rouge_l": summary.rouge_l, "token_f1": summary.token_f1,
        "exact_match": 0.0, "items": [
            {"rouge_l": summary.rouge_l, "token_f1": summary.token_f1, "exact_match": False}]}


# ---------------------------------------------------------------------------------------------
# The judge's prompt and replies


def test_the_judge_prompt_is_the_books():
    assert ev.judge_prompt(ENTRY_WITH_INPUT, "Ocasion") == (
        "Given the input `Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nCorrect the spelling.\n\n"
        "### Input:\nOcassion` and correct output `Occasion`, score the model response "
        "`Ocasion` on a scale from 0 to 100, where 100 is the best score. Respond with the "
        "integer number only."
    )


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("85", 85),
        ("  100\n", 100),
        ("0", 0),
        ("Score: 92/100", 92),
        ("**77**", 77),
        ("I would rate it 150... no, 90.", 90),
        ("llama3 gives 60", 60),
        ("85.5", None),
        ("-5", None),
        ("A fine answer.", None),
        ("", None),
    ],
)
def test_parse_score(reply, score):
    assert ev.parse_score(reply) == score


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("localhost", "http://localhost:11434"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://judge.example.org", "https://judge.example.org"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
    ],
)
def test_hosts_are_read_as_ollama_reads_them(host, url):
    assert ev.normalize_host(host) == url


# ---------------------------------------------------------------------------------------------
# A local server that speaks Ollama's API


class FakeOllama(ThreadingHTTPServer):
    """Answers /api/tags with ``models`` and /api/chat with a score that depends on the response
    quoted in the prompt; records every request. ``chat_override`` = (status, body bytes)
    replaces the chat answer."""

    def __init__(self, models: list[str]):
        super().__init__(("127.0.0.1", 0), OllamaHandler)
        self.models = models
        self.requests: list[dict] = []
        self.chat_override: tuple[int, bytes] | None = None
        self.tags_override: bytes | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def chat_reply(self, prompt: str) -> str:
        for response, reply in (("`Paris`", "95"), ("`Lyon`", "Score: 10/100"),
                                ("`Maybe`", "I cannot judge that.")):
            if response in prompt:
                return reply
        return "50"


class OllamaHandler(BaseHTTPRequestHandler):
    server: FakeOllama

    def do_GET(self) -> None:
        self._record(None)
        if self.path != "/api/tags":
            return self._send(404, b'{"error": "not found"}')
        listing = {"models": [{"name": name, "model": name} for name in self.server.models]}
        self._send(200, self.server.tags_override or json.dumps(listing).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._record(body)
        if self.server.chat_override is not None:
            return self._send(*self.server.chat_override)
        content = self.server.chat_reply(body["messages"][0]["content"])
        answer = {"model": body["model"], "message": {"role": "assistant", "content": content},
                  "done": True}
        self._send(200, json.dumps(answer).encode())

    def _record(self, body: object) -> None:
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "content_type": self.headers["Content-Type"], "body": body})

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def ollama(monkeypatch) -> Iterator[FakeOllama]:
    for name in ("http_proxy", "HTTP_PROXY", ev.HOST_ENV, ev.MODEL_ENV):
        monkeypatch.delenv(name, raising=False)
    server = FakeOllama(["llama3:latest", "phi3:latest"])
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def entries_with(*responses: str) -> list[dict]:
    return [{**ENTRY, "model_response": response} for response in responses]


def test_the_judge_sends_the_books_request_and_parses_the_scores(ollama: FakeOllama):
    judge = ev.OllamaJudge(host=ollama.url, timeout=10)
    assert judge.is_available()
    summary = judge.judge_responses(entries_with("Paris", "Lyon", "Maybe", ""), progress=False)
    assert summary == ev.JudgeSummary(
        model="llama3",
        scores=[95, 10, None, 0],
        replies=["95", "Score: 10/100", "I cannot judge that.", ""],
        mean=pytest.approx(105 / 3, abs=1e-12),
        unparsable=[2],
    )
    chats = [request for request in ollama.requests if request["path"] == "/api/chat"]
    assert len(chats) == 3  # the empty response scores 0 without a request
    assert chats[0] == {
        "method": "POST",
        "path": "/api/chat",
        "content_type": "application/json",
        "body": {
            "model": "llama3",
            "messages": [{"role": "user", "content": ev.judge_prompt(ENTRY, "Paris")}],
            "stream": False,
            "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
        },
    }


def test_environment_variables_choose_the_host_and_the_model(ollama: FakeOllama, monkeypatch):
    monkeypatch.setenv(ev.HOST_ENV, ollama.url.removeprefix("http://"))
    monkeypatch.setenv(ev.MODEL_ENV, "phi3")
    judge = ev.OllamaJudge()
    assert (judge.host, judge.model) == (ollama.url, "phi3")
    assert judge.score(ENTRY, "Paris") == (95, "95")
    assert ollama.requests[-1]["body"]["model"] == "phi3"


def test_a_missing_judge_model_says_how_to_pull_it(ollama: FakeOllama):
    judge = ev.OllamaJudge(model="mistral", host=ollama.url, timeout=10)
    assert judge.is_available()  # the server answers, the model is missing
    with pytest.raises(ToolError) as caught:
        judge.judge_responses(entries_with("Paris"), progress=False)
    assert str(caught.value) == (
        f"the Ollama server at {ollama.url} does not have the model 'mistral' (it has: "
        "llama3:latest, phi3:latest); fetch it with `ollama pull mistral`, or choose one it has "
        "with LLMCOURSE_JUDGE_MODEL"
    )
    assert all(request["path"] == "/api/tags" for request in ollama.requests)


def test_an_unreachable_host_is_explained():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = ev.OllamaJudge(host=f"127.0.0.1:{port}", timeout=5)
    assert not judge.is_available()
    with pytest.raises(ToolError) as caught:
        judge.judge_responses(entries_with("Paris"), progress=False)
    message = str(caught.value)
    assert message.startswith(f"cannot reach an Ollama server at http://127.0.0.1:{port} (")
    for advice in ("https://ollama.com", "`ollama serve`", "`ollama pull llama3`",
                   "OLLAMA_HOST", "LLMCOURSE_JUDGE_MODEL"):
        assert advice in message


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>hello</html>", "answered with something that is not JSON"),
        (200, b'{"message": {"role": "assistant"}}', "answered without a message content"),
        (200, b'["95"]', "answered without a message content"),
        (404, b'{"error": "model \\"llama3\\" not found, try pulling it first"}',
         'answered HTTP 404: model "llama3" not found, try pulling it first; fetch the judge '
         "model with `ollama pull llama3`"),
        (500, b"oops", "answered HTTP 500"),
    ],
)
def test_malformed_chat_answers_are_errors(ollama: FakeOllama, status, body, message):
    ollama.chat_override = (status, body)
    judge = ev.OllamaJudge(host=ollama.url, timeout=10)
    with pytest.raises(ToolError) as caught:
        judge.score(ENTRY, "Paris")
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{ollama.url}/api/chat ")


def test_a_server_that_is_not_ollama_is_not_available(ollama: FakeOllama):
    ollama.tags_override = b'{"status": "ok"}'
    judge = ev.OllamaJudge(host=ollama.url, timeout=10)
    assert not judge.is_available()
    with pytest.raises(ToolError, match="did not answer a model list"):
        judge.check()
