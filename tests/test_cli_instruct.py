"""``llmcourse finetune instruct`` and ``llmcourse chat`` on a tiny base checkpoint."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from llmcourse import instruction as inst
from llmcourse.checkpoints import load_model, save_checkpoint
from llmcourse.cli import main
from llmcourse.generation import Sampling, generate
from llmcourse.instruction_scores import response_scores, scores_table, scores_with_baselines
from llmcourse.model import GPT, GPTConfig
from llmcourse.profiles import PROFILE_ENV
from llmcourse.splits import Split
from llmcourse.story_instructions import TASKS
from llmcourse.tokenizers import GPT2_EOT_ID, gpt2_tokenizer

TINY = GPTConfig(context_length=96, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def base_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(TINY)
    with torch.no_grad():  # larger weights than GPT-2's init, so greedy answers vary
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return save_checkpoint(tmp_path / "base", model)


def finetune(base: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "instruct", "--base", str(base), "--out", str(out),
                 "--max-examples", "4", "--batch-size", "2", "--epochs", "1", "--eval-every", "1",
                 "--eval-batches", "1", "--max-new-tokens", "4", *extra])


def chat(checkpoint: Path, lines: str, monkeypatch, *extra: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    return main(["chat", str(checkpoint), "--max-new-tokens", "6", *extra])


def greedy_answer(model: GPT, instruction: str, prompt_format: str, max_new_tokens: int) -> str:
    """The text a chat turn streams: the greedy continuation of the generation prompt."""
    tokenizer = gpt2_tokenizer()
    entry = {"instruction": instruction, "input": ""}
    prompt = torch.tensor([inst.generation_prompt(tokenizer, entry, prompt_format, 96)])
    out = generate(model, prompt, max_new_tokens, Sampling(eos_id=GPT2_EOT_ID))
    new_ids = out[0, prompt.size(1):]
    return tokenizer.decode([token for token in new_ids.tolist() if token != GPT2_EOT_ID])


def base_answers(base: Path, entries: list, prompt_format: str = "alpaca") -> list[dict]:
    """The base model's answers to ``entries``: the pretrained baseline."""
    model, tokenizer = load_model(base), gpt2_tokenizer()
    return [{**entry, "model_response": inst.generate_response(
        model, tokenizer, entry, 4, prompt_format=prompt_format)} for entry in entries]


def test_finetune_instruct_saves_the_model_answers_and_scores(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    out = tmp_path / "tuned"
    assert finetune(base_checkpoint, out, "--format", "phi3", "--mask-prompt",
                    "--max-length", "80", "--data", "book") == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "data: book, the course's 1,100 entries split 85/5/10: 935 training, 55 validation and "
        "110 test entries\n"
        "4 training, 4 validation and 4 test entries; phi3 prompts of up to 80 tokens, 2 steps "
        "per epoch\n")
    assert re.search(r"^step 1: train loss [\d.]+, val loss [\d.]+\nstep 2: ", printed, re.M)
    assert f"saved the model to {out}\n" in printed

    tuned = inst.load_instruction_model(out)
    assert tuned.prompt_format.name == "phi3"
    assert tuned.settings == {"base": str(base_checkpoint), "epochs": 1, "lr": 5e-5,
                              "weight_decay": 0.1, "batch_size": 2, "mask_prompt": True,
                              "seed": 123, "max_length": 80, "data": "book"}
    test_entries = inst.split_entries(inst.load_instruction_data()).test[:4]
    responses = inst.load_responses(out / inst.RESPONSES_FILE)
    assert [{key: r[key] for key in inst.ENTRY_FIELDS} for r in responses] == test_entries
    tokenizer = gpt2_tokenizer()
    for response, entry in zip(responses, test_entries, strict=True):
        assert response["model_response"] == inst.generate_response(
            tuned.model, tokenizer, entry, 4, prompt_format="phi3"
        )
    scores = json.loads((out / inst.SCORES_FILE).read_text())
    assert scores == scores_with_baselines(responses,
                                           base_answers(base_checkpoint, test_entries, "phi3"))
    rows = [scores["fine_tuned"], *scores["baselines"].values()]
    assert [row["criterion_success"] for row in rows] == [None] * 4  # the book's data has no tasks
    assert printed.endswith(
        f"test set: 4 responses (in {out / inst.RESPONSES_FILE}), scored beside the baselines "
        f"(in {out / inst.SCORES_FILE}):\n{scores_table(scores)}\n"
    )

    # chat uses the saved model and its prompt format, and stops at /quit
    assert chat(out, "Name a color.\n\n  Say hi  \n/quit\nNever read.\n", monkeypatch) == 0
    expected = "".join(greedy_answer(tuned.model, instruction, "phi3", 6) + "\n"
                       for instruction in ("Name a color.", "Say hi"))
    assert capsys.readouterr().out == expected

    assert finetune(base_checkpoint, out, "--max-examples", "2", "--data", "book",
                    "--overwrite") == 0  # again
    assert inst.load_instruction_model(out).prompt_format.name == "alpaca"


def test_chat_with_any_model_in_the_chosen_format_until_end_of_input(
    data_mirror, base_checkpoint: Path, capsys, monkeypatch
):
    model = load_model(base_checkpoint)
    assert chat(base_checkpoint, "What is 2 + 2?", monkeypatch) == 0  # no newline, no /quit
    assert capsys.readouterr().out == greedy_answer(model, "What is 2 + 2?", "alpaca", 6) + "\n"
    assert chat(base_checkpoint, "What is 2 + 2?\n", monkeypatch, "--format", "phi3") == 0
    assert capsys.readouterr().out == greedy_answer(model, "What is 2 + 2?", "phi3", 6) + "\n"
    assert chat(base_checkpoint, "", monkeypatch) == 0
    assert capsys.readouterr().out == ""


def test_errors_are_reported_without_a_traceback(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    assert finetune(base_checkpoint, base_checkpoint) == 2  # checked before any training
    assert "not part of an instruction-tuned model (config.json, model.safetensors)" in \
        capsys.readouterr().err
    assert finetune(base_checkpoint, tmp_path / "out", "--max-length", "97") == 2
    assert "--max-length must be between 1 and the model's context of 96" in \
        capsys.readouterr().err
    bad_data = tmp_path / "bad.json"
    bad_data.write_text('[{"instruction": "a", "input": ""}]')
    assert finetune(base_checkpoint, tmp_path / "out", "--data", str(bad_data)) == 2
    assert "entry 0: missing 'output'" in capsys.readouterr().err
    assert chat(tmp_path / "absent", "hi\n", monkeypatch) == 2
    assert "absent" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "instruct", "--base", "x", "--out", "y", "--format", "chatml"])


def test_a_rerun_needs_overwrite_and_leaves_no_answers_of_the_old_run(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    out = tmp_path / "tuned"
    assert finetune(base_checkpoint, out, "--data", "book") == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "instruction.json", "model", "test-responses.json", "test-scores.json"]
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr("llmcourse.cli.finetune.load_model_and_tokenizer", refuse_work)
        assert finetune(base_checkpoint, out, "--data", "book") == 2
    assert capsys.readouterr().err == (
        f"error: {out} already holds an instruction-tuned model; pass --overwrite to replace "
        "it, or choose another --out\n")

    real_generate = inst.generate_responses
    calls = []

    def interrupt_after_saving(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the test answers of the new model, after it was saved
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(inst, "generate_responses", interrupt_after_saving)
    assert finetune(base_checkpoint, out, "--data", "book", "--format", "phi3",
                    "--overwrite") == 130
    assert inst.load_instruction_model(out).prompt_format.name == "phi3"  # the new model
    assert sorted(path.name for path in out.iterdir()) == ["instruction.json", "model"]


def refuse_work(*args, **kwargs):
    raise AssertionError("the command started working before it checked --out")


# ---------------------------------------------------------------------------------------------
# --data: story instructions, the book's entries, JSON files, the profile's default


def story_entry(task: str, instruction: str, input_text: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output, "task": task}


STORY_ENTRIES = [
    story_entry("main_character", "What is the name of the main character?",
                "Lily had a red ball. Lily liked to play.", "Lily"),
    story_entry("rename", "Rewrite the sentence with the name Sam instead of Tom.",
                "Tom had a red ball.", "Sam had a red ball."),
    story_entry("story_about", "Write a short story about Ben.", "",
                "Ben went to the park. He played with his dog all day."),
    story_entry("continue_story", "Continue the story about Mia.", "Mia found a shell.",
                "Mia took the shell home and showed it to her mom and dad."),
]
TOO_LONG = story_entry("story_about", "Write a short story about Zoe.", "",
                       "Zoe ran and ran. " * 30)  # more than 96 tokens


def test_story_instructions_are_scored_beside_the_baselines(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys
):
    out = tmp_path / "tuned"
    assert finetune(base_checkpoint, out, "--data", "stories") == 0
    printed = capsys.readouterr().out
    assert re.match(r"data: stories, story instructions from tinystories-2mib whose prompt and "
                    r"answer fit 96 tokens: "
                    r"\d{4} training, \d{3} validation and \d{3} test entries\n4 training, 4 "
                    r"validation and 4 test entries; alpaca prompts", printed)
    assert inst.load_instruction_model(out).settings["data"] == "stories"
    responses = inst.load_responses(out / inst.RESPONSES_FILE)
    assert len(responses) == 4 and {response["task"] for response in responses} <= set(TASKS)
    entries = [{key: value for key, value in response.items() if key != "model_response"}
               for response in responses]
    scores = json.loads((out / inst.SCORES_FILE).read_text())
    assert list(scores) == ["fine_tuned", "baselines"]
    assert list(scores["baselines"]) == ["pretrained", "echo_instruction", "echo_input"]
    for row in (scores["fine_tuned"], *scores["baselines"].values()):
        assert 0 <= row["criterion_success"] <= 1 and 0 <= row["rouge_l"] <= 1
        assert set(row["criterion_success_by_task"]) <= set(TASKS)
    assert scores["fine_tuned"] == response_scores(responses)
    assert scores["baselines"]["pretrained"] == response_scores(
        base_answers(base_checkpoint, entries))
    assert scores_table(scores) in printed


def test_a_json_split_is_used_as_given(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys
):
    data = tmp_path / "split.json"
    test_part = STORY_ENTRIES[:2]
    data.write_text(json.dumps({"train": STORY_ENTRIES, "validation": [], "test": test_part}))
    assert finetune(base_checkpoint, tmp_path / "tuned", "--data", str(data)) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"data: {data}, train, validation and test parts as given: 4 training, 0 validation and "
        "2 test entries\n4 training, 0 validation and 2 test entries; alpaca prompts")
    responses = inst.load_responses(tmp_path / "tuned" / inst.RESPONSES_FILE)
    assert [{key: r[key] for key in (*inst.ENTRY_FIELDS, "task")} for r in responses] == test_part
    scores = json.loads((tmp_path / "tuned" / inst.SCORES_FILE).read_text())
    assert scores["fine_tuned"]["count_by_task"] == {"main_character": 1, "rename": 1}


def test_the_default_data_is_the_profiles(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setenv(PROFILE_ENV, "gpt2")
    assert finetune(base_checkpoint, tmp_path / "book", "--max-examples", "2") == 0
    assert capsys.readouterr().out.startswith("data: book, the course's 1,100 entries")

    built = []

    def small_story_instructions(corpus: str, *, fits) -> Split:  # not the seconds-long build
        built.append((corpus, fits))
        parts = (STORY_ENTRIES + [TOO_LONG], [TOO_LONG, STORY_ENTRIES[0]], STORY_ENTRIES[1:])
        return Split(*([entry for entry in part if fits(entry)] for part in parts))

    monkeypatch.setattr("llmcourse.cli.finetune.load_story_instructions",
                        small_story_instructions)
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    assert finetune(base_checkpoint, tmp_path / "stories", "--max-examples", "2") == 0
    assert capsys.readouterr().out.startswith(
        "data: stories, story instructions from tinystories-2mib whose prompt and answer fit 96 "
        "tokens: 4 training, 1 validation and 3 test entries\n2 training, 1 validation and 2 "
        "test entries;")
    [(corpus, fits)] = built
    assert corpus == "tinystories-2mib" and fits(STORY_ENTRIES[0]) and not fits(TOO_LONG)
    assert inst.load_instruction_model(tmp_path / "stories").settings["data"] == "stories"

    assert finetune(base_checkpoint, tmp_path / "short", "--max-length", "10") == 2
    assert capsys.readouterr().err.endswith(  # after a note on the base's tokenizer
        "\nerror: no story instruction fits 10 tokens with alpaca prompts; use a larger "
        "--max-length or a model with a longer context\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--data must be stories, book or the path of a JSON file of instruction entries; "
         "there is no file at {data}"),
        ("{", "{data} is not valid UTF-8 JSON (Expecting property name enclosed in double "
         "quotes: line 1 column 2 (char 1)); fix or replace the file"),
        ('{"train": [], "test": []}', "{data} holds an object with the keys 'train', 'test'; a "
         "split is an object with exactly the lists \"train\", \"validation\" and \"test\""),
        ('{"train": [], "validation": [], "test": []}',
         "{data} ('train') holds an empty list: there are no entries"),
        (json.dumps([{**STORY_ENTRIES[0], "task": "poem"}]),
         "{data}: entry 0 has the task 'poem'; story instruction tasks are story_with_words, "
         "story_about, main_character, continue_story, rename (entries without a task need no "
         "\"task\" field)"),
        (json.dumps({"train": STORY_ENTRIES, "validation": [],
                     "test": [{**STORY_ENTRIES[0], "task": "Poem"}]}),
         "{data} ('test'): entry 0 has the task 'Poem'; story instruction tasks are "),
        (json.dumps([{**STORY_ENTRIES[0], "task": 3}]), "{data}: 1 of 1 entries are malformed "
         "(entries count from 0; each must be an object with exactly the string fields "
         "'instruction', 'input', 'output' (and optionally 'task')):\n  entry 0: 'task' is a "
         "number (must be a string)\nfix or remove these entries"),
        (json.dumps("entries"), "{data} must hold a JSON list of entries, found a string"),
    ],
)
def test_bad_data_is_reported_before_the_model_is_loaded(
    content: str | None, message: str, tmp_path: Path, capsys
):
    data = tmp_path / "data.json"
    if content is not None:
        data.write_text(content)
    absent = tmp_path / "absent-model"  # never reached: the data is checked first
    assert finetune(absent, tmp_path / "out", "--data", str(data)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: " + message.format(data=data))
    if "malformed" not in message:  # the one message that lists entries, one a line
        assert error.count("\n") == 1


def test_an_unknown_profile_or_data_name_is_a_one_line_error(
    base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    assert finetune(base_checkpoint, tmp_path / "out", "--data", "storys") == 2
    assert capsys.readouterr().err == (
        "error: --data must be stories, book or the path of a JSON file of instruction entries; "
        "there is no file at storys\n")
    monkeypatch.setenv(PROFILE_ENV, "fast")
    assert finetune(base_checkpoint, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: LLMCOURSE_PROFILE='fast' is not a run profile")
    assert error.count("\n") == 1
    assert finetune(base_checkpoint, tmp_path / "out", "--max-examples", "0") == 2
    assert capsys.readouterr().err == "error: --max-examples must be at least 1, got 0\n"


def test_gpt2_profile_fine_tunes_a_hub_checkpoint_on_the_book_data_by_default(
    data_mirror, tmp_path: Path, capsys, monkeypatch
):
    """The gpt2 profile's path: a GPT-2 checkpoint in the Hugging Face hub's layout (written by
    transformers), the book's Alpaca entries and settings, chosen without --data."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hub = tmp_path / "hub-gpt2"
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=96)  # GPT-2's vocabulary
    GPT2LMHeadModel(config).save_pretrained(hub)
    monkeypatch.setenv("LLMCOURSE_PROFILE", "gpt2")
    out = tmp_path / "tuned"
    assert finetune(hub, out) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("data: book, the course's 1,100 entries split 85/5/10")
    tuned = inst.load_instruction_model(out)
    assert tuned.prompt_format.name == "alpaca"
    assert (tuned.settings["data"], tuned.settings["lr"]) == ("book", 5e-5)  # the book's
    scores = json.loads((out / inst.SCORES_FILE).read_text())
    assert set(scores["baselines"]) == {"pretrained", "echo_instruction", "echo_input"}
    assert scores["fine_tuned"]["criterion_success"] is None
    assert 0.0 <= scores["fine_tuned"]["rouge_l"] <= 1.0


# ---------------------------------------------------------------------------------------------
# finetune prefer: DPO from an instruction-tuned directory


def test_finetune_prefer_trains_with_dpo_and_scores_against_the_instruction_tuned_model(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys
):
    tuned = tmp_path / "tuned"
    assert finetune(base_checkpoint, tuned, "--data", "stories", "--max-examples", "8") == 0
    preferred = tmp_path / "preferred"
    assert main(["finetune", "prefer", "--base", str(tuned), "--out", str(preferred),
                 "--instructions", "12", "--samples", "2", "--batch-size", "2",
                 "--max-examples", "3", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "sampling 2 answers to each of 12 story instructions" in printed
    assert re.search(r"^\d+ DPO steps; reward margin of the last steps -?[\d.]+$", printed, re.M)
    model = inst.load_instruction_model(preferred)
    assert (model.settings["beta"], model.settings["lr"], model.settings["data"]) == (
        0.5, 5e-5, "stories")
    scores = json.loads((preferred / inst.SCORES_FILE).read_text())
    assert list(scores["baselines"]) == ["instruction_tuned", "echo_instruction", "echo_input"]
    for row in (scores["fine_tuned"], *scores["baselines"].values()):
        assert row["count"] == 3 and row["criterion_success"] is not None
    responses = inst.load_responses(preferred / inst.RESPONSES_FILE)
    assert all(response["task"] in TASKS for response in responses)


def test_finetune_prefer_needs_an_instruction_tuned_directory_and_valid_options(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys
):
    out = str(tmp_path / "out")
    assert main(["finetune", "prefer", "--base", str(base_checkpoint), "--out", out]) == 2
    assert "is not an instruction-tuned model" in capsys.readouterr().err
    for option, value in (("--beta", "0"), ("--samples", "0"), ("--lr", "nan")):
        assert main(["finetune", "prefer", "--base", str(base_checkpoint), "--out", out,
                     option, value]) == 2
        message = capsys.readouterr().err
        assert option in message and message.count("\n") == 1
