"""bench/chaos.py at the CI size: 3 SIGKILLs of a trainer, and 3 jobs through 3 SIGKILL/restarts of
the operator. The full run (20 + 20) is the bench's; its figures are in bench/README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubetune_bench_chaos", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_three_trainer_kills_and_three_operator_kills_converge(tmp_path: Path) -> None:
    bench = chaos()
    trainer, ops = bench.run(trainer_kills=3, jobs=3, operator_kills=3, seed=3, workdir=tmp_path)
    print("\n" + bench.report(trainer, ops))
    assert len(trainer.kills) == 3 and all(0 <= k.lost <= bench.CHECKPOINT_EVERY for k in trainer.kills), trainer
    assert trainer.problems() == [], bench.report(trainer, ops)
    assert ops.kills == 3 and ops.succeeded == 3
    assert ops.problems() == [], bench.report(trainer, ops)
    assert ops.trainer_jobs == ops.attempts >= 3
