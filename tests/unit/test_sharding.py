"""sharding.resolve (which strategy a run uses) and checkpoint.rescale_position (resuming with
another number of ranks); the collectives themselves run in tests/integration/test_distributed.py."""

from __future__ import annotations

import pytest

from kubetune_api.spec import Sharding
from kubetune_trainer.checkpoint import TrainState, rescale_position
from kubetune_trainer.sharding import resolve

GIB = 2**30


@pytest.mark.parametrize(
    ("requested", "world", "estimate", "gpu", "expected"),
    [
        (Sharding.FSDP, 1, None, None, "single"),  # one process: nothing to share
        (Sharding.AUTO, 1, 200 * GIB, 80 * GIB, "single"),
        (Sharding.FSDP, 2, None, None, "fsdp"),
        (Sharding.DDP, 8, 200 * GIB, 80 * GIB, "ddp"),  # asked for: kept, the planner warns
        (Sharding.AUTO, 8, 200 * GIB, 80 * GIB, "fsdp"),  # a full copy does not fit
        (Sharding.AUTO, 8, 60 * GIB, 80 * GIB, "ddp"),
        (Sharding.AUTO, 8, 75 * GIB, 80 * GIB, "fsdp"),  # inside the 10% headroom
        (Sharding.AUTO, 2, None, None, "ddp"),  # CPU: no GPU to compare with
    ],
)
def test_resolve(requested: Sharding, world: int, estimate: int | None, gpu: int | None, expected: str) -> None:
    assert resolve(requested, world, estimate, gpu) == expected


def test_a_resume_with_smaller_micro_batches_continues_after_the_same_sequences() -> None:
    """Saved by 2 ranks x 4 (8 sequences a micro-batch) after 3 micro-batches: 24 sequences done,
    which is 6 micro-batches of 1 rank x 4."""
    state = rescale_position(TrainState(micro_batch=3, global_micro_batch=8), 4)
    assert (state.micro_batch, state.global_micro_batch) == (6, 4)
    again = rescale_position(TrainState(micro_batch=6, global_micro_batch=4), 8)
    assert again.micro_batch == 3


def test_a_checkpoint_from_before_keeps_its_position() -> None:
    state = rescale_position(TrainState(micro_batch=5, global_micro_batch=0), 16)
    assert (state.micro_batch, state.global_micro_batch) == (5, 16)


def test_full_state_round_trips_even_for_an_adapter_tensor_that_never_got_a_gradient() -> None:
    """Families with layers the forward pass skips (an unused indexer) leave some adapter tensors
    without optimizer state; resuming must not fail on them (it did, in the family matrix)."""
    import torch

    from kubetune_trainer.sharding import load_optimizer_state, load_trainable_state, optimizer_state, trainable_state

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"used": torch.nn.Linear(4, 4), "skipped": torch.nn.Linear(4, 4)})
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)

    model, optimizer = build()
    model["used"](torch.ones(2, 4)).sum().backward()
    optimizer.step()
    params, state = trainable_state(model), optimizer_state(model, optimizer)
    fresh, fresh_optimizer = build()
    load_trainable_state(fresh, params)
    load_optimizer_state(fresh, fresh_optimizer, state)
    for name, tensor in fresh.named_parameters():
        assert torch.equal(tensor, params[name])
    restored, saved = fresh_optimizer.state[fresh["used"].weight], optimizer.state[model["used"].weight]
    assert float(restored["step"]) == 1.0
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(restored[moment], saved[moment])


def test_a_checkpoint_missing_an_adapter_tensor_is_refused_by_name() -> None:
    import torch

    from kubetune_trainer.sharding import load_trainable_state

    model = torch.nn.Linear(2, 2)
    with pytest.raises(KeyError, match=r"lacks 1 adapter tensors, e\.g\. bias"):
        load_trainable_state(model, {"weight": torch.zeros(2, 2)})
