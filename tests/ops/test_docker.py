"""ops/docker/Dockerfile, read as Docker would (no daemon here to build it): a builder stage that compiles the
Cython kernels portably from the package's sources, a slim Python 3.11 runtime without build tools that gets only
the built environment, a fixed non-root uid matching the Kubernetes pods, ``bitnet-actor serve``, no secrets, and
a .dockerignore that keeps the context to what the build copies.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field

import yaml

from bitnet_actor.config import SETTINGS_DOC, Settings
from tests.ops._tools import REPO

DOCKERFILE = REPO / "ops" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "ops" / "docker" / "Dockerfile.dockerignore"
BUILD_TOOLS = {"gcc", "g++", "build-essential", "make", "cmake", "clang", "cython3", "python3-dev", "libc6-dev", "git"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile: comments dropped, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation runs off the end"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=base, name=alias))
        elif not stages:
            assert name == "ARG", f"{name} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((name, args.strip()))
    return global_args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def apt_packages(stage: Stage) -> set[str]:
    found: set[str] = set()
    for run in stage.args("RUN"):
        for command in re.split(r"&&|;", run):
            words = command.split()
            if words[:2] == ["apt-get", "install"]:
                found |= {w for w in words[2:] if not w.startswith("-")}
    return found


def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_parser_reads_continuations_and_stages() -> None:
    text = "ARG B=x:1\nFROM ${B} AS one\nRUN a \\\n  # note\n && b\nFROM one\nUSER 5\n"
    args, found = parse(text)
    assert args == {"B": "x:1"}
    assert [(s.base, s.name) for s in found] == [("x:1", "one"), ("one", "1")]
    assert found[0].instructions == [("RUN", "a  && b")]


def test_multi_stage_builder_and_slim_runtime() -> None:
    builder, *_, runtime = stages()
    assert builder.name == "builder" and runtime.name != "builder"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", runtime.base), runtime.base
    assert builder.base == runtime.base, "the venv copied across needs the same Python at the same path"
    # the runtime gets the built environment from the builder and nothing from the build context
    copies = runtime.args("COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies)
    assert not BUILD_TOOLS & apt_packages(runtime)
    assert not any(re.search(r"\bpip\b.*\binstall\b", run) for run in runtime.args("RUN"))
    assert BUILD_TOOLS & apt_packages(builder), "the builder compiles the Cython extensions"


def test_builder_compiles_the_package_portably() -> None:
    builder = stages()[0]
    assert env_of(builder).get("BITNET_PORTABLE_BUILD") == "1", "no -march=native of the build machine (setup.py)"
    runs = " && ".join(builder.args("RUN"))
    assert re.search(r"pip install \.(\s|$)", runs) or re.search(r"pip wheel", runs)
    assert "import kernels_cython._ternary" in runs and "bitnet_actor.engine._ops" in runs
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set()
    for args in builder.args("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        copied |= {w.rstrip("/") for w in words[:-1]}
    assert needed <= copied, f"the build needs {sorted(needed - copied)}"
    for path in copied:
        assert (REPO / path).exists(), path


def test_non_root_fixed_uid_matching_the_pods() -> None:
    runtime = stages()[-1]
    (user,) = runtime.args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), "a numeric uid lets runAsNonRoot verify it"
    deployment = yaml.safe_load((REPO / "ops" / "k8s" / "base" / "deployment.yaml").read_text())
    job = yaml.safe_load((REPO / "ops" / "k8s" / "base" / "migrate-job.yaml").read_text())
    for workload in (deployment, job):
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid or uid))
    names = [name for name, _ in runtime.instructions]
    assert names.index("USER") < names.index("ENTRYPOINT")
    assert any(f"--uid {uid}" in run for run in runtime.args("RUN")), "the uid has a passwd entry"


def test_entrypoint_serves_on_the_settings_port() -> None:
    runtime = stages()[-1]
    (entrypoint,) = runtime.args("ENTRYPOINT")
    (cmd,) = runtime.args("CMD")
    argv = json.loads(entrypoint) + json.loads(cmd)  # exec form: no shell between the signal and the process
    assert argv == ["bitnet-actor", "serve"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "bitnet-actor" in pyproject["project"]["scripts"]
    env = env_of(runtime)
    assert {k for k in env if k.startswith("BITNET_")} <= set(SETTINGS_DOC)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("BITNET_")})
    assert settings.host == "0.0.0.0"
    assert runtime.args("EXPOSE") == [str(settings.port)]
    (healthcheck,) = runtime.args("HEALTHCHECK")
    assert f"127.0.0.1:{settings.port}/healthz" in healthcheck


def test_no_secrets_in_the_image() -> None:
    secret = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY\b|_KEYS\b|DATABASE_URL|REDIS_URL|ACCESS_KEY", re.IGNORECASE)
    for stage in stages():
        for key in env_of(stage):
            assert not secret.search(key), key
        for args in stage.args("ARG"):
            assert not secret.search(args.partition("=")[0]), args
        for args in stage.args("COPY") + stage.args("ADD"):
            assert not re.search(r"\.env\b|secret|\.pem\b|\.key\b", args, re.IGNORECASE), args
    assert not stages()[-1].args("ADD")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    sent = {path for path in tracked if not _ignored(path, patterns)}
    assert "bitnet_actor/config.py" in sent and "kernels_cython/_ternary.pyx" in sent and "setup.py" in sent
    assert any(p.startswith("bitnet_actor/demo_model/") for p in sent), "the bundled demo model is package data"
    assert not any(p.startswith(("tests/", "ops/", "docs/", ".ci/")) for p in sent)
    for built in (
        ".venv/bin/python",
        "kernels_cython/_ternary.c",
        "kernels_cython/_ternary.cpython-311-x86_64-linux-gnu.so",
        "bitnet_actor/__pycache__/cli.cpython-311.pyc",
        ".git/config",
        "data/postgres/PG_VERSION",
    ):
        assert _ignored(built, patterns), built
