"""A FineTuneJob that trains the tiny test Llama on CPU in a few seconds (e2e and observability tests)."""

from __future__ import annotations

from typing import Any

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
NAMESPACE = "default"


def finetunejob(name: str, bucket: str, endpoint: str, training: dict[str, Any] | None = None, **spec: Any) -> dict:
    """A FineTuneJob that trains the tiny test Llama on CPU in a few seconds."""
    body: dict[str, Any] = {
        "baseModel": {"uri": f"s3://{bucket}/models/tiny/"},
        "dataset": {"train": f"s3://{bucket}/data/numbers.jsonl"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "epochs": 1,
            "maxSteps": 30,
            "batchSize": 4,
            "maxSeqLength": 64,
            "learningRate": 3e-3,
            "gradientCheckpointing": False,
            "checkpointEverySteps": 10,
            "seed": 7,
            **(training or {}),
        },
        "evaluation": {"exactMatch": False},
        "output": {"uri": f"s3://{bucket}/out/{name}/"},
        "storage": {
            "endpoint": endpoint,
            "region": "us-east-1",
            "credentialsSecret": "s3-creds",
            "addressingStyle": "path",
        },
        "resources": {"gpus": 0},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": body,
    }
