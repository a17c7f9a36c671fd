"""The MLflow pyfunc wrapper around a paperops language-model bundle (models-from-code).

Like `mlflow_pyfunc.py` for classifiers: `tracking.log_model_bundle` logs this file's source and
the bundle directory as the artifact `bundle`, so loading never unpickles anything.

Input: a DataFrame with a `prompt` column. Params (optional): max_new_tokens, temperature, top_p,
top_k, seed. Output: a DataFrame with `text` (the continuation) and `generated_tokens`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

BUNDLE_ARTIFACT = "bundle"
INPUT_EXAMPLE = {"prompt": ["What are the side effects of"]}
PARAMS = {"max_new_tokens": 32, "temperature": 0.8, "top_p": 0.95, "top_k": 0, "seed": 0}


class LMBundleModel(PythonModel):
    """Seeded sampling from a paperops GPT-2 bundle, with the KV cache."""

    def load_context(self, context: Any) -> None:
        # deferred: pulls torch
        from paperops.inference.decoding import TorchDecoder

        # deferred: pulls lightning, torch
        from paperops.models.lm import load_lm

        self.lm = load_lm(Path(context.artifacts[BUNDLE_ARTIFACT]))
        self.backend = TorchDecoder(self.lm)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        # deferred: pulls torch
        from paperops.inference.decoding import SamplingParams, generate

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame.columns:
            raise ValueError(f"model input lacks a 'prompt' column; got {list(frame.columns)}")
        p = {**PARAMS, **(params or {})}
        rows = []
        for i, prompt in enumerate(frame["prompt"].fillna("").astype(str)):
            sp = SamplingParams(
                max_new_tokens=int(p["max_new_tokens"]),
                temperature=float(p["temperature"]),
                top_p=float(p["top_p"]),
                top_k=int(p["top_k"]),
                seed=int(p["seed"]) + i,
            )
            ids = list(generate(self.backend, self.lm.prompt_ids(prompt), sp))
            rows.append({"text": self.lm.decode(ids), "generated_tokens": len(ids)})
        return pd.DataFrame(rows, columns=["text", "generated_tokens"])


mlflow.models.set_model(LMBundleModel())
