#!/usr/bin/env bash
# The GPU benchmarks (README: Benchmarks), on a machine with an NVIDIA GPU, its own PyTorch and no network.
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
    rm -rf "$wheels" && mkdir -p "$wheels"
    python3 -m pip download --quiet --dest "$wheels" --only-binary=:all: \
        --python-version "${GPU_PYTHON:-3.12}" --implementation cp --abi "cp${GPU_PYTHON:-3.12}" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any ".[demo]"
    rm -f "$wheels"/cased_stream-*  # the project itself travels as source
    for name in $IMAGE_HAS; do
        pattern=$(echo "$name" | tr '-' '_')
        find "$wheels" -maxdepth 1 -iregex ".*/${pattern}-[0-9].*\.whl" -delete
    done
    echo "$(ls "$wheels" | wc -l) wheels, $(du -sh "$wheels" | cut -f1), in $wheels" >&2
    ;;
run)
    [ -d "$wheels" ] || { echo "no wheels in $wheels: run 'tools/gpu_bench.sh download $wheels' where pip can reach the registries" >&2; exit 2; }
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: run this on a machine with an NVIDIA GPU" >&2; exit 2; }
    mkdir -p "$out"
    python3 -m venv --system-site-packages .gpu-venv
    .gpu-venv/bin/pip install --quiet --no-index --find-links "$wheels" --no-build-isolation -e ".[demo]"
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
