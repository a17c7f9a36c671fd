# syntax=docker/dockerfile:1
# The paperops API: `paperops serve` on an ONNX export directory, with only the `serve` extra
# (FastAPI, uvicorn, ONNX Runtime, prometheus-client, SQLAlchemy): no torch, no MLflow, no
# compilers in the final image. Build from the repository root:
#
#   docker build -f deploy/docker/api.Dockerfile -t paperops-api .
#
# The model is an ONNX export directory (`paperops export`, e.g. models/demo_embedding_onnx:
# model.onnx, model.int8.onnx, export.json, tokenizer/ ...). Two ways to give it:
#   mounted (default target `mounted`): nothing baked in; mount the export dir read-only at /models
#     docker run -p 8000:8000 -v "$PWD/models/demo_embedding_onnx:/models:ro" paperops-api
#   baked (target `baked`): copy an export dir into the image from a named build context
#     docker build -f deploy/docker/api.Dockerfile --target baked \
#       --build-context model=models/demo_embedding_onnx -t paperops-api:baked .
# A bundle needing the train extra (tfidf: scikit-learn + skops) or the registry (MLflow) cannot
# be served by this image: export it first. Generation (/v1/generate) needs torch, so this image
# answers 503 there.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# what the wheel is built from (hatchling reads requirements/*.txt for the extras; configs ship
# inside the wheel so the CLI works outside a checkout)
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY configs/ configs/
COPY src/ src/
# only the serve extra, every package pinned by the lock (a constraints file)
RUN /opt/venv/bin/pip install -c requirements/lock.txt ".[serve]" \
    && /opt/venv/bin/paperops --version

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
# a fixed numeric uid, so Kubernetes `runAsNonRoot` can verify it
RUN groupadd --system --gid "${UID}" paperops \
    && useradd --system --uid "${UID}" --gid paperops --home-dir /home/paperops \
       --create-home --shell /usr/sbin/nologin paperops \
    && mkdir -p /models /var/lib/paperops \
    && chown paperops:paperops /var/lib/paperops
COPY --from=builder /opt/venv /opt/venv
# offline and quiet: no hub downloads, no telemetry; JSON logs for the log collector.
# OMP_NUM_THREADS and serve.threads should match the CPU limit of the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    OMP_NUM_THREADS=2 \
    PAPEROPS_LOG_FORMAT=json
# the request log (SQLite, for drift detection) goes to /var/lib/paperops/requests/: a volume
VOLUME ["/var/lib/paperops"]
WORKDIR /var/lib/paperops
# numeric, so Kubernetes `runAsNonRoot` can check it without reading /etc/passwd
USER ${UID}:${UID}
EXPOSE 8000
# liveness only (the process answers); readiness (/readyz: model loaded) is the orchestrator's.
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
# --wait-ready: listen at once (/healthz answers) and load the model in the background
# (/readyz turns 200 when it is ready); Hydra overrides follow the options.
CMD ["paperops", "serve", "--model", "/models", "--wait-ready", \
     "serve.host=0.0.0.0", "serve.port=8000", "serve.threads=2", "paths.data=/var/lib/paperops"]

# an export dir baked into the image: `--target baked --build-context model=<export dir>`
FROM runtime AS baked
# `model` is a named build context (--build-context), not a stage
# hadolint ignore=DL3022
COPY --from=model --chown=root:root . /models/

# default target: the model is mounted at /models
FROM runtime AS mounted
