"""The model-family matrix: a tiny random model of every causal-LM family goes through `kubetune run`.

For each family in tests/model_zoo.py (dense, MoE, hybrid and attention-free):
  - `kubetune run` of a small job trains end to end and publishes an adapter;
  - the published adapter, reloaded with `PeftModel.from_pretrained`, gives the trained model's logits
    exactly (the trained model's logits are recorded in-process, at export, from the model that was saved);
  - merge_and_unload() equals base W + scale * B @ A for every adapted layer, computed here from the
    adapter's own tensors, and leaves every other weight untouched;
  - all-linear adapted exactly the family's projection layers (never the output head, never a MoE router);
  - the manifest says which attention ran and whether packing was used, and packing is never kept on an
    architecture where packed rows see each other (checked here independently on the base model).

`kubetune run` runs in-process (kubetune_trainer.cli.kubetune.main), so torch is imported once for the
whole matrix instead of once per family; each family's run is shared by its tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import QUICKSTART
from model_zoo import FAMILIES, build_tiny_model

pytestmark = pytest.mark.slow

TRAINABLE = sorted(name for name, family in FAMILIES.items() if family.refused is None)
ROWS = 24  # 18 train + 6 validation rows of the quickstart numbers
PROBE_SEED = 1234


@dataclass
class Trained:
    """One family's run: where things are, and what the trained model computed before export."""

    family: str
    model_dir: Path
    out: Path
    exit_code: int
    probe: torch.Tensor  # input ids the logits were recorded on
    logits: torch.Tensor | None  # the trained PEFT model's logits on `probe`, recorded at export
    manifest: dict[str, Any]


def probe_ids(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(3, vocab_size, (2, 24), generator=generator)


@torch.no_grad()
def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        # use_cache=False: with a cache, transformers does not treat the rows as independent sequences
        logits: torch.Tensor = model(input_ids=ids, use_cache=False).logits
        return logits.detach().clone()
    finally:
        model.train(was_training)


def job_manifest(family: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"family-{family.replace('_', '-')}"},
        "spec": {
            "baseModel": {"uri": "file://./model/"},
            "dataset": {"train": "./numbers.jsonl", "format": "completion", "validationSplit": 0.25},
            # the spec's default dropout (0.05) on purpose: PEFT refuses dropout on fused MoE experts
            "lora": {"r": 4, "alpha": 8, "targetModules": ["all-linear"]},
            "training": {
                "maxSteps": 2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "packing": True,
                "learningRate": 1.0e-2,  # large, so that two steps move every adapter weight visibly
                "gradientCheckpointing": False,
                "checkpointEverySteps": 100,
                "seed": 3,
            },
            "evaluation": {"exactMatch": False},
            "output": {"uri": "file://./out/"},
            "resources": {"gpus": 0},
        },
    }


_RUNS: dict[str, Trained] = {}


def train_family(family: str, root: Path) -> Trained:
    """Build the family's model, write the job, and `kubetune run` it in-process, recording logits at export."""
    from kubetune_trainer.cli import kubetune
    from kubetune_trainer.recipe import LoRAFinetuneRecipe

    workdir = root / family
    model_dir = build_tiny_model(family, workdir / "model")
    rows = (QUICKSTART / "numbers.jsonl").read_text().splitlines()[:ROWS]
    (workdir / "numbers.jsonl").write_text("\n".join(rows) + "\n")
    (workdir / "finetunejob.yaml").write_text(yaml.safe_dump(job_manifest(family)))

    vocab = json.loads((model_dir / "config.json").read_text()).get("vocab_size", 320)
    ids = probe_ids(min(int(vocab), 320))
    recorded: dict[str, torch.Tensor] = {}
    save_model = LoRAFinetuneRecipe._save_model

    def record_then_save(self: LoRAFinetuneRecipe, out: Path, session: Any, *rest: Any) -> None:
        recorded["logits"] = logits_of(session.accelerator.unwrap_model(session.model), ids)
        save_model(self, out, session, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LoRAFinetuneRecipe, "_save_model", record_then_save)
        code = kubetune.main(
            ["run", str(workdir / "finetunejob.yaml"), "--no-progress", "--cache-dir", str(root / "cache")]
        )
    out = workdir / "out"
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return Trained(family, model_dir, out, code, ids, recorded.get("logits"), manifest)


@pytest.fixture(scope="session")
def families_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(params=TRAINABLE)
def trained(request: pytest.FixtureRequest, families_root: Path) -> Trained:
    """The family's finished run; trained once per session and shared by every test of the family."""
    family = str(request.param)
    if family not in _RUNS:
        _RUNS[family] = train_family(family, families_root)
    run = _RUNS[family]
    assert run.exit_code == 0, f"{family}: kubetune run exited {run.exit_code}"
    return run


def load_base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def adapted_modules(tensors: dict[str, torch.Tensor]) -> set[str]:
    """Module names (as in the base model) that carry a LoRA pair in the saved adapter."""
    return {key.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0] for key in tensors if ".lora_A." in key}


# -- the tests ---------------------------------------------------------------------------------------------------


def test_run_publishes_the_adapter_and_manifest(trained: Trained) -> None:
    for name in ("adapter_model.safetensors", "adapter_config.json", "manifest.json", "tokenizer.json"):
        assert (trained.out / name).is_file(), f"{trained.family}: {name} not published"
    assert trained.manifest["baseModel"]["modelType"] == trained.family
    training = trained.manifest["training"]
    assert training["steps"] == 2
    assert training["attention"], "the manifest records the attention implementation"
    packing = training.get("packing")
    if packing is not None:
        assert packing["requested"] is True
        assert isinstance(packing["used"], bool)
        assert packing["used"] or packing["reason"], "packing turned off without a reason"
        if not packing["used"]:
            assert training["attention"] != "kubetune_packed_sdpa", "padded rows: the manifest names plain SDPA"


def test_published_adapter_meets_vllm_loader_constraints(trained: Trained) -> None:
    """The adapter as published passes vLLM's LoRA-loader rules (docs/serving.md), and the manifest says so."""
    from kubetune_api.serving import VLLM_LORA_MODULES
    from kubetune_trainer.serving import check_adapter_dir

    check = check_adapter_dir(trained.out, trained.family)
    assert trained.manifest["serving"]["vllm"] == check.to_manifest()
    assert check.problems == [], f"{trained.family}: vLLM would refuse the adapter: {check.problems}"
    assert check.max_lora_rank == 8  # r=4 rounds up to vLLM's --max-lora-rank choice 8
    if trained.family in VLLM_LORA_MODULES:  # its target module names checked too
        assert check.compatible is True and check.notes == []
    else:
        assert check.compatible is None and "target module names were not checked" in check.notes[0]
    card = (trained.out / "README.md").read_text()
    assert "## Serving" in card and "--max-lora-rank 8 --lora-modules" in card


def test_reloaded_adapter_gives_the_trained_logits(trained: Trained) -> None:
    from peft import PeftModel

    assert trained.logits is not None, "the trained model's logits were not recorded at export"
    reloaded = PeftModel.from_pretrained(load_base(trained.model_dir), str(trained.out))
    logits = logits_of(reloaded, trained.probe)
    base_logits = logits_of(load_base(trained.model_dir), trained.probe)
    assert not torch.equal(logits, base_logits), "the adapter changed nothing: the check would be vacuous"
    torch.testing.assert_close(logits, trained.logits, rtol=0, atol=0)


def test_merged_weights_are_base_plus_scaled_lora_product(trained: Trained) -> None:
    from peft import PeftModel

    config = json.loads((trained.out / "adapter_config.json").read_text())
    assert not config.get("target_parameters"), "all-linear must not adapt fused MoE parameters"
    tensors = adapter_tensors(trained.out)
    modules = adapted_modules(tensors)
    base = {k: v.clone() for k, v in load_base(trained.model_dir).state_dict().items()}
    merged = PeftModel.from_pretrained(load_base(trained.model_dir), str(trained.out)).merge_and_unload()
    merged_state = merged.state_dict()

    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    assert not config.get("rank_pattern") and not config.get("alpha_pattern")
    assert modules, "no adapted layer in the adapter"
    # lora_B starts at zero; a layer whose gradient is zero at a random init (an indexer's top-k, a
    # zero-initialised branch) keeps it, so training must have moved *some* layers, not every one
    assert any(tensors[f"base_model.model.{m}.lora_B.weight"].abs().sum() > 0 for m in modules)
    for module in sorted(modules):
        a = tensors[f"base_model.model.{module}.lora_A.weight"].float()
        b = tensors[f"base_model.model.{module}.lora_B.weight"].float()
        expected = base[f"{module}.weight"] + scale * (b @ a)
        torch.testing.assert_close(merged_state[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6, msg=module)
    untouched = set(base) - {f"{m}.weight" for m in modules}
    for key in sorted(untouched & set(merged_state)):
        assert torch.equal(merged_state[key], base[key]), f"{key} changed by the merge"
    if trained.logits is not None:
        torch.testing.assert_close(logits_of(merged, trained.probe), trained.logits, rtol=1e-4, atol=1e-4)


def test_all_linear_adapts_the_family_projections(trained: Trained) -> None:
    family = FAMILIES[trained.family]
    modules = adapted_modules(adapter_tensors(trained.out))
    suffixes = {name.rsplit(".", 1)[-1] for name in modules}
    assert suffixes == set(family.targets), f"{trained.family}: all-linear adapted {sorted(suffixes)}"
    base = load_base(trained.model_dir)
    head = base.get_output_embeddings()
    head_name = next(name for name, module in base.named_modules() if module is head)
    assert head_name not in modules, "the output head is never adapted"
    routers = {name for name, module in base.named_modules() if "experts" in dict(module.named_children())}
    assert not any(m.startswith(f"{block}.") for m in modules for block in routers), "nothing inside a MoE block"


def packing_leaks(model_dir: Path, attention: str) -> bool:
    """Do two rows packed into one, with restarting positions, see each other in this architecture?"""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attention)
    generator = torch.Generator().manual_seed(5)
    first, second = torch.randint(3, 300, (9,), generator=generator), torch.randint(3, 300, (11,), generator=generator)
    positions = torch.cat([torch.arange(9), torch.arange(11)])[None]
    with torch.no_grad():
        model.eval()  # type: ignore[no-untyped-call]
        packed = model(input_ids=torch.cat([first, second])[None], position_ids=positions, use_cache=False).logits
        alone = model(input_ids=second[None], use_cache=False).logits
    return not torch.allclose(packed[0, 9:], alone[0], atol=1e-4)


def test_packing_is_never_kept_where_packed_rows_leak(trained: Trained) -> None:
    """An independent check of the trainer's packing self-test, on the attention the trainer ran with."""
    training = trained.manifest["training"]
    leaks = packing_leaks(trained.model_dir, training["attention"])
    packing = training.get("packing")
    used = True if packing is None else packing["used"]  # before the self-test existed, packing was always used
    assert not (leaks and used), f"{trained.family}: packed rows see each other, yet packing was used"


REFUSED = sorted(name for name, family in FAMILIES.items() if family.refused)


@pytest.mark.parametrize("family", REFUSED)
def test_refused_family_is_refused_in_preflight(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubetune validate` (the CPU preflight) refuses it from config.json, naming the model_type."""
    from kubetune_trainer.cli import kubetune
    from kubetune_trainer.errors import UnsupportedModel

    build_tiny_model(family, tmp_path / "model")
    (tmp_path / "numbers.jsonl").write_text("\n".join((QUICKSTART / "numbers.jsonl").read_text().splitlines()[:ROWS]))
    (tmp_path / "finetunejob.yaml").write_text(yaml.safe_dump(job_manifest(family)))
    code = kubetune.main(["validate", str(tmp_path / "finetunejob.yaml"), "--cache-dir", str(tmp_path / "cache")])
    assert code == UnsupportedModel.exit_code, f"{family} is not refused: add it to architectures.REFUSED"
    assert family in capsys.readouterr().err


@pytest.mark.parametrize("family", REFUSED)
def test_refusal_cause_still_holds(family: str, tmp_path: Path) -> None:
    """The reason to refuse is still true in the installed libraries (else lift the refusal).

    The one cause seen so far: an adapter that does not reload. Non-zero LoRA weights on every all-linear
    layer, saved and reloaded, must give different logits."""
    from peft import PeftModel, get_peft_model

    from kubetune_api.spec import LoRASpec
    from kubetune_trainer import modeling

    model_dir = build_tiny_model(family, tmp_path / "model")
    base = load_base(model_dir)
    config = modeling.lora_config(LoRASpec(r=4, alpha=8, dropout=0.0), modeling.all_linear_targets(base))
    config.init_lora_weights = False  # random A and B: every adapted layer changes the output
    model = get_peft_model(base, config)
    ids = probe_ids(320)
    trained = logits_of(model, ids)
    model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = logits_of(PeftModel.from_pretrained(load_base(model_dir), str(tmp_path / "adapter")), ids)
    assert not torch.equal(reloaded, trained), f"{family}: the adapter reloads exactly now; lift the refusal"


def test_every_hybrid_and_linear_attention_causal_lm_is_covered() -> None:
    """Every causal LM this transformers ships with SSM / linear-attention / recurrent layers is in the matrix."""
    from model_zoo import uncovered_hybrids

    assert uncovered_hybrids() == []


def family_table(runs: list[Trained]) -> str:
    """The matrix as run, as the markdown rows docs/models.md shows (attention and packing columns)."""
    lines = ["| model_type | trained | attention | packing | why packing is off |", "|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: r.family):
        training = run.manifest.get("training", {})
        packing = training.get("packing") or {}
        used = {True: "kept", False: "off", None: "-"}[packing.get("used")]
        lines.append(
            f"| {run.family} | {'yes' if run.exit_code == 0 else f'no (exit {run.exit_code})'} "
            f"| {training.get('attention', '-')} | {used} | {packing.get('reason') or ''} |"
        )
    return "\n".join(lines) + "\n"


def teardown_module() -> None:
    """Write the table where KUBETUNE_FAMILY_TABLE points (to refresh docs/models.md), then clean up."""
    target = os.environ.get("KUBETUNE_FAMILY_TABLE")
    if target and _RUNS:
        Path(target).write_text(family_table(list(_RUNS.values())))
    for run in _RUNS.values():
        shutil.rmtree(run.out.parent, ignore_errors=True)
    _RUNS.clear()
