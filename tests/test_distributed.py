"""Multi-process training: the global-batch sampler, the single-process context, and real runs of
two CPU processes (gloo) under torchrun, compared with one-process runs.

Starting torch in a process takes seconds, so one ``torchrun --nproc_per_node=2`` on this very
file does all the two-process work: its ``__main__`` block trains in each process, saves what the
process holds, and last runs the ``llmcourse pretrain`` command (the console script's entry point).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from llmcourse.checkpoints import CHECKPOINT_FILES, load_checkpoint
from llmcourse.cli import main
from llmcourse.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    average_over_processes,
    barrier,
    cleanup,
    current_context,
    distributed_loader,
    gather_from_processes,
    init_distributed,
    is_main_process,
    wrap_model,
)
from llmcourse.errors import ConfigError, CourseError, DataError, TrainingError
from llmcourse.model import GPT, GPTConfig
from llmcourse.sliding_window import SlidingWindowDataset
from llmcourse.training import StepState, TrainingConfig, TrainingHistory, train

# No query/key/value bias: the key bias' gradient is zero up to rounding (softmax ignores a shift
# shared by all keys) and Adam scales that rounding noise up to whole steps, so its value would
# differ between any two summation orders, with no effect on the model's output.
TINY = GPTConfig(
    vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, qkv_bias=False
)
CONTEXT, GLOBAL_BATCH, STEPS = 16, 8, 6
TOKENS = torch.randint(0, 64, (800,), generator=torch.Generator().manual_seed(3))
# 37 training windows: 4 global batches of 8 per epoch, so steps 5 and 6 start a second epoch;
# 12 validation windows: a batch of 8 and a short one of 4, which splits evenly in 2 processes.
TRAIN_TOKENS, VAL_TOKENS = TOKENS[:600], TOKENS[600:]
DROPOUT = 0.1  # in the resumed runs: each process must get back its own dropout stream
PRETRAIN_ARGUMENTS = ["pretrain", "the-verdict", "--preset", "course-tiny", "--context-length",
                      "16", "--steps", "3", "--batch-size", "4", "--max-characters", "3000",
                      "--eval-every", "2", "--eval-batches", "2", "--lr", "1e-2"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The global batches


def rank_batches(sampler: GlobalBatchSampler) -> list[list[int]]:
    """The sampler's indices cut into its per-process batches (the last may be shorter)."""
    indices, size = list(sampler), sampler.per_process_batch_size
    assert len(indices) == len(sampler)
    return [indices[start : start + size] for start in range(0, len(indices), size)]


def global_batches_from_ranks(world_size: int, **settings: object) -> list[list[int]]:
    """Step k's global batch as the processes read it: rank 0's k-th batch, then rank 1's..."""
    per_rank = [
        rank_batches(GlobalBatchSampler(rank=rank, world_size=world_size, **settings))
        for rank in range(world_size)
    ]
    return [sum(step, []) for step in zip(*per_rank, strict=True)]


def test_each_rank_reads_a_contiguous_slice_of_every_global_batch() -> None:
    settings = dict(dataset_size=10, global_batch_size=4, shuffle=False)
    assert list(GlobalBatchSampler(rank=0, world_size=2, **settings)) == [0, 1, 4, 5]
    assert list(GlobalBatchSampler(rank=1, world_size=2, **settings)) == [2, 3, 6, 7]
    unpadded = dict(settings, drop_last=False)
    assert list(GlobalBatchSampler(rank=1, world_size=2, **unpadded)) == [2, 3, 6, 7, 9]
    # a short last batch [8] is padded from the start of the order until it splits evenly
    padded = dict(dataset_size=9, global_batch_size=4, shuffle=False, drop_last=False)
    assert global_batches_from_ranks(2, **padded) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 0]]
    assert global_batches_from_ranks(4, **padded) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 0, 1, 2]]
    assert global_batches_from_ranks(1, **padded)[-1] == [8]


@pytest.mark.parametrize("epoch", [0, 1])
def test_global_batches_are_the_same_for_any_number_of_processes(epoch: int) -> None:
    settings = dict(dataset_size=37, global_batch_size=8, seed=5)
    single = GlobalBatchSampler(**settings)
    single.set_epoch(epoch)
    expected = rank_batches(single)
    assert len(expected) == 4 and all(len(batch) == 8 for batch in expected)  # 5 dropped
    assert len(set(sum(expected, []))) == 32  # no example twice in an epoch

    for world_size in (2, 4, 8):
        samplers = [
            GlobalBatchSampler(rank=rank, world_size=world_size, **settings)
            for rank in range(world_size)
        ]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        per_rank = [rank_batches(sampler) for sampler in samplers]
        assert [sum(step, []) for step in zip(*per_rank, strict=True)] == expected


def test_the_order_comes_from_the_seed_and_the_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = GlobalBatchSampler(dataset_size=37, global_batch_size=8, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(5, 0) == order(5, 0)
    assert order(5, 0) != order(5, 1)
    assert order(5, 0) != order(6, 0)
    assert order(5, 1) != order(6, 0)  # (seed, epoch) pairs do not collide as seed + epoch would


def test_the_loaders_of_two_ranks_together_yield_the_single_process_batches() -> None:
    dataset = SlidingWindowDataset(TRAIN_TOKENS, CONTEXT, CONTEXT)
    single = distributed_loader(dataset, GLOBAL_BATCH, DistributedContext(), seed=11)
    ranks = [
        distributed_loader(dataset, GLOBAL_BATCH, DistributedContext(rank, 2), seed=11)
        for rank in (0, 1)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    for (inputs, targets), *shares in zip(single, *ranks, strict=True):
        assert inputs.shape == (GLOBAL_BATCH, CONTEXT)
        assert all(share[0].shape == (GLOBAL_BATCH // 2, CONTEXT) for share in shares)
        assert torch.equal(torch.cat([share[0] for share in shares]), inputs)
        assert torch.equal(torch.cat([share[1] for share in shares]), targets)


def test_an_indivisible_global_batch_or_too_small_a_dataset_is_refused() -> None:
    dataset = SlidingWindowDataset(TRAIN_TOKENS, CONTEXT, CONTEXT)
    with pytest.raises(ConfigError, match="9 examples does not split evenly among 2") as error:
        distributed_loader(dataset, 9, DistributedContext(rank=0, world_size=2))
    assert isinstance(error.value, CourseError) and "multiple of 2" in str(error.value)
    with pytest.raises(DataError, match="37 examples, fewer than one global batch of 40"):
        distributed_loader(dataset, 40, DistributedContext())


# ---------------------------------------------------------------------------------------------
# One process: everything is a no-op


def test_without_torchrun_the_context_is_a_single_process(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed()
    assert (context.rank, context.world_size, context.backend) == (0, 1, None)
    assert not context.is_distributed and context.is_main and is_main_process()
    model = GPT(TINY)
    assert wrap_model(model, context) is model
    assert average_over_processes(1.25) == 1.25
    assert gather_from_processes({"a": 1}) == [{"a": 1}]
    barrier()
    cleanup()


def test_a_half_set_environment_fails_clearly(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="RANK.*not set.*torchrun") as error:
        init_distributed()
    assert isinstance(error.value, CourseError)


# ---------------------------------------------------------------------------------------------
# Two processes under torchrun


class Interrupted(Exception):
    """Stands for the processes being killed mid-run."""


class InterruptAt:
    def __init__(self, step: int):
        self.step = step

    def on_step(self, state: StepState) -> None:
        if state.step == self.step:
            raise Interrupted


def training_config(**overrides: object) -> TrainingConfig:
    settings = dict(max_steps=STEPS, eval_every=2, eval_batches=None, warmup_steps=1,
                    learning_rate=1e-3, seed=4, progress=False)  # fmt: skip
    return TrainingConfig(**{**settings, **overrides})


def train_tiny(
    dropout: float, config: TrainingConfig, init_seed: int = 0, **options: object
) -> tuple[GPT, TrainingHistory]:
    """Train a fresh tiny GPT in this process, on its share of the global batches."""
    context = current_context()
    torch.manual_seed(init_seed)
    model = GPT(replace(TINY, dropout=dropout))
    train_set = SlidingWindowDataset(TRAIN_TOKENS, CONTEXT, CONTEXT)
    val_set = SlidingWindowDataset(VAL_TOKENS, CONTEXT, CONTEXT)
    train_loader = distributed_loader(train_set, GLOBAL_BATCH, context, seed=11)
    val_loader = distributed_loader(val_set, GLOBAL_BATCH, context, shuffle=False, drop_last=False)
    history = train(model, train_loader, val_loader, config, **options)
    return model, history


def save_run(path: Path, model: GPT, history: TrainingHistory) -> None:
    params = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    torch.save({"params": params, "history": history.to_dict()}, path)


def work_in_every_process(out: Path, with_pretrain: bool) -> None:
    """The ``__main__`` block, run by each torchrun process: trains, saves ``<run>_rank<r>.pt``,
    then runs ``llmcourse pretrain`` into ``out/pretrained`` when ``with_pretrain``."""
    rank = init_distributed().rank
    try:
        save_run(out / f"plain_rank{rank}.pt", *train_tiny(0.0, training_config()))
        save_run(out / f"dropout_rank{rank}.pt", *train_tiny(DROPOUT, training_config()))
        checkpointed = training_config(checkpoint_every=3, checkpoint_dir=out / "checkpoint")
        try:
            train_tiny(DROPOUT, checkpointed, callbacks=[InterruptAt(4)])
        except Interrupted:
            pass
        # other initial weights: only the checkpoint can bring the run back on track
        resumed = train_tiny(DROPOUT, checkpointed, init_seed=99, resume_from=out / "checkpoint")
        save_run(out / f"resumed_rank{rank}.pt", *resumed)
        if with_pretrain:  # last: the command leaves the process group when it is done
            assert main([*PRETRAIN_ARGUMENTS, "--out", str(out / "pretrained")]) == 0
    finally:
        cleanup()


@dataclass
class TwoProcessRun:
    out: Path  # what the processes saved
    stdout: str  # what they printed


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> TwoProcessRun:
    """Run this file under ``torchrun --standalone --nproc_per_node=2`` (a free port is picked)."""
    out = tmp_path_factory.mktemp("two_processes")
    mirror = os.environ.get("LLMCOURSE_DATA_MIRROR")
    with_pretrain = mirror is not None and Path(mirror).is_dir()  # for the tokenizer and corpus
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", __file__, str(out), str(with_pretrain)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo
    result = subprocess.run(
        command, cwd=out, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return TwoProcessRun(out, result.stdout)


def load_run(path: Path) -> tuple[dict[str, torch.Tensor], TrainingHistory]:
    saved = torch.load(path, weights_only=True)
    return saved["params"], TrainingHistory.from_dict(saved["history"])


def test_both_processes_hold_identical_parameters(two_processes: TwoProcessRun) -> None:
    for run in ("plain", "dropout", "resumed"):
        params_0, history_0 = load_run(two_processes.out / f"{run}_rank0.pt")
        params_1, history_1 = load_run(two_processes.out / f"{run}_rank1.pt")
        assert params_0.keys() == params_1.keys()
        assert all(torch.equal(params_0[name], params_1[name]) for name in params_0), run
        assert history_0.train_losses == history_1.train_losses  # averaged over the processes
        assert history_0.evals == history_1.evals


def test_two_processes_train_like_one_process_on_the_same_global_batches(
    two_processes: TwoProcessRun,
) -> None:
    params, history = load_run(two_processes.out / "plain_rank0.pt")
    model, single = train_tiny(0.0, training_config())

    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(params[name], tensor, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    untrained = GPT(TINY).state_dict()
    moved = max((params[name] - untrained[name]).abs().max().item() for name in params)
    assert moved > 1e-3  # training moved the weights far beyond the tolerance
    assert history.train_losses == pytest.approx(single.train_losses, rel=1e-6)
    assert history.steps == single.steps == list(range(1, STEPS + 1))
    assert history.tokens_seen == single.tokens_seen == STEPS * GLOBAL_BATCH * CONTEXT
    assert [record.step for record in history.evals] == [2, 4, 6]
    for distributed_eval, single_eval in zip(history.evals, single.evals, strict=True):
        assert distributed_eval.train_loss == pytest.approx(single_eval.train_loss, rel=1e-6)
        assert distributed_eval.val_loss == pytest.approx(single_eval.val_loss, rel=1e-6)


def test_a_resumed_distributed_run_continues_exactly(two_processes: TwoProcessRun) -> None:
    _, uninterrupted = load_run(two_processes.out / "dropout_rank0.pt")
    _, resumed = load_run(two_processes.out / "resumed_rank0.pt")
    _, without_dropout = load_run(two_processes.out / "plain_rank0.pt")
    assert uninterrupted.train_losses != without_dropout.train_losses  # dropout was on
    assert resumed.train_losses == uninterrupted.train_losses  # bitwise, steps 4 to 6 included
    assert resumed.evals == uninterrupted.evals
    assert resumed.learning_rates == uninterrupted.learning_rates


def test_the_checkpoint_holds_the_plain_model_and_every_process_random_state(
    two_processes: TwoProcessRun,
) -> None:
    params, _ = load_run(two_processes.out / "resumed_rank0.pt")
    checkpoint = load_checkpoint(two_processes.out / "checkpoint")  # names without "module."
    saved = checkpoint.model.state_dict()
    assert all(torch.equal(saved[name], tensor) for name, tensor in params.items())
    state = checkpoint.training_state
    assert len(state["rng_of_other_ranks"]) == 1
    assert not torch.equal(state["rng"]["torch"], state["rng_of_other_ranks"][0]["torch"])
    assert state["history"]["steps"] == list(range(1, STEPS + 1))

    with pytest.raises(TrainingError, match=r"2 process\(es\), but this run has 1"):
        train_tiny(DROPOUT, training_config(), resume_from=two_processes.out / "checkpoint")


def test_the_pretrain_command_under_torchrun_matches_one_process(
    data_mirror: Path, two_processes: TwoProcessRun, tmp_path: Path
) -> None:
    assert two_processes.stdout.count("step 3: train loss") == 1  # printed by rank 0 only
    pretrained = two_processes.out / "pretrained"
    assert sorted(path.name for path in pretrained.iterdir()) == sorted(CHECKPOINT_FILES)
    assert not [path for path in two_processes.out.iterdir() if path.name.startswith(".")]
    assert main([*PRETRAIN_ARGUMENTS, "--out", str(tmp_path / "single")]) == 0

    two = load_checkpoint(pretrained).training_state
    one = load_checkpoint(tmp_path / "single").training_state
    assert len(two["rng_of_other_ranks"]) == 1 and one["rng_of_other_ranks"] == []
    two_history = TrainingHistory.from_dict(two["history"])
    one_history = TrainingHistory.from_dict(one["history"])
    assert two_history.steps == [1, 2, 3]
    assert two_history.tokens_seen == one_history.tokens_seen == 3 * 4 * 16
    assert two_history.train_losses == pytest.approx(one_history.train_losses, rel=1e-5)
    assert two_history.evals[-1].val_loss == pytest.approx(one_history.evals[-1].val_loss, rel=1e-5)


if __name__ == "__main__":
    torch.set_num_threads(1)
    work_in_every_process(Path(sys.argv[1]), with_pretrain=sys.argv[2] == "True")
