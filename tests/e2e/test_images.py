"""The images `make images` builds (.ci/images: buildah, a debootstrapped Debian base), run for real.

`podman run` is refused on these machines (rlimits), so the images' commands run under
`buildah run --isolation chroot --user 65532:65532`, which shares the host's network:
- the operator image's entrypoint and command drive the happy path against the emulated API;
- the same image runs `kubetune-api` as the chart does (args `[kubetune-api]`, tokens and config
  mounted read-only), reaching the emulated API and S3 from inside the image;
- the trainer image (its CPU variant) trains a small job against the S3 server of the tests.

Without the images these tests skip, unless KUBETUNE_REQUIRE_IMAGES=1 (`make test` sets it after
`make images`), when a missing image is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from operator_env import Kube, finetunejob, operator_process, stage_tiny_job

from conftest import FAKE_CREDENTIALS, trainer_config
from harness import Cluster
from harness.finetunejob import NAMESPACE
from harness.operator_process import OperatorProcess, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.images]
pytest_plugins = ["operator_fixtures"]  # cluster, kube

OPERATOR_IMAGE = "localhost/kubetune-operator:dev"
TRAINER_IMAGE = "localhost/kubetune-trainer:dev-cpu"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
TRAIN_TIMEOUT = 300


def image_present(image: str) -> bool:
    if shutil.which("buildah") is None:
        return False
    found = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], capture_output=True, check=False)
    return found.returncode == 0


def require(image: str) -> None:
    if image_present(image):
        return
    message = f"{image} is not built: run `make images`"
    if os.environ.get("KUBETUNE_REQUIRE_IMAGES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def config_of(image: str) -> dict[str, Any]:
    out = subprocess.run([*BUILDAH, "inspect", "--type", "image", image], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout)["OCIv1"]["config"])


@pytest.fixture
def container(request: pytest.FixtureRequest) -> Iterator[str]:
    """A working container of the image named by the test's `image` parameter, removed afterwards."""
    image = request.param
    require(image)
    name = subprocess.run([*BUILDAH, "from", image], capture_output=True, text=True, check=True).stdout.strip()
    yield name
    subprocess.run([*BUILDAH, "rm", name], capture_output=True, check=False)


def run_argv(container: str, config: dict[str, Any], env: dict[str, str], volumes: dict[str, str]) -> list[str]:
    """`buildah run` of the image's own ENTRYPOINT + CMD, as the image's user (65532)."""
    argv = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host", "--user", str(config["User"])]
    for host, inside in volumes.items():
        argv += ["--volume", f"{host}:{inside}"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    return [*argv, container, "--", *config["Entrypoint"], *config["Cmd"]]


class ImageOperator(OperatorProcess):
    """The operator image's entrypoint under `buildah run`, with the test operator's settings."""

    def __init__(self, base: OperatorProcess, container: str, kubeconfig: Path) -> None:
        super().__init__(kubeconfig, base.log_path)
        self.container = container
        self.kubeconfig = kubeconfig
        self.settings = {key: value for key, value in base.env.items() if key.startswith("KUBETUNE_")}
        self.port = base.port

    def command(self) -> list[str]:
        env = {**self.settings, "KUBETUNE_HEALTH_PORT": str(self.port), "KUBECONFIG": "/tmp/kubeconfig"}
        return run_argv(self.container, config_of(OPERATOR_IMAGE), env, {str(self.kubeconfig): "/tmp/kubeconfig:ro"})


def process_uid(pattern: str) -> set[int]:
    """Real UIDs of the processes whose command line contains `pattern`."""
    uids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (
                pattern.encode() in (proc / "cmdline").read_bytes()
                and b"buildah" not in (proc / "cmdline").read_bytes()
            ):
                status = (proc / "status").read_text()
                uids.add(int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]))
        except (OSError, StopIteration):
            continue
    return uids


@pytest.mark.parametrize("container", [OPERATOR_IMAGE], indirect=True)
def test_the_operator_image_runs_the_happy_path_as_65532_with_only_tmp_writable(
    container: str, kube_api: Any, kube: Kube, cluster: Cluster, s3_endpoint: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = config_of(OPERATOR_IMAGE)
    assert config["User"] == "65532:65532" and config["Entrypoint"] == ["/usr/bin/tini", "--"]
    # Nothing is writable but /tmp, and there is no torch in this image.
    probe = (
        "touch /tmp/ok && ! touch /opt/venv/x 2>/dev/null && ! touch /x 2>/dev/null && ! python -c 'import torch' "
        # 65532 has a passwd entry: kopf's getpass.getuser() raised without one
        "2>/dev/null && test \"$(python -c 'import getpass; print(getpass.getuser())')\" = nonroot"
    )
    checked = subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", "--user", "65532:65532", container, "--", "sh", "-c", probe],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    bucket = "kt-image-operator"
    stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)
    base = operator_process(kube_api.kubeconfig, tmp_path / "operator.log")
    operator = ImageOperator(base, container, kube_api.kubeconfig).start(timeout=120)
    try:
        assert process_uid("kubetune-operator") == {65532}
        kube.apply(finetunejob("imaged", bucket, s3_endpoint))
        status = kube.wait_phase("imaged", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
        assert status.phase == "Succeeded", f"{status}\n{operator.log()[-3000:]}"
        assert kube.jobs("imaged") == ["imaged-preflight", "imaged-train-1"]
    finally:
        operator.stop()


@pytest.mark.parametrize("container", [OPERATOR_IMAGE], indirect=True)
def test_the_operator_image_serves_the_openai_api_as_the_chart_runs_it(
    container: str, kube_api: Any, s3_endpoint: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """charts/kubetune/templates/api-deployment.yaml: the image's entrypoint, args [kubetune-api],
    the tokens Secret and the config ConfigMap mounted read-only as folders, the server's S3 identity
    in the environment. What only the image can show: the console script is there, and the
    kubernetes client, boto3 and the trainer's row parser work in it without torch."""
    bucket, token = "kt-image-api", "sk-image-test-0123456789"
    stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)  # creates the bucket
    tokens, settings = tmp_path / "tokens", tmp_path / "config"
    tokens.mkdir()
    settings.mkdir()
    (tokens / "tokens.json").write_text(json.dumps({token: NAMESPACE}))
    storage = {"endpoint": s3_endpoint, "region": "us-east-1", "addressingStyle": "path"}
    tenant = {"filesUri": f"s3://{bucket}/files/", "outputUri": f"s3://{bucket}/jobs/", "storage": storage}
    config = {"catalog": {"tiny": f"s3://{bucket}/models/tiny/"}, "tenants": {NAMESPACE: tenant}}
    (settings / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    env = {
        "KUBETUNE_API_HOST": "127.0.0.1",
        "KUBETUNE_API_PORT": str(port),
        "KUBECONFIG": "/tmp/kubeconfig",
        **{key: value for key, value in FAKE_CREDENTIALS.items() if key.startswith("AWS_")},
    }
    volumes = {
        str(kube_api.kubeconfig): "/tmp/kubeconfig:ro",
        str(tokens): "/etc/kubetune-api/tokens:ro",
        str(settings): "/etc/kubetune-api/config:ro",
    }
    image = config_of(OPERATOR_IMAGE)
    argv = run_argv(container, {**image, "Cmd": ["kubetune-api"]}, env, volumes)
    log_path = tmp_path / "kubetune-api.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def alive() -> None:
            if server.poll() is not None:
                raise AssertionError(f"kubetune-api exited:\n{log_path.read_text(errors='replace')[-3000:]}")

        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0, timeout=30)

        def answers() -> bool:
            try:
                api.files.list()
            except openai.APIConnectionError:
                return False
            return True

        wait_for(answers, 120, "kubetune-api in the operator image to answer", alive)
        assert process_uid("kubetune-api") == {65532}
        uploaded = api.files.create(
            file=("rows.jsonl", b'{"prompt": "one =>", "completion": " 1"}\n'), purpose="fine-tune"
        )
        assert api.files.retrieve(uploaded.id).bytes == uploaded.bytes > 0
        assert [job.id for job in api.fine_tuning.jobs.list()] == []  # the kubernetes client, from inside
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0).files.list()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.parametrize("container", [TRAINER_IMAGE], indirect=True)
def test_the_trainer_image_trains_a_small_job_against_s3(
    container: str, s3_endpoint: str, s3_client: Any, bucket: str, staged_on_s3: dict[str, str], tmp_path: Path
) -> None:
    config = trainer_config(
        staged_on_s3["model"],
        staged_on_s3["train"],
        f"s3://{bucket}/out/",
        cache_dir=Path("/cache"),
        endpoint=s3_endpoint,
        training={"max_steps": 10},
        runtime={"cache_dir": "/cache", "termination_message_path": "/tmp/termination-log"},
    )
    (tmp_path / "trainer.json").write_text(json.dumps(config))
    # An emptyDir: writable by the pod's user. Created 0777 outright (umask 0), not chmod-ed after:
    # this machine's sandbox sometimes showed the bind mount with the mode the folder was created with.
    cache = tmp_path / "cache"
    umask = os.umask(0)
    try:
        cache.mkdir(mode=0o777)
    finally:
        os.umask(umask)
    image = config_of(TRAINER_IMAGE)
    assert image["User"] == "65532:65532"
    env = {k: v for k, v in FAKE_CREDENTIALS.items()}
    argv = run_argv(
        container, image, env, {str(tmp_path / "trainer.json"): "/etc/kubetune/trainer.json:ro", str(cache): "/cache"}
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    published = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])}
    assert {"out/manifest.json", "out/adapter_model.safetensors"} <= published
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key="out/manifest.json")["Body"].read())
    assert manifest["libraries"]["torch"].startswith("2.13.0") and "+cpu" in manifest["libraries"]["torch"]
