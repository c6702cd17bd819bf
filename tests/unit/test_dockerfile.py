"""The Dockerfile and .dockerignore, checked by parsing them (no container engine needed).

A small Dockerfile parser (line continuations, comments, parser directives, global and stage
ARGs with `${VAR}` substitution, `FROM ... AS name`, exec-form JSON, ENV, VOLUME, COPY, RUN,
USER, ENTRYPOINT/CMD), then, per target image (`operator`, `trainer`): what runs as PID 1,
as which user, from which pinned base, with which dependencies, and where it may write.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

TARGETS = {"operator": "kubetune-operator", "trainer": "kubetune-train"}
SOURCE_ROOTS = {"api", "operator", "trainer", "gateway"}  # pyproject's [tool.setuptools.packages.find] where
RUN_AS = "65532"
TINI = "/usr/bin/tini"  # where Debian's and Ubuntu's tini package puts it


# -- parser ----------------------------------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str  # upper-case keyword
    args: str  # everything after the keyword, continuations joined
    line: int  # 1-based line of the keyword

    def exec_form(self) -> list[str] | None:
        """The JSON array of `CMD ["a", "b"]`, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """`--from=build --chown=1:1 a b` -> ({from: build, chown: 1:1}, "a b")."""
        flags: dict[str, str] = {}
        rest = self.args.strip()
        while m := re.match(r"--([\w-]+)(?:=(\S*))?\s+", rest):
            flags[m.group(1)] = m.group(2) or ""
            rest = rest[m.end() :]
        return flags, rest


@dataclass
class Stage:
    name: str | None
    base: str  # the image reference with build args substituted
    base_raw: str  # as written, e.g. ${PYTHON_IMAGE}
    index: int
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in {[s.name for s in self.stages]}")

    def lookup(self, ref: str) -> Stage | None:
        """A stage named by FROM or COPY --from (name or index), or None for an image."""
        for stage in self.stages:
            if ref in {stage.name, str(stage.index)}:
                return stage
        return None

    def closure(self, name: str) -> list[Stage]:
        """The stage and every stage it builds on (FROM) or copies from (COPY --from)."""
        seen: list[Stage] = []
        todo = [self.stage(name)]
        while todo:
            stage = todo.pop()
            if stage in seen:
                continue
            seen.append(stage)
            refs = [stage.base] + [c.flags_and_rest()[0].get("from", "") for c in stage.all("COPY")]
            todo += [s for ref in refs if (s := self.lookup(ref)) is not None]
        return seen

    def image_bases(self, name: str) -> list[str]:
        """External images the target's stages start from."""
        return [s.base for s in self.closure(name) if self.lookup(s.base) is None]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join `\\` continuations; drop comments, parser directives and blank lines.

    As in Docker, a comment line inside a continued instruction is skipped, not an end.
    """
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        out.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, f"line {start}: continuation runs off the end of the file"
    return out


def substitute(text: str, variables: dict[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}` and `$VAR`, as Docker expands them in FROM/ENV/COPY/USER..."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        value = variables.get(name, "")
        return value if value or default is None else default

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, text)


def parse_key_values(args: str) -> dict[str, str]:
    """`K=V K2="v 2"` (or the legacy `K V`) as ENV and ARG write them."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in logical_lines(text):
        keyword, _, args = content.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), line)
        if ins.cmd == "FROM":
            _, rest = ins.flags_and_rest()
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert m, f"line {line}: cannot parse FROM {args!r}"
            base = substitute(m.group(1), global_args)
            stage = Stage(m.group(2), base, m.group(1), len(stages))
            parent = next((s for s in stages if base in {s.name, str(s.index)}), None)
            if parent is not None:  # FROM another stage inherits its ENV
                stage.env = dict(parent.env)
            stages.append(stage)
            continue
        if not stages:
            assert ins.cmd == "ARG", f"line {line}: only ARG may come before the first FROM, not {ins.cmd}"
            global_args.update(parse_key_values(args) if "=" in args else {args.strip(): ""})
            continue
        stage = stages[-1]
        stage.instructions.append(ins)
        if ins.cmd == "ARG":
            # `ARG NAME` inside a stage brings a global ARG's default into scope.
            name, _, default = args.strip().partition("=")
            stage.args[name] = default or global_args.get(name, "")
        elif ins.cmd == "ENV":
            scope = {**stage.args, **stage.env}
            stage.env.update({k: substitute(v, scope) for k, v in parse_key_values(args).items()})
    return Dockerfile(global_args, stages)


@dataclass
class Image:
    """The runtime configuration of one target, as `docker inspect` would show it."""

    stage: Stage
    user: str | None
    user_line: int | None
    entrypoint: list[str]
    entrypoint_line: int | None
    cmd: list[str]
    volumes: list[str]
    env: dict[str, str]
    workdir: str | None

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


def image_config(df: Dockerfile, target: str) -> Image:
    chain: list[Stage] = []
    stage: Stage | None = df.stage(target)
    while stage is not None:  # FROM another stage inherits its runtime config
        chain.insert(0, stage)
        stage = df.lookup(stage.base)
    image = Image(df.stage(target), None, None, [], None, [], [], {}, None)
    for stage in chain:
        for ins in stage.instructions:
            if ins.cmd == "USER":
                image.user, image.user_line = substitute(ins.args.strip(), {**stage.args, **stage.env}), ins.line
            elif ins.cmd == "ENTRYPOINT":
                form = ins.exec_form()
                assert form is not None, f"line {ins.line}: ENTRYPOINT must use the exec form (JSON array)"
                image.entrypoint, image.entrypoint_line, image.cmd = form, ins.line, []
            elif ins.cmd == "CMD":
                form = ins.exec_form()
                assert form is not None, f"line {ins.line}: CMD must use the exec form (JSON array)"
                image.cmd = form
            elif ins.cmd == "VOLUME":
                form = ins.exec_form()
                image.volumes += form if form is not None else ins.args.split()
            elif ins.cmd == "WORKDIR":
                image.workdir = ins.args.strip()
        image.env = dict(stage.env)
    return image


def run_lines(df: Dockerfile, target: str) -> list[str]:
    """Every RUN command of the target and of the stages it builds on or copies from."""
    return [ins.flags_and_rest()[1] for stage in df.closure(target) for ins in stage.all("RUN")]


def pip_extras(command: str) -> set[str]:
    """Extras named in `pip install ".[a,b]"`."""
    return {extra.strip() for group in re.findall(r"\.\[([\w, -]+)\]", command) for extra in group.split(",")}


def requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def under(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


# -- .dockerignore ---------------------------------------------------------------------------------


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per pattern, with Docker's semantics: `*` within one path element,
    `**` across any number, a leading `/` ignored, and a pattern that matches a directory
    excluding everything below it."""
    rules = []
    for raw in text.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negated, re.compile(regex + "(?:/.*)?")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """The last matching rule wins."""
    result = False
    for negated, regex in rules:
        if regex.fullmatch(path):
            result = not negated
    return result


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def df() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())


# -- the parser itself -----------------------------------------------------------------------------


def test_parser_handles_continuations_comments_args_and_stages() -> None:
    text = """# syntax=docker/dockerfile:1.7
ARG BASE=python:3.11.11-slim-bookworm
ARG OTHER
FROM ${BASE} AS build
ARG OTHER=x
ENV A=1 B="two words" \\
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \\
# a comment inside a continuation is skipped
 && apt-get install -y tini
FROM build as final
COPY --from=build --chown=1:1 /opt/venv /opt/venv
USER 65532:65532
VOLUME /tmp /cache
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kubetune-train", "--config", "/etc/x.json"]
"""
    parsed = parse_dockerfile(text)
    assert parsed.global_args == {"BASE": "python:3.11.11-slim-bookworm", "OTHER": ""}
    build, final = parsed.stages
    assert (build.name, build.base, build.base_raw) == ("build", "python:3.11.11-slim-bookworm", "${BASE}")
    assert build.env == {"A": "1", "B": "two words", "PATH": "/opt/venv/bin:"}
    assert build.args == {"OTHER": "x"}
    assert build.all("RUN")[0].args == "apt-get update && apt-get install -y tini"
    assert final.base == "build" and final.env["B"] == "two words"
    assert final.all("COPY")[0].flags_and_rest() == ({"from": "build", "chown": "1:1"}, "/opt/venv /opt/venv")
    image = image_config(parsed, "final")
    assert image.argv == ["/usr/bin/tini", "--", "kubetune-train", "--config", "/etc/x.json"]
    assert image.volumes == ["/tmp", "/cache"] and image.user == "65532:65532"
    assert [s.name for s in parsed.closure("final")] == ["final", "build"]


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = dockerignore_rules("# c\n.venv*\n**/__pycache__\nexamples/m\n/runs\n!runs/keep\n*.py[co]\n")
    assert ignored(".venv-helm/bin/python", rules) and ignored(".venv", rules)
    assert ignored("api/pkg/__pycache__/x.pyc", rules) and ignored("__pycache__/x", rules)
    assert ignored("examples/m/config.json", rules) and not ignored("examples/mm", rules)
    assert ignored("runs/a", rules) and not ignored("runs/keep/a", rules)
    assert ignored("x.pyc", rules) and not ignored("a/x.pyc", rules) and not ignored("x.py", rules)


# -- both images -----------------------------------------------------------------------------------


def test_targets_exist_and_are_the_last_two_stages(df: Dockerfile) -> None:
    names = [s.name for s in df.stages]
    assert set(TARGETS) <= set(names), names
    # Every other stage is a build stage some target copies from (no dead stages).
    used = {s.name for target in TARGETS for s in df.closure(target)}
    assert set(names) == used, f"unused stages: {set(names) - used}"


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_is_tini_then_the_console_script(df: Dockerfile, pyproject: dict, target: str) -> None:
    image = image_config(df, target)
    argv = image.argv
    assert argv, f"{target}: no ENTRYPOINT/CMD"
    if Path(argv[0]).name == "tini":
        assert argv[0] == TINI, f"{target}: tini is at {TINI} in the Debian/Ubuntu package, not {argv[0]}"
        assert "--" in argv, f"{target}: tini needs `--` before the command"
        argv = argv[argv.index("--") + 1 :]
    else:
        pytest.fail(f"{target}: PID 1 must be tini, got {argv}")
    scripts = pyproject["project"]["scripts"]
    assert argv and argv[0] in scripts, f"{target}: {argv[:1]} is not in [project.scripts] {sorted(scripts)}"
    assert argv[0] == TARGETS[target]


@pytest.mark.parametrize("target", TARGETS)
def test_tini_is_installed_in_the_final_stage(df: Dockerfile, target: str) -> None:
    installs = [ins.args for ins in df.stage(target).all("RUN") if re.search(r"apt-get install\b.*\btini\b", ins.args)]
    assert installs, f"{target}: tini must be installed (apt-get install tini) in the final stage"


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_numeric_non_root_user_set_before_entrypoint(df: Dockerfile, target: str) -> None:
    image = image_config(df, target)
    assert image.user is not None, f"{target}: no USER (it would run as root)"
    m = re.fullmatch(r"(\d+):(\d+)", image.user)
    assert m, f"{target}: USER {image.user!r} must be numeric uid:gid (runAsNonRoot can only verify numbers)"
    assert m.group(1) == RUN_AS and m.group(2) == RUN_AS, image.user
    assert int(m.group(1)) != 0 and int(m.group(2)) != 0
    assert image.user_line is not None and image.entrypoint_line is not None
    assert image.user_line < image.entrypoint_line, f"{target}: USER must come before ENTRYPOINT"
    # Nothing runs as the unprivileged user that needs root (installs happen before USER).
    for ins in df.stage(target).instructions:
        if ins.cmd == "RUN":
            assert ins.line < image.user_line, f"line {ins.line}: RUN after USER in {target}"


@pytest.mark.parametrize("target", TARGETS)
def test_uid_matches_the_pods_security_context(df: Dockerfile, target: str) -> None:
    """The operator's trainer/preflight pods set runAsUser/runAsGroup/fsGroup to the same ids."""
    from kubetune_operator.manifests import RUN_AS as POD_RUN_AS

    assert image_config(df, target).user == f"{POD_RUN_AS}:{POD_RUN_AS}"


def test_base_images_are_pinned_through_arg_defaults(df: Dockerfile) -> None:
    for stage in df.stages:
        if df.lookup(stage.base) is not None:
            continue  # FROM another stage
        m = re.fullmatch(r"\$\{(\w+)\}", stage.base_raw)
        assert m, f"stage {stage.name}: FROM {stage.base_raw} should name an ARG, so builds can override the pin"
        assert m.group(1) in df.global_args and df.global_args[m.group(1)], f"ARG {m.group(1)} needs a default"
        image = stage.base
        repo, _, tag = image.split("@")[0].rpartition(":")
        assert repo and "/" not in tag, f"{image}: no tag"
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{image}: tag must be a full version (x.y.z)"
    assert "digest" in DOCKERFILE.read_text(), "say how to pin by digest in production"


def test_build_args_have_pinned_defaults(df: Dockerfile) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", df.global_args["TORCH_VERSION"])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", df.global_args["TORCH_INDEX_URL"])


@pytest.mark.parametrize("target", TARGETS)
def test_dependencies_are_installed_before_the_source_is_copied(df: Dockerfile, target: str) -> None:
    """The dependency layer depends on pyproject.toml only, so a source edit rebuilds seconds, not GBs."""
    for stage in df.closure(target):
        source_copies = [
            ins.line
            for ins in stage.all("COPY")
            if "from" not in ins.flags_and_rest()[0]
            and any(src.rstrip("/") in SOURCE_ROOTS for src in ins.flags_and_rest()[1].split()[:-1])
        ]
        if not source_copies:
            continue
        installs = [i for i in stage.all("RUN") if "pip install" in i.args]
        deps = [i.line for i in installs if pip_extras(i.args) and "--no-deps" not in i.args]
        final = [i.line for i in installs if "--no-deps" in i.args]
        assert deps and max(deps) < min(source_copies), f"{stage.name}: install the extra before copying the source"
        assert final and min(final) > max(source_copies), f"{stage.name}: install the source with --no-deps"
        pyproject_copy = [i.line for i in stage.all("COPY") if "pyproject.toml" in i.args]
        assert pyproject_copy and min(pyproject_copy) < min(deps)


# -- operator --------------------------------------------------------------------------------------


def test_operator_never_installs_torch_or_cuda(df: Dockerfile) -> None:
    for command in run_lines(df, "operator"):
        assert not re.search(r"torch|cuda|nvidia", command, flags=re.IGNORECASE), command
        if "pip install" in command and pip_extras(command):
            assert pip_extras(command) == {"operator"}, command
    assert any(pip_extras(c) == {"operator"} for c in run_lines(df, "operator")), "install .[operator]"
    for base in df.image_bases("operator"):
        assert not re.search(r"cuda|nvidia|pytorch", base, flags=re.IGNORECASE), base
        assert base.startswith("python:") and "slim" in base, f"operator base {base} should be python slim"


def test_operator_extra_does_not_pull_torch(pyproject: dict) -> None:
    project = pyproject["project"]
    names = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]}
    heavy = {"torch", "transformers", "peft", "accelerate", "triton", "safetensors", "tokenizers"}
    assert not names & heavy, names & heavy
    assert not {n for n in names if n.startswith("nvidia-")}
    assert {"kopf", "kubernetes"} <= names
    assert "torch" in {requirement_name(r) for r in project["optional-dependencies"]["train"]}


def test_operator_extra_does_not_pull_torch_transitively(pyproject: dict) -> None:
    """Walk the installed metadata (this venv has every extra installed) from the operator's requirements."""
    metadata = pytest.importorskip("importlib.metadata")
    requirements = pytest.importorskip("packaging.requirements")
    project = pyproject["project"]
    todo = [requirements.Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = requirement_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for extra in req.extras or {""}:
            for line in dist.requires or []:
                sub = requirements.Requirement(line)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    assert "kopf" in seen and "torch" not in seen and "triton" not in seen, sorted(seen)


def test_operator_image_carries_the_api_server(df: Dockerfile, pyproject: dict) -> None:
    """kubetune-api (the chart's api-server Deployment) runs from the operator image: its source is
    copied and installed there, its entry point is a console script, and it imports at build time."""
    assert set(pyproject["tool"]["setuptools"]["packages"]["find"]["where"]) == SOURCE_ROOTS
    assert pyproject["project"]["scripts"]["kubetune-api"] == "kubetune_gateway.cli:main"
    copied = {
        src.rstrip("/")
        for stage in df.closure("operator")
        for ins in stage.all("COPY")
        if "from" not in ins.flags_and_rest()[0]
        for src in ins.flags_and_rest()[1].split()[:-1]
    }
    assert copied >= SOURCE_ROOTS, copied
    assert any("import" in c and "kubetune_gateway.cli" in c for c in run_lines(df, "operator"))
    stubs = [c for c in run_lines(df, "operator") + run_lines(df, "trainer") if c.startswith("mkdir -p")]
    assert stubs and all(set(c.split("&&")[0].split()[2:]) == SOURCE_ROOTS for c in stubs), stubs


def test_operator_writes_only_to_its_tmp_volume(df: Dockerfile) -> None:
    image = image_config(df, "operator")
    assert image.volumes == ["/tmp"]
    for key in ("HOME", "XDG_CACHE_HOME"):
        assert under(image.env[key], "/tmp"), f"{key}={image.env[key]}"
    assert image.env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert image.workdir is not None and under(image.workdir, "/tmp")


# -- trainer ---------------------------------------------------------------------------------------


def test_trainer_is_cuda_with_the_train_extra(df: Dockerfile) -> None:
    bases = df.image_bases("trainer")
    assert bases and all(b.startswith("nvidia/cuda:") for b in bases), bases
    commands = run_lines(df, "trainer")
    # qlora: bitsandbytes, so lora.quantization works in the image (and its preflight does not refuse it)
    assert any(pip_extras(c) == {"train", "qlora"} for c in commands), "install .[train,qlora]"
    assert all(pip_extras(c) <= {"train", "qlora"} for c in commands), "the trainer needs no operator or dev extra"
    torch = [c for c in commands if re.search(r"pip install\s+\S*torch", c)]
    assert torch and all("--index-url" in c for c in torch), "torch comes from the CUDA wheel index"


def test_trainer_writable_paths_are_declared_volumes(df: Dockerfile) -> None:
    image = image_config(df, "trainer")
    assert set(image.volumes) == {"/tmp", "/cache"}, image.volumes
    cache_like = [k for k in image.env if k == "HOME" or re.search(r"(CACHE|_HOME$|CONFIGDIR$|_DIR$)", k)]
    assert {"HOME", "HF_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "MPLCONFIGDIR"} <= set(cache_like)
    for key in cache_like:
        assert any(under(image.env[key], v) for v in image.volumes), f"{key}={image.env[key]} is not in a volume"
    assert image.workdir is not None and any(under(image.workdir, v) for v in image.volumes)
    assert image.env.get("HF_HUB_OFFLINE") == "1", "weights come from your buckets, never the hub"


def test_trainer_volumes_match_what_the_operator_mounts(df: Dockerfile) -> None:
    from kubetune_operator.manifests import CONFIG_DIR, CONFIG_FILE, pod_runtime
    from kubetune_operator.settings import OperatorSettings

    image = image_config(df, "trainer")
    runtime = pod_runtime(OperatorSettings(), attempt=1)
    assert runtime.work_dir is not None
    for path in (runtime.cache_dir, runtime.work_dir):
        assert any(under(path, v) for v in image.volumes), f"the operator's {path} is not a declared volume"
    assert image.cmd[-2:] == ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]


# -- .dockerignore ---------------------------------------------------------------------------------


def context_sources(df: Dockerfile) -> list[str]:
    """Paths COPY takes from the build context (not from other stages)."""
    out = []
    for stage in df.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, rest = ins.flags_and_rest()
            if "from" not in flags:
                form = Instruction(ins.cmd, rest, ins.line).exec_form()
                out += (form if form is not None else rest.split())[:-1]
    return out


def test_dockerignore_excludes_venvs_git_and_model_caches() -> None:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in (
        ".venv/bin/python",
        ".venv-helm/bin/helm",
        ".git/HEAD",
        "runs/quickstart/adapter_model.safetensors",
        "examples/quickstart/model/model.safetensors",
        ".cache/huggingface/hub/x",
        "trainer/kubetune_trainer/__pycache__/cli.cpython-311.pyc",
        "kubetune.egg-info/PKG-INFO",
        ".pytest_cache/v/x",
        ".mypy_cache/3.11/x",
        ".ruff_cache/x",
        "tests/unit/test_dockerfile.py",
        "bench/train_throughput.py",
        "docs/install.md",
    ):
        assert ignored(path, rules), f"{path} should be excluded from the build context"


def test_dockerignore_keeps_everything_the_dockerfile_copies(df: Dockerfile) -> None:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    sources = context_sources(df)
    assert {"pyproject.toml", "README.md", *SOURCE_ROOTS} <= {s.rstrip("/") for s in sources}
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        tracked = [str(p.relative_to(ROOT)) for s in sources for p in [ROOT / s, *(ROOT / s).rglob("*.py")]]
    for source in sources:
        assert not ignored(source.rstrip("/"), rules), f"{source} is copied but excluded by .dockerignore"
        files = [f for f in tracked if under(f, source)]
        assert files, f"{source} has no tracked files"
        for path in files:
            assert not ignored(path, rules), f"{path} is copied but excluded by .dockerignore"
