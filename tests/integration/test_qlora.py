"""QLoRA (4-bit NF4, 8-bit LLM.int8), DoRA and rsLoRA, trained on CPU through the recipe users run.

bitsandbytes >= 0.50 runs its 4-bit and 8-bit layers on CPU, so all of this runs in CI:

    train a few steps -> finite loss, adapter published -> PeftModel.from_pretrained on a base
    quantised the same way gives the trained model's logits;
    output.mergeAdapter on a quantised base -> merged into the *unquantised* base weights;
    bitsandbytes missing, DoRA on 8 bits -> refused in preflight (and by `kubetune run`),
    naming the field, publishing nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import trainer_config, write_jsonl
from kubetune_api.protocol import FailureReason, PreflightReport, RunStatus, RunSummary
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer import quantization
from kubetune_trainer.cli import kubetune, kubetune_train

pytest.importorskip("bitsandbytes", reason="the qlora extra (bitsandbytes) is part of the dev install")

IDS = torch.tensor([[1, 30, 40, 50, 60, 70, 80]])


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory, numbers_path: Path) -> Path:
    """48 rows (43 train, 5 validation): enough for a few steps, and evaluation stays quick on 8 bits."""
    lines = numbers_path.read_text().splitlines()[:48]
    return write_jsonl(tmp_path_factory.mktemp("rows") / "train.jsonl", lines)


def quantised_base(model_dir: Path, mode: str) -> Any:
    """The base as a user reloads it for the adapter: quantised the way the trainer did (CPU: fp32 compute)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    configs = {
        "4bit": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
    }
    extra = {"quantization_config": configs[mode]} if mode in configs else {}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **extra)


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        result: torch.Tensor = model(input_ids=IDS, use_cache=False).logits
        return result


VARIANTS = [
    pytest.param({"quantization": "4bit"}, id="qlora-4bit"),
    pytest.param({"quantization": "8bit"}, id="qlora-8bit"),
    pytest.param({"quantization": "4bit", "use_dora": True}, id="dora-on-4bit"),
    pytest.param({"use_dora": True}, id="dora"),
    pytest.param({"use_rslora": True}, id="rslora"),
]


@pytest.mark.slow
@pytest.mark.parametrize("lora", VARIANTS)
def test_trains_publishes_and_the_adapter_reloads_to_identical_logits(
    lora: dict[str, Any], tiny_model_dir: Path, rows: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    from kubetune_trainer.progress import ProgressReporter
    from kubetune_trainer.recipe import LoRAFinetuneRecipe

    raw = trainer_config(
        str(tiny_model_dir), str(rows), str(tmp_path / "out"), cache_dir=tmp_path / "cache", training={"max_steps": 4}
    )
    raw["dataset"]["validation_split"] = 0.0  # no evaluation: this is about training and reloading
    raw["lora"].update(lora)
    raw["runtime"]["device"] = "cpu"
    config = TrainerConfig.model_validate(raw)
    recipe = LoRAFinetuneRecipe(config, ProgressReporter("t", None), threading.Event(), tmp_path / "work")
    summary = recipe.run()

    assert summary.status == RunStatus.SUCCEEDED and summary.step == 4
    assert summary.train_loss is not None and math.isfinite(summary.train_loss)
    out = tmp_path / "out"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is lora.get("use_dora", False)
    assert adapter_config["use_rslora"] is lora.get("use_rslora", False)
    tensors = load_file(out / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in tensors) is lora.get("use_dora", False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["lora"]["quantization"] == lora.get("quantization", "none")

    mode = lora.get("quantization", "none")
    if mode != "none":  # the base really was quantised while it trained
        q_proj = recipe.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        assert type(q_proj).__name__ == {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[mode]
    trained = logits(recipe.model.eval())
    loaded = PeftModel.from_pretrained(quantised_base(tiny_model_dir, mode), out).eval()
    torch.testing.assert_close(logits(loaded), trained, rtol=1e-5, atol=1e-5)
    with loaded.disable_adapter():  # ...and training moved the adapter away from the bare base
        assert not torch.allclose(logits(loaded), trained, atol=1e-4)


@pytest.mark.slow
def test_a_preempted_4bit_run_resumes_to_the_adapter_of_an_uninterrupted_one(
    tiny_model_dir: Path, rows: Path, tmp_path: Path
) -> None:
    """Checkpoints hold only the adapter and optimizer; resuming reloads the base in 4 bits and goes on."""
    from safetensors.torch import load_file

    from kubetune_trainer.errors import Preempted
    from kubetune_trainer.progress import ProgressReporter
    from kubetune_trainer.recipe import LoRAFinetuneRecipe

    def config(out: Path) -> TrainerConfig:
        raw = trainer_config(
            str(tiny_model_dir),
            str(rows),
            str(out),
            cache_dir=tmp_path / "cache",
            training={"max_steps": 4, "checkpoint_every_steps": 100},
        )
        raw["dataset"]["validation_split"] = 0.0
        raw["lora"]["quantization"] = "4bit"
        raw["runtime"]["device"] = "cpu"
        return TrainerConfig.model_validate(raw)

    def recipe(out: Path, stop: threading.Event, **kwargs: Any) -> LoRAFinetuneRecipe:
        work = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"
        return LoRAFinetuneRecipe(config(out), ProgressReporter("t", None), stop, work, **kwargs)

    assert recipe(tmp_path / "straight", threading.Event()).run().step == 4
    stop = threading.Event()
    with pytest.raises(Preempted):  # as SIGTERM does: checkpoint after step 2, then stop
        recipe(tmp_path / "resumed", stop, on_step=lambda state, info: stop.set() if state.step == 2 else None).run()
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    steps: list[int] = []
    resumed_run = recipe(tmp_path / "resumed", threading.Event(), on_step=lambda state, info: steps.append(state.step))
    summary = resumed_run.run()
    assert summary.step == 4 and steps == [3, 4]  # resumed after step 2, not started over
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


MANIFEST = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: qlora
spec:
  baseModel:
    uri: {model}
  dataset:
    train: {train}
    validationSplit: 0.0
  lora:
    r: 8
    alpha: 16
    dropout: 0.0
    quantization: "4bit"
  training:
    maxSteps: 4
    learningRate: 3.0e-3
    batchSize: 4
    maxSeqLength: 64
  evaluation:
    exactMatch: false
  output:
    uri: ./out/
    mergeAdapter: true
  resources:
    gpus: 0
"""


def write_manifest(tmp_path: Path, model: Path, train: Path, **lora: Any) -> Path:
    document = yaml.safe_load(MANIFEST.format(model=model, train=train))
    document["spec"]["lora"].update(lora)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.slow
def test_kubetune_run_merges_a_4bit_adapter_into_the_unquantised_base(
    tiny_model_dir: Path, rows: Path, tmp_path: Path
) -> None:
    """mergeAdapter on a quantised base: base weights as staged (not their NF4 rounding) plus the adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    job = write_manifest(tmp_path, tiny_model_dir, rows)
    code = kubetune.main(["run", str(job), "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    out = tmp_path / "out"
    merged_dir = out / "merged"
    assert "merged/model.safetensors" in json.loads((out / "manifest.json").read_text())["artifacts"]
    assert not json.loads((merged_dir / "config.json").read_text()).get("quantization_config")

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(merged_dir / "model.safetensors")
    adapter = load_file(out / "adapter_model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    a = adapter[f"base_model.model.{name}.lora_A.weight"]
    b = adapter[f"base_model.model.{name}.lora_B.weight"]
    delta = (b @ a) * (16 / 8)
    assert delta.abs().max() > 0
    assert merged[f"{name}.weight"].dtype == base[f"{name}.weight"].dtype == torch.float32
    torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + delta, rtol=1e-6, atol=1e-6)
    # the layers without an adapter are the staged weights bit for bit: nothing went through 4 bits
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])

    unquantised = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(logits(merged_model), logits(unquantised), rtol=1e-4, atol=1e-4)


# -- refusals ------------------------------------------------------------------------------------------


@pytest.fixture
def without_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """bitsandbytes not installed, as far as the check can tell (every other lookup is real)."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == quantization.BITSANDBYTES else real(name, package)

    monkeypatch.setattr(quantization.importlib.util, "find_spec", find_spec)


REFUSALS = [
    pytest.param({"quantization": "4bit"}, "lora.quantization: 4bit needs bitsandbytes", True, id="4bit-no-bnb"),
    pytest.param({"quantization": "8bit"}, "lora.quantization: 8bit needs bitsandbytes", True, id="8bit-no-bnb"),
    pytest.param(
        {"quantization": "8bit", "use_dora": True},
        "lora.useDora: DoRA cannot train on an 8-bit (LLM.int8) base on CPU",
        False,
        id="dora-on-8bit",
    ),
]


def run_preflight(
    tmp_path: Path, model: Path, train: Path, lora: dict[str, Any], device: str = "cpu"
) -> tuple[int, RunSummary | PreflightReport]:
    raw = trainer_config(
        str(model),
        str(train),
        str(tmp_path / "out"),
        cache_dir=tmp_path / "cache",
        runtime={"cache_dir": str(tmp_path / "cache"), "termination_message_path": str(tmp_path / "term")},
    )
    raw["lora"].update(lora)
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps(raw))
    code = kubetune_train.main(["--config", str(path), "--validate-only", "--plan-for", device])
    text = (tmp_path / "term").read_text()
    return code, RunSummary.model_validate_json(text) if code else PreflightReport.model_validate_json(text)


@pytest.mark.parametrize(("lora", "expected", "hide_bnb"), REFUSALS)
def test_preflight_refuses_with_the_field_named(
    lora: dict[str, Any],
    expected: str,
    hide_bnb: bool,
    tiny_model_dir: Path,
    rows: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if hide_bnb:
        request.getfixturevalue("without_bitsandbytes")
    code, summary = run_preflight(tmp_path, tiny_model_dir, rows, lora)
    assert code == 11 and isinstance(summary, RunSummary), summary
    assert summary.status == RunStatus.FAILED and summary.reason == FailureReason.INVALID_SPEC
    assert summary.user_error is True
    assert summary.message is not None and expected in summary.message
    assert not (tmp_path / "out").exists()


def test_dora_on_8bit_passes_a_preflight_planned_for_a_gpu(tiny_model_dir: Path, rows: Path, tmp_path: Path) -> None:
    """The failure is in PEFT's CPU-only branch; on CUDA the pair is allowed (tests/gpu checks it trains)."""
    code, report = run_preflight(tmp_path, tiny_model_dir, rows, {"quantization": "8bit", "use_dora": True}, "cuda")
    assert code == 0 and isinstance(report, PreflightReport), report
    assert report.memory is not None


@pytest.mark.parametrize(("lora", "expected", "hide_bnb"), REFUSALS)
def test_kubetune_run_refuses_before_training_and_publishes_nothing(
    lora: dict[str, Any],
    expected: str,
    hide_bnb: bool,
    tiny_model_dir: Path,
    rows: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if hide_bnb:
        request.getfixturevalue("without_bitsandbytes")
    wire = {"quantization": lora["quantization"], "useDora": lora.get("use_dora", False)}
    job = write_manifest(tmp_path, tiny_model_dir, rows, **wire)
    code = kubetune.main(["run", str(job), "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "c")])
    assert code == 11
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
