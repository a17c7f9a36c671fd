# syntax=docker/dockerfile:1
# The training pipeline: `dvc repro` with the train + monitor extras and the CPU build of torch.
# Build from the repository root, run on a checkout mounted at /workspace with the dev data
# beside it (never baked into an image):
#
#   docker build -f deploy/docker/train.Dockerfile -t paperops-train .
#   docker run --rm -v "$PWD:/workspace" -v "$PWD/../shared:/shared:ro" paperops-train
#
# The checkout (with .git and .dvc) is mounted rather than copied: DVC needs the git repository
# and writes data/, models/, reports/ and mlruns/ back into it. Run with
# `--user "$(id -u):$(id -g)" -e HOME=/tmp` so the outputs belong to you. The checkout's src/ is
# what runs (PYTHONPATH), so the code DVC hashes as a stage dependency is the code executed; the
# image supplies the dependencies (rebuild it when requirements/ change).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY configs/ configs/
COPY src/ src/
# torch==2.13.0 is pinned in requirements/train.txt; the CPU index supplies the +cpu build (an
# unpinned torch from PyPI is a CUDA build with several GB of nvidia packages)
RUN /opt/venv/bin/pip install -c requirements/lock.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu ".[train,monitor]" \
    && /opt/venv/bin/paperops --version

FROM ${PYTHON_IMAGE}
ARG UID=10001
# git: DVC reads the repository state; Debian's security updates replace exact versions, so
# the package is not pinned (the base image tag pins the release)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${UID}" paperops \
    && useradd --system --uid "${UID}" --gid paperops --home-dir /home/paperops \
       --create-home --shell /usr/sbin/nologin paperops \
    && git config --system --add safe.directory /workspace
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    PAPEROPS_SHARED=/shared \
    PYTHONPATH=/workspace/src \
    OMP_NUM_THREADS=2
WORKDIR /workspace
# numeric, so Kubernetes `runAsNonRoot` can check it without reading /etc/passwd
USER ${UID}:${UID}
# stages whose inputs did not change are skipped; `docker run ... paperops-train dvc repro -f`
CMD ["dvc", "repro"]
