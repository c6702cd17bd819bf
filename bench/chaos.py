"""bench/chaos.py: SIGKILLs at random (seeded) points, and what survives them. A robustness run that
prints figures; it asserts nothing about time.

Part 1, the trainer: one job (the tiny Llama on the quickstart data, checkpoints every 10 steps to
a real S3 server, SeaweedFS) is SIGKILLed `--trainer-kills` times at random steps, and restarted
each time, as the operator's retry would. Figures: per kill, the step killed at, the checkpoint
resumed from and the steps lost (at most one checkpoint interval); the final training and eval
loss against an uninterrupted run of the same job.

Part 2, the operator: `--jobs` FineTuneJobs on the test cluster (the Kubernetes API emulator, the
test kubelet, the real operator process, SeaweedFS), while the operator is SIGKILLed and restarted
`--operator-kills` times at random moments. Figures: jobs Succeeded, trainer Jobs per attempt
(exactly one), duplicated terminal Events (none).

    python bench/chaos.py                                            # 20 trainer kills; 20 jobs, 20 operator kills
    python bench/chaos.py --trainer-kills 3 --jobs 3 --operator-kills 3   # the CI size (tests/e2e/test_chaos.py)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 10
TRAINER_STEPS = 300
JOB_STEPS = 120
RESUMED = re.compile(r"resumed from checkpoint step (\d+)")


def harness(module: str) -> ModuleType:
    """`tests/harness/<module>.py`, imported at run time (tests/ is not a package on mypy's path)."""
    for path in (ROOT / "tests", ROOT / "api", ROOT / "examples" / "quickstart"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(f"harness.{module}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Kill:
    at_step: int  # the last step /progress reported before the SIGKILL
    resumed_from: int  # the checkpoint the next run resumed from (0: from the start)

    @property
    def lost(self) -> int:
        return self.at_step - self.resumed_from


@dataclass
class TrainerSoak:
    kills: list[Kill] = field(default_factory=list)
    runs: int = 0
    final_loss: float = 0.0
    reference_loss: float = 0.0
    final_eval: float = 0.0
    reference_eval: float = 0.0
    seconds: float = 0.0

    def problems(self, loss_tolerance: float = 0.05) -> list[str]:
        found = [f"kill at step {k.at_step} lost {k.lost} steps" for k in self.kills if k.lost > CHECKPOINT_EVERY]
        if abs(self.final_loss - self.reference_loss) > loss_tolerance:
            found.append(f"final loss {self.final_loss:.4f} vs uninterrupted {self.reference_loss:.4f}")
        if abs(self.final_eval - self.reference_eval) > loss_tolerance:
            found.append(f"eval loss {self.final_eval:.4f} vs uninterrupted {self.reference_eval:.4f}")
        return found


@dataclass
class OperatorSoak:
    jobs: int = 0
    kills: int = 0
    succeeded: int = 0
    attempts: int = 0
    trainer_jobs: int = 0
    extra_trainer_jobs: list[str] = field(default_factory=list)
    duplicated_terminal_events: list[str] = field(default_factory=list)
    not_succeeded: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        return [
            *(f"{name}: not Succeeded" for name in self.not_succeeded),
            *(f"{name}: more than one trainer Job for an attempt" for name in self.extra_trainer_jobs),
            *(f"{name}: duplicated terminal Event" for name in self.duplicated_terminal_events),
        ]


# ---------------------------------------------------------------------------------------------- shared setup


class Stage:
    """SeaweedFS with the tiny model and the quickstart data in a bucket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.s3 = harness("seaweed").SeaweedS3(workdir / "seaweedfs").start()
        self.bucket = "chaos"
        self.client = self.s3.client()
        self.client.create_bucket(Bucket=self.bucket)
        model = importlib.import_module("build_base_model").build(workdir / "model", hidden=64, layers=2)
        for path in sorted(model.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), self.bucket, f"models/tiny/{path.relative_to(model).as_posix()}")
        data = ROOT / "examples" / "quickstart" / "numbers.jsonl"
        self.client.upload_file(str(data), self.bucket, "data/numbers.jsonl")
        self.env = {**os.environ, **harness("seaweed").ADMIN.env, "AWS_DEFAULT_REGION": "us-east-1"}

    def close(self) -> None:
        self.s3.stop()


# ---------------------------------------------------------------------------------------------- part 1: the trainer


def trainer_config(stage: Stage, name: str, workdir: Path, port: int) -> Path:
    config = {
        "job_name": name,
        "base_model_uri": f"s3://{stage.bucket}/models/tiny/",
        "dataset": {"train": f"s3://{stage.bucket}/data/numbers.jsonl", "validation_split": 0.1},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "epochs": 20,
            "max_steps": TRAINER_STEPS,
            "batch_size": 4,
            "max_seq_length": 64,
            "learning_rate": 3e-3,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": CHECKPOINT_EVERY,
            "keep_checkpoints": 2,
            "seed": 7,
        },
        "evaluation": {"exact_match": False},
        "output": {"uri": f"s3://{stage.bucket}/out/{name}/"},
        "storage": {"endpoint": stage.s3.endpoint, "addressing_style": "path"},
        "runtime": {
            "cache_dir": str(workdir / "cache"),
            "progress_bar": False,
            "metrics_port": port,
            "metrics_host": "127.0.0.1",
            "metrics_linger_seconds": 0,
        },
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def start_trainer(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    pythonpath = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer.cli.kubetune_train", "--config", str(config)],
            env={**env, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def progress_step(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as response:
            return int(json.loads(response.read())["step"])
    except (OSError, ValueError, KeyError):
        return None


def final_losses(stage: Stage, name: str) -> tuple[float, float]:
    read = stage.client.get_object
    metrics = json.loads(read(Bucket=stage.bucket, Key=f"out/{name}/metrics.json")["Body"].read())
    evals = json.loads(read(Bucket=stage.bucket, Key=f"out/{name}/eval.json")["Body"].read())
    return float(metrics["loss_curve"][-1]["loss"]), float(evals["finetuned"]["loss"])


def trainer_soak(stage: Stage, kills: int, seed: int, workdir: Path) -> TrainerSoak:
    """Run the job to the end, SIGKILLing it at `kills` random steps; an uninterrupted run beside it."""
    result = TrainerSoak()
    started = time.monotonic()
    targets = sorted(random.Random(seed).sample(range(3, TRAINER_STEPS - 5), kills))
    reference = start_trainer(trainer_config(stage, "reference", workdir, free_port()), stage.env, workdir / "ref.log")
    port = free_port()
    config, log = trainer_config(stage, "killed", workdir, port), workdir / "killed.log"
    while True:
        offset = log.stat().st_size if log.exists() else 0
        proc = start_trainer(config, stage.env, log)
        result.runs += 1
        first_step, last_step, killed = None, 0, False
        while proc.poll() is None and targets:
            step = progress_step(port)
            if step is not None and step > 0:
                first_step = step if first_step is None else first_step
                last_step = step
                # Past the target, and past where this run resumed: each kill costs real progress.
                if step >= targets[0] and step > first_step:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    targets.pop(0)
                    break
            time.sleep(0.01)
        code = proc.wait()
        with log.open("rb") as fh:
            fh.seek(offset)
            segment = fh.read().decode(errors="replace")
        if result.kills:  # this run's resume point belongs to the previous kill
            found = RESUMED.search(segment)
            result.kills[-1].resumed_from = int(found.group(1)) if found else 0
        if killed:
            result.kills.append(Kill(at_step=last_step, resumed_from=0))
            continue
        if code != 0:
            raise RuntimeError(f"the trainer failed (exit {code}); its log: {log}")
        break
    if reference.wait() != 0:
        raise RuntimeError(f"the uninterrupted run failed; its log: {workdir / 'ref.log'}")
    result.final_loss, result.final_eval = final_losses(stage, "killed")
    result.reference_loss, result.reference_eval = final_losses(stage, "reference")
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------- part 2: the operator

TERMINAL_EVENTS = ("Succeeded", "Failed")
MAX_RUNNING_JOBS = 2  # two trainer processes at a time on a 2-core machine


def operator_soak(stage: Stage, jobs: int, kills: int, seed: int, workdir: Path, timeout: float = 1800) -> OperatorSoak:
    """`jobs` FineTuneJobs (two running at a time) while the operator is SIGKILLed and restarted
    `kills` times, each after a random 1-6 s; then the figures from the API."""
    from kubernetes import client

    apiserver, cluster_mod = harness("apiserver"), harness("cluster")
    operator_process, finetunejob = harness("operator_process"), harness("finetunejob")
    result = OperatorSoak(jobs=jobs)
    rng = random.Random(seed)
    started = time.monotonic()
    server = apiserver.run_apiserver([ROOT / "crds" / "kubetune.io_finetunejobs.yaml"])
    env = {"HF_HUB_OFFLINE": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    cluster = cluster_mod.Cluster(server, work_root=workdir / "nodes", extra_env=env).start()
    operator = operator_process.OperatorProcess(
        server.write_kubeconfig(workdir / "kubeconfig"),
        workdir / "operator.log",
        KUBETUNE_POLL_INTERVAL_SECONDS="0.5",
        KUBETUNE_METRICS_PORT=str(free_port()),
        KUBETUNE_RENDEZVOUS_PORT=str(free_port()),
        KUBETUNE_TRAINER_METRICS_LINGER_SECONDS="0.5",
    ).start()
    api = server.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    batch = client.BatchV1Api(api)
    group, version, plural, namespace = finetunejob.GROUP, finetunejob.VERSION, finetunejob.PLURAL, "default"
    try:
        core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": "s3-creds"}, "stringData": harness("seaweed").ADMIN.env},
        )
        names = [f"chaos-{i:02d}" for i in range(jobs)]
        waiting = list(names)
        next_kill = time.monotonic() + rng.uniform(1, 6)

        def phase(name: str) -> str:
            obj = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            return str((obj.get("status") or {}).get("phase") or "")

        created: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [n for n in created if phase(n) in TERMINAL_EVENTS]
            if len(done) == jobs:
                break
            while waiting and len(created) - len(done) < MAX_RUNNING_JOBS:
                name = waiting.pop(0)
                body = finetunejob.finetunejob(name, stage.bucket, stage.s3.endpoint, training={"maxSteps": JOB_STEPS})
                custom.create_namespaced_custom_object(group, version, namespace, plural, body)
                created.append(name)
            if result.kills < kills and time.monotonic() >= next_kill:
                operator.stop(signal.SIGKILL)  # no graceful shutdown: state must come from the cluster alone
                operator.start()
                result.kills += 1
                next_kill = time.monotonic() + rng.uniform(1, 6)
            operator.check_alive()
            time.sleep(0.2)
        else:
            raise RuntimeError(f"not every job finished in {timeout:.0f} s; operator log: {workdir / 'operator.log'}")
        while result.kills < kills:  # jobs finished first: the rest of the kills hit an idle operator
            operator.stop(signal.SIGKILL)
            operator.start()
            result.kills += 1
        time.sleep(2)  # a restarted operator's last writes (none should come)

        events = core.list_namespaced_event(namespace).items
        trainer_jobs = Counter(
            j.metadata.labels.get("kubetune.io/finetunejob")
            for j in batch.list_namespaced_job(namespace).items
            if j.metadata.labels.get("app.kubernetes.io/component") == "trainer"
        )
        for name in names:
            obj = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            status = obj.get("status") or {}
            attempts = int(status.get("attempts") or 0)
            result.attempts += attempts
            result.trainer_jobs += trainer_jobs[name]
            if status.get("phase") == "Succeeded":
                result.succeeded += 1
            else:
                result.not_succeeded.append(name)
            started_pods = Counter(
                p.rsplit("-", 1)[0] for p in cluster.started_pods if p.startswith(f"{name}-train-")
            )  # <name>-train-<attempt>: one pod started per attempt
            if trainer_jobs[name] != attempts or any(count > 1 for count in started_pods.values()):
                result.extra_trainer_jobs.append(name)
            terminal = [e for e in events if e.involved_object.name == name and e.reason in TERMINAL_EVENTS]
            if len(terminal) != 1 or (terminal[0].count or 1) > 1:
                result.duplicated_terminal_events.append(name)
    finally:
        operator.stop()
        cluster.stop()
        server.stop()
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------- report


def report(trainer: TrainerSoak | None, ops: OperatorSoak | None) -> str:
    lines = []
    if trainer is not None:
        lost = [k.lost for k in trainer.kills]
        lines += [
            f"trainer: {len(trainer.kills)} SIGKILLs over {trainer.runs} runs of one {TRAINER_STEPS}-step job "
            f"(checkpoint every {CHECKPOINT_EVERY} steps), {trainer.seconds:.0f} s",
            "  killed at step -> resumed from: " + ", ".join(f"{k.at_step}->{k.resumed_from}" for k in trainer.kills),
            f"  steps lost per kill: max {max(lost, default=0)}, mean {sum(lost) / max(1, len(lost)):.1f} "
            f"(bound: {CHECKPOINT_EVERY})",
            f"  final train loss {trainer.final_loss:.4f} vs uninterrupted {trainer.reference_loss:.4f}; "
            f"eval loss {trainer.final_eval:.4f} vs {trainer.reference_eval:.4f}",
        ]
    if ops is not None:
        lines += [
            f"operator: {ops.jobs} jobs, {ops.kills} operator SIGKILL+restarts, {ops.seconds:.0f} s",
            f"  Succeeded {ops.succeeded}/{ops.jobs}; attempts {ops.attempts}, trainer Jobs {ops.trainer_jobs} "
            f"(one per attempt: {'yes' if not ops.extra_trainer_jobs else 'NO ' + str(ops.extra_trainer_jobs)}); "
            f"duplicated terminal Events: {len(ops.duplicated_terminal_events)}",
        ]
    problems = [*(trainer.problems() if trainer else []), *(ops.problems() if ops else [])]
    lines.append("problems: " + ("none" if not problems else "; ".join(problems)))
    return "\n".join(lines)


def run(
    trainer_kills: int, jobs: int, operator_kills: int, seed: int, workdir: Path
) -> tuple[TrainerSoak, OperatorSoak]:
    stage = Stage(workdir)
    try:
        (workdir / "trainer").mkdir(exist_ok=True)
        (workdir / "operator").mkdir(exist_ok=True)
        trainer = trainer_soak(stage, trainer_kills, seed, workdir / "trainer")
        ops = operator_soak(stage, jobs, operator_kills, seed, workdir / "operator")
    finally:
        stage.close()
    return trainer, ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer-kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--operator-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, pods)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-chaos-"))
    try:
        trainer, ops = run(args.trainer_kills, args.jobs, args.operator_kills, args.seed, workdir)
        print(report(trainer, ops))
        return 1 if trainer.problems() or ops.problems() else 0
    finally:
        if args.keep:
            print(f"work folder: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
