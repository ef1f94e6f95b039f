"""Loss, perplexity, the optimizer and the training loop: determinism, exact resumption,
evaluation, gradient clipping, bfloat16 autocast and callbacks (tiny model, a few steps)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from llmcourse import training
from llmcourse.checkpoints import save_checkpoint
from llmcourse.errors import ConfigError, CourseError, TrainingError
from llmcourse.evaluation import evaluate_loss, perplexity
from llmcourse.model import GPT, PRESETS, GPTConfig, count_parameters
from llmcourse.optimizer import fused_adamw_unsupported_reason, make_optimizer, weight_decay_groups
from llmcourse.schedules import warmup_cosine_lr, warmup_cosine_scheduler
from llmcourse.sliding_window import SlidingWindowDataset, create_dataloader
from llmcourse.training import (
    EvalRecord,
    StepState,
    TrainingConfig,
    TrainingHistory,
    TrainingInterrupted,
    train,
    train_step,
)
from llmcourse.training_memory import estimate_training_memory

TINY = GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
TOKENS = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(1))
BATCH, CONTEXT = 25, 16  # 105 training windows -> 4 batches per epoch


# A run of 11 tokens repeated: easy to learn, and windows of 16 see it at every phase.
REPEATING = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:11].repeat(180)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def make_loaders(tokens: torch.Tensor = TOKENS) -> tuple[DataLoader, DataLoader]:
    train_data = SlidingWindowDataset(tokens[:1700], CONTEXT, CONTEXT)
    val_data = SlidingWindowDataset(tokens[1700:], CONTEXT, CONTEXT)
    return (
        create_dataloader(train_data, batch_size=BATCH, seed=5),
        create_dataloader(val_data, batch_size=4, seed=5),
    )


def quick_config(**overrides: object) -> TrainingConfig:
    settings = dict(max_steps=12, eval_every=3, eval_batches=2, warmup_steps=2, progress=False)
    return TrainingConfig(**{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# Loss and perplexity


class FixedLogits(nn.Module):
    """A stand-in model that returns given logits for every batch, and records its calls."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.calls: list[tuple[bool, bool]] = []  # (training mode, gradients enabled)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.logits, GPT.loss(self.logits, targets)


def test_model_loss_is_the_hand_computed_cross_entropy() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # (B=1, T=2, V=3)
    targets = torch.tensor([[2, 0]])
    # -log softmax: position 0 picks the largest logit, position 1 is uniform over 3 tokens
    position_0 = math.log(math.e + math.e**2 + math.e**3) - 3.0
    position_1 = math.log(3.0)
    expected = (position_0 + position_1) / 2
    assert GPT.loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_evaluate_loss_averages_batches_in_eval_mode_without_gradients() -> None:
    model = FixedLogits(torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]))
    inputs = torch.zeros(1, 2, dtype=torch.long)
    batches = [(inputs, torch.tensor([[2, 0]])), (inputs, torch.tensor([[0, 1]]))]
    loss_a = (math.log(math.e + math.e**2 + math.e**3) - 3.0 + math.log(3.0)) / 2
    loss_b = (math.log(math.e + math.e**2 + math.e**3) - 1.0 + math.log(3.0)) / 2
    model.train()

    assert evaluate_loss(model, batches) == pytest.approx((loss_a + loss_b) / 2, rel=1e-6)
    assert model.calls == [(False, False), (False, False)]
    assert model.training  # mode restored
    assert evaluate_loss(model, batches, max_batches=1) == pytest.approx(loss_a, rel=1e-6)
    assert len(model.calls) == 3
    model.eval()
    evaluate_loss(model, batches)
    assert not model.training


def test_evaluate_loss_rejects_an_empty_loader_and_bad_max_batches() -> None:
    model = FixedLogits(torch.zeros(1, 2, 3))
    with pytest.raises(TrainingError, match="no batches"):
        evaluate_loss(model, [])
    with pytest.raises(ValueError, match="max_batches"):
        evaluate_loss(model, [(torch.zeros(1, 2), torch.zeros(1, 2))], max_batches=0)


def test_perplexity_is_exp_of_the_loss() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(64)) == pytest.approx(64.0, rel=1e-12)
    assert perplexity(torch.tensor(2.0)) == pytest.approx(math.e**2, rel=1e-6)
    assert perplexity(1e6) == math.inf


# ---------------------------------------------------------------------------------------------
# Settings and optimizer


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(), "exactly one of max_steps and epochs"),
        (dict(max_steps=5, epochs=1), "exactly one of max_steps and epochs"),
        (dict(max_steps=0), "max_steps must be >= 1"),
        (dict(max_steps=5, autocast_dtype=torch.float16), "float16 would need loss scaling"),
        (dict(max_steps=5, checkpoint_every=2), "needs a checkpoint_dir"),
        (dict(max_steps=5, grad_clip=0.0), "grad_clip must be > 0"),
        (dict(max_steps=5, min_lr_ratio=1.5), "min_lr_ratio must lie in"),
    ],
)
def test_invalid_settings_are_rejected(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        TrainingConfig(**settings)
    assert isinstance(error.value, CourseError)


def test_total_steps_from_epochs_or_max_steps() -> None:
    assert TrainingConfig(epochs=3).total_steps(batches_per_epoch=4) == 12
    assert TrainingConfig(max_steps=7).total_steps(batches_per_epoch=4) == 7


def test_weight_decay_only_on_matrices_and_embeddings() -> None:
    model = make_model()
    optimizer = make_optimizer(model, TrainingConfig(max_steps=1, weight_decay=0.1))
    names = {id(p): name for name, p in model.named_parameters()}
    decayed_group, plain_group = optimizer.param_groups
    matrices = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    vectors = {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"}
    vectors |= {"attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"}

    assert decayed_group["weight_decay"] == 0.1 and plain_group["weight_decay"] == 0.0
    assert {names[id(p)] for p in decayed_group["params"]} == {
        "transformer.wte.weight",  # also the output layer (tied): listed once
        "transformer.wpe.weight",
    } | in_both_layers(matrices)
    assert {names[id(p)] for p in plain_group["params"]} == {
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    } | in_both_layers(vectors)
    counted = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert counted == model.num_parameters()


def in_both_layers(parts: set[str]) -> set[str]:
    return {f"transformer.h.{layer}.{part}" for layer in (0, 1) for part in parts}


def test_frozen_parameters_are_left_out_of_the_optimizer() -> None:
    model = make_model()
    model.transformer.wpe.weight.requires_grad_(False)
    decayed, _ = weight_decay_groups(model)
    assert all(p is not model.transformer.wpe.weight for p in decayed)


def test_fused_adamw_is_used_on_cpu_when_available() -> None:
    model = make_model()
    assert fused_adamw_unsupported_reason(model.parameters()) is None
    assert make_optimizer(model, TrainingConfig(max_steps=1)).param_groups[0]["fused"] is True
    unfused = make_optimizer(model, TrainingConfig(max_steps=1, fused_optimizer=False))
    assert not unfused.param_groups[0]["fused"]


def test_fused_adamw_falls_back_with_a_reason_where_unsupported() -> None:
    model = make_model().to("meta")
    reason = fused_adamw_unsupported_reason(model.parameters())
    assert reason is not None and "meta" in reason
    with pytest.warns(RuntimeWarning, match="using the default AdamW: fused AdamW does not"):
        optimizer = make_optimizer(model, TrainingConfig(max_steps=1))
    assert not optimizer.param_groups[0]["fused"]
    with pytest.raises(ConfigError, match="meta"):
        make_optimizer(model, TrainingConfig(max_steps=1, fused_optimizer=True))


def test_gradient_clipping_caps_the_global_norm() -> None:
    def gradient_norm_after_step(grad_clip: float | None) -> float:
        model = make_model()
        config = TrainingConfig(max_steps=1, grad_clip=grad_clip)
        optimizer = make_optimizer(model, config)
        scheduler = warmup_cosine_scheduler(
            optimizer, warmup_steps=0, total_steps=1, min_lr_ratio=1.0
        )
        batch = next(iter(make_loaders()[0]))
        train_step(model, optimizer, scheduler, batch, config, torch.device("cpu"))
        return torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
        ).item()

    raw_norm = gradient_norm_after_step(None)
    assert raw_norm > 0.01
    assert gradient_norm_after_step(0.01) == pytest.approx(0.01, rel=1e-4)
    assert gradient_norm_after_step(raw_norm * 2) == pytest.approx(raw_norm, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# The training loop


def test_training_reduces_the_loss_on_a_repeating_text() -> None:
    train_loader, val_loader = make_loaders(REPEATING)
    model = make_model(config=replace(TINY, dropout=0.0))
    config = quick_config(max_steps=40, eval_every=20, learning_rate=1e-2, warmup_steps=5)
    history = train(model, train_loader, val_loader, config)

    first, last = history.evals[0], history.evals[-1]
    assert [record.step for record in history.evals] == [20, 40]
    assert history.train_losses[0] > 3.5  # about ln(64): an untrained model guesses uniformly
    assert last.val_loss < 0.5 and last.train_loss < 0.5
    assert last.val_loss < first.val_loss


def test_history_counts_steps_tokens_rates_and_time() -> None:
    history = train(make_model(), *make_loaders(), quick_config(min_lr_ratio=0.5))
    assert history.steps == list(range(1, 13))
    assert history.tokens_seen == 12 * BATCH * CONTEXT
    assert history.elapsed_seconds > 0
    assert history.tokens_per_second == pytest.approx(history.tokens_seen / history.elapsed_seconds)
    expected_rates = [
        warmup_cosine_lr(s, max_lr=4e-4, warmup_steps=2, total_steps=12, min_lr=2e-4)
        for s in range(12)
    ]
    assert history.learning_rates == pytest.approx(expected_rates, rel=1e-12)
    assert [record.step for record in history.evals] == [3, 6, 9, 12]
    assert [record.tokens_seen for record in history.evals] == [
        s * BATCH * CONTEXT for s in (3, 6, 9, 12)
    ]
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.val_loss) for r in history.evals)


def test_epochs_setting_runs_whole_epochs_and_sets_the_sampler_epoch() -> None:
    dataset = SlidingWindowDataset(TOKENS[:1700], CONTEXT, CONTEXT)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)
    history = train(make_model(), loader, None, quick_config(max_steps=None, epochs=3))
    assert len(history.steps) == 3 * len(loader) == 12
    assert sampler.epoch == 2  # set before each of the epochs 0, 1, 2
    assert all(record.val_loss is None for record in history.evals)


def test_same_seed_same_losses_other_seed_other_losses() -> None:
    first = train(make_model(), *make_loaders(), quick_config(seed=7))
    again = train(make_model(), *make_loaders(), quick_config(seed=7))
    other = train(make_model(), *make_loaders(), quick_config(seed=8))
    assert first.train_losses == again.train_losses
    assert first.evals == again.evals
    assert first.train_losses != other.train_losses


def test_evaluating_more_often_does_not_change_training() -> None:
    rarely = train(make_model(), *make_loaders(), quick_config(eval_every=100))
    always = train(make_model(), *make_loaders(), quick_config(eval_every=1))
    assert rarely.train_losses == always.train_losses
    assert len(always.evals) == 12 and len(rarely.evals) == 1


class Crash(Exception):
    """Stands for the process dying mid-run."""


class CrashAtStep:
    def __init__(self, step: int):
        self.step = step

    def on_step(self, state: StepState) -> None:
        if state.step == self.step:
            raise Crash


@pytest.mark.parametrize(
    "checkpoint_step",
    [5, 4],  # 4 batches per epoch: step 5 is mid-epoch, step 4 ends an epoch
)
def test_resume_continues_with_exactly_the_uninterrupted_losses(
    tmp_path: Path, checkpoint_step: int
) -> None:
    config = quick_config(checkpoint_every=checkpoint_step, checkpoint_dir=tmp_path / "ckpt")
    uninterrupted = train(make_model(), *make_loaders(), quick_config())

    with pytest.raises(Crash):
        train(make_model(), *make_loaders(), config, callbacks=[CrashAtStep(checkpoint_step + 1)])
    torch.manual_seed(1234)  # a new process: other random state, other initial weights
    resumed = train(make_model(seed=99), *make_loaders(), config, resume_from=tmp_path / "ckpt")

    assert len(resumed.train_losses) == 12  # 12 steps = 3 epochs: resumes across boundaries
    assert resumed.train_losses == uninterrupted.train_losses  # bitwise, with dropout on
    assert resumed.learning_rates == uninterrupted.learning_rates
    assert resumed.evals == uninterrupted.evals
    assert resumed.tokens_seen == uninterrupted.tokens_seen


def test_resume_with_a_distributed_sampler(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        dataset = SlidingWindowDataset(TOKENS[:1700], CONTEXT, CONTEXT)
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
        return DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)

    config = quick_config(max_steps=8, checkpoint_every=3, checkpoint_dir=tmp_path / "ckpt")
    uninterrupted = train(make_model(), loader(), None, quick_config(max_steps=8))
    with pytest.raises(Crash):
        train(make_model(), loader(), None, config, callbacks=[CrashAtStep(7)])
    resumed = train(make_model(), loader(), None, config, resume_from=tmp_path / "ckpt")
    assert resumed.train_losses == uninterrupted.train_losses


def test_checkpoint_of_a_run_loads_with_weights_only(tmp_path: Path) -> None:
    config = quick_config(max_steps=6, checkpoint_dir=tmp_path / "ckpt")
    history = train(make_model(), *make_loaders(), config)
    state = torch.load(tmp_path / "ckpt" / "training_state.pt", weights_only=True)
    training = state["training"]
    assert training["data"]["epoch"] == 1 and training["data"]["batch_in_epoch"] == 2
    assert TrainingHistory.from_dict(training["history"]) == history
    assert training["settings"]["max_steps"] == 6
    assert set(training["rng"]) == {"torch", "cuda", "python", "numpy", "loaders"}


def test_resume_refuses_other_settings_other_data_or_a_model_only_checkpoint(
    tmp_path: Path,
) -> None:
    config = quick_config(max_steps=4, checkpoint_dir=tmp_path / "ckpt")
    train(make_model(), *make_loaders(), config)

    with pytest.raises(TrainingError, match=r"learning_rate: saved 0\.0004, now 0\.001\)"):
        other = quick_config(max_steps=4, learning_rate=1e-3, checkpoint_dir=tmp_path / "ckpt")
        train(make_model(), *make_loaders(), other, resume_from=tmp_path / "ckpt")
    short_loader = create_dataloader(
        SlidingWindowDataset(TOKENS[:900], CONTEXT, CONTEXT), batch_size=BATCH, seed=5
    )
    with pytest.raises(TrainingError, match="2 batches per epoch.*had 4"):
        train(make_model(), short_loader, None, config, resume_from=tmp_path / "ckpt")

    save_checkpoint(tmp_path / "model_only", make_model())
    with pytest.raises(TrainingError, match="holds a model only"):
        train(make_model(), *make_loaders(), config, resume_from=tmp_path / "model_only")


def test_bfloat16_autocast_tracks_float32() -> None:
    config = quick_config(max_steps=30, eval_every=30, learning_rate=2e-3)
    float32 = train(make_model(), *make_loaders(REPEATING), config)
    bfloat16_config = quick_config(
        max_steps=30, eval_every=30, learning_rate=2e-3, autocast_dtype=torch.bfloat16
    )
    bfloat16 = train(make_model(), *make_loaders(REPEATING), bfloat16_config)

    assert bfloat16.train_losses != float32.train_losses  # autocast really changed the arithmetic
    assert bfloat16.train_losses[-1] == pytest.approx(float32.train_losses[-1], rel=0.01)
    assert bfloat16.evals[-1].val_loss == pytest.approx(float32.evals[-1].val_loss, rel=0.01)
    assert float32.train_losses[-1] < 0.7 * float32.train_losses[0]  # it did learn


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_step(self, state: StepState) -> None:
        self.events.append(("step", state))

    def on_eval(self, record: EvalRecord) -> None:
        self.events.append(("eval", record))

    def on_end(self, history: TrainingHistory) -> None:
        self.events.append(("end", history))


class EvalOnly:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_eval(self, record: EvalRecord) -> None:
        self.steps.append(record.step)


def test_callbacks_receive_every_event_in_order() -> None:
    recorder, eval_only = Recorder(), EvalOnly()
    config = quick_config(max_steps=5, eval_every=2)
    history = train(make_model(), *make_loaders(), config, callbacks=[recorder, eval_only])

    kinds = [(kind, getattr(payload, "step", None)) for kind, payload in recorder.events]
    assert kinds == [
        ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4),
        ("step", 5), ("eval", 5), ("end", None),
    ]  # fmt: skip
    assert eval_only.steps == [2, 4, 5]
    steps = [payload for kind, payload in recorder.events if kind == "step"]
    assert [s.loss for s in steps] == history.train_losses
    assert [s.lr for s in steps] == history.learning_rates
    assert [s.epoch for s in steps] == [0, 0, 0, 0, 1]
    assert [s.tokens_seen for s in steps] == [n * BATCH * CONTEXT for n in range(1, 6)]
    assert all(s.total_steps == 5 for s in steps)
    assert [payload for kind, payload in recorder.events if kind == "eval"] == history.evals
    assert recorder.events[-1][1] is history


# ---------------------------------------------------------------------------------------------
# Errors a user can fix


def test_training_memory_estimate_adds_weights_gradients_adamw_and_activations() -> None:
    config = PRESETS["gpt2-small"]
    parameters = count_parameters(config)
    estimate = estimate_training_memory(config, batch_size=8, sequence_length=1024)
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (
        4 * parameters, 4 * parameters, 8 * parameters
    )
    per_token = 12 * 19 * 768 + 4 * 50257  # 19 x n_embd per layer, 4 per vocabulary entry
    assert estimate.activations == 8 * 1024 * per_token * 4
    assert estimate.total == 16 * parameters + estimate.activations
    # activations grow with the batch and the context, the rest does not
    twice = estimate_training_memory(config, batch_size=16, sequence_length=1024)
    assert twice.activations == 2 * estimate.activations and twice.weights == estimate.weights
    assert estimate_training_memory(config, 8).activations == estimate.activations  # full context
    frozen = estimate_training_memory(config, 8, parameters=parameters, trainable=1000)
    assert (frozen.gradients, frozen.optimizer) == (4000, 8000)
    assert estimate.describe().startswith(f"about {estimate.total / 2**30:.1f} GiB (weights 0.5, ")
    with pytest.raises(ConfigError, match="batch_size"):
        estimate_training_memory(config, 0)


def test_an_allocation_failure_in_a_step_says_what_the_run_needs(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 107374182400 bytes. Error "
                           "code 12 (Cannot allocate memory)")

    monkeypatch.setattr(training, "train_step", refuse)
    with pytest.raises(TrainingError) as raised:
        train(make_model(), *make_loaders(), quick_config())
    message = str(raised.value)
    assert isinstance(raised.value, CourseError) and "\n" not in message
    assert "out of memory on cpu in a training step (it asked for 100.0 GiB more)" in message
    assert f"a batch of {BATCH} sequences of {CONTEXT} tokens needs about " in message
    assert "by a rough estimate" in message
    assert "lower the batch size (--batch-size) or the context length (--context-length)" in message

    def other_failure(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(training, "train_step", other_failure)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train(make_model(), *make_loaders(), quick_config())


def ignored_targets_loader() -> DataLoader:
    inputs = torch.randint(0, 64, (4, CONTEXT), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(inputs, torch.full_like(inputs, -100)), batch_size=2)


def test_a_batch_without_any_target_is_explained_not_trained_on_as_nan() -> None:
    with pytest.raises(TrainingError, match="a training batch has no target to learn from: all "
                       "its 32 targets are -100") as raised:
        train(make_model(), ignored_targets_loader(), None, quick_config(max_steps=2))
    assert "prompt under prompt masking" in str(raised.value)
    with pytest.raises(TrainingError, match="an evaluation batch has no target to learn from"):
        evaluate_loss(make_model(), ignored_targets_loader())


def test_an_interrupted_run_says_which_step_its_checkpoint_holds(tmp_path: Path) -> None:
    class StopAt:
        def on_step(self, state: StepState) -> None:
            if state.step == 5:
                raise KeyboardInterrupt

    config = quick_config(checkpoint_every=2, checkpoint_dir=tmp_path / "run", eval_every=100)
    with pytest.raises(TrainingInterrupted) as raised:
        train(make_model(), *make_loaders(), config, callbacks=[StopAt()])
    interrupt = raised.value
    assert isinstance(interrupt, KeyboardInterrupt)
    assert (interrupt.steps_done, interrupt.total_steps, interrupt.checkpoint_step) == (5, 12, 4)
    assert str(interrupt).startswith("training interrupted after step 5 of 12; the last "
                                     f"checkpoint, of step 4, is in {tmp_path / 'run'}")
    without = quick_config(eval_every=100)
    with pytest.raises(TrainingInterrupted, match="no checkpoint of this run was written"):
        train(make_model(), *make_loaders(), without, callbacks=[StopAt()])
