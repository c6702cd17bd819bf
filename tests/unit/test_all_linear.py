"""`all-linear` resolution (modeling.all_linear_targets) on hand-made modules: each exclusion rule alone.

The real families are in tests/integration/test_model_families.py; these are the rules, fast."""

from __future__ import annotations

import torch
from torch import nn

from kubetune_trainer.modeling import all_linear_targets


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.down_proj = nn.Linear(4, 4)


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.zeros(2, 8, 4))  # fused, 3-D: not a Linear


class MoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 2)  # the router
        self.experts = Experts()
        self.shared_expert = Block()


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.mlp = MoE()


def test_leaf_names_when_they_select_exactly_the_targets() -> None:
    model = nn.Module()
    model.layers = nn.ModuleList([Block(), Block()])
    assert all_linear_targets(model) == ["down_proj", "q_proj"]


def test_nothing_inside_a_moe_block_router_and_shared_expert_included() -> None:
    # the shared expert's q_proj/down_proj share leaf names with adapted layers: full names are needed
    assert set(all_linear_targets(Toy())) == {
        "layers.0.q_proj",
        "layers.0.down_proj",
        "layers.1.q_proj",
        "layers.1.down_proj",
    }


def test_tied_weights_are_left_out() -> None:
    first, second = Block(), Block()
    second.q_proj.weight = first.q_proj.weight
    model = nn.Module()
    model.layers = nn.ModuleList([first, second])
    assert all_linear_targets(model) == ["down_proj"]


def test_layers_the_forward_pass_never_calls_are_left_out() -> None:
    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    assert all_linear_targets(model, called={"layers.0.q_proj"}) == ["q_proj"]
