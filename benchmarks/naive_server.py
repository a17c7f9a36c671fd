"""The baseline the reports shipped: one FastAPI endpoint that runs the PyTorch model on each
request as it comes (a plain `def` endpoint, so FastAPI's thread pool runs requests side by side,
each a batch of one). No batching, no ONNX, no request log. Same bundle and same answers
(calibrated softmax) as paperops, so the benchmark compares serving, not models.

    python -m benchmarks.naive_server --model models/demo_embedding --port 8001
"""

from __future__ import annotations

import argparse

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from paperops.data.text import model_text
from paperops.models.base import load_classifier


class Paper(BaseModel):
    title: str
    abstract: str


def build_app(model_dir: str) -> FastAPI:
    model = load_classifier(model_dir)
    app = FastAPI()

    @app.post("/predict")
    def predict(paper: Paper) -> dict:
        logits = np.asarray(model.logits([model_text(paper.title, paper.abstract)]))[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        return {
            "top_category": model.labels[int(top[0])],
            "predictions": [
                {"category": model.labels[int(i)], "confidence": float(p[i])} for i in top
            ],
        }

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    uvicorn.run(build_app(a.model), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
