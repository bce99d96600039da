# cased-stream worker image.
#
#   docker build -t cased-stream:cpu .                          # CPU torch (default, small)
#   docker build -t cased-stream:cuda --build-arg VARIANT=cuda .  # CUDA torch from PyPI
#
# VARIANT=cpu installs torch/torchvision from TORCH_INDEX_URL (the PyTorch CPU index by
# default; the CUDA wheels are several GB). VARIANT=cuda installs the default PyPI wheels,
# which are CUDA builds that bundle the CUDA runtime as pip packages, so both variants use
# the same python:slim base: a GPU node only needs the NVIDIA driver and container toolkit.
# Either way torch/torchvision are held to the pair pinned in constraints.txt.
#
# Configuration is environment only (CASED_*, AWS_*, OTEL_*; see docs/configuration.md).

ARG PYTHON_VERSION=3.11.14

# --- builder: the full python image carries the compilers a source build may need ------------
FROM python:${PYTHON_VERSION}-bookworm AS builder

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# torch first, alone, so the heavy layer is cached independently of the project's sources.
COPY constraints.txt ./
RUN case "$VARIANT" in \
      cpu)  index="$TORCH_INDEX_URL" ;; \
      cuda) index="https://pypi.org/simple" ;; \
      *)    echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir --index-url "$index" -c constraints.txt torch torchvision

COPY pyproject.toml README.md ./
COPY cased_core ./cased_core
COPY topics ./topics
COPY workers ./workers
# Not editable: the package and its data (tiny model, tiny database, lexicon) go into the venv.
RUN pip install --no-cache-dir -c constraints.txt .

# --- runtime: the venv only, no compilers -----------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="cased-stream" \
      org.opencontainers.image.description="CaSED vocabulary-free image classification worker (Kafka/Faust)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.cased-stream.variant="${VARIANT}"

# Fixed UID/GID so Kubernetes can enforce runAsNonRoot/runAsUser against it.
RUN groupadd --system --gid 10001 cased \
    && useradd --system --uid 10001 --gid 10001 --home-dir /cache --no-create-home \
       --shell /usr/sbin/nologin cased \
    && mkdir -p /cache /data \
    && chown 10001:10001 /cache /data

COPY --from=builder /opt/venv /opt/venv

# /cache holds model weights and s3:// databases (open_clip, Hugging Face and torch caches
# included, via HOME/XDG/HF/TORCH); /data is the working directory, where Faust keeps its
# data dir. With a read-only root filesystem both must be mounted writable.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/cache \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    CASED_CACHE_DIR=/cache \
    CASED_DEVICE=auto \
    CASED_WEB_PORT=6066

VOLUME ["/cache"]
WORKDIR /data
USER 10001:10001
EXPOSE 6066

# Kubernetes uses its own probes; this serves plain `docker run`. /live, not /ready: a worker
# still downloading its model is starting, not unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/live' % os.environ.get('CASED_WEB_PORT', '6066'), timeout=4)"]

ENTRYPOINT ["cased", "worker"]
