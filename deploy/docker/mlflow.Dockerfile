# The MLflow tracking server on a PostgreSQL backend store (deploy/compose.yaml): the upstream
# image plus the psycopg driver that `postgresql+psycopg://` backend URIs load.
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.17.2
FROM ${MLFLOW_IMAGE}
RUN pip install --no-cache-dir "psycopg[binary]==3.3.9"
RUN useradd --uid 10002 --create-home mlflow && mkdir -p /mlflow && chown mlflow /mlflow
USER 10002
