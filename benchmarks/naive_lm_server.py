"""The baseline the first report shipped: `/infer` runs `model.generate` per request, without
reusing the KV cache (`use_cache=False`: every new token re-reads the whole sequence), one
request at a time per thread of FastAPI's pool. Same bundle and sampling settings as paperops.

    python -m benchmarks.naive_lm_server --model models/demo_lm --port 8002
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from paperops.models.lm import load_lm


class Infer(BaseModel):
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    ignore_eos: bool = False


def build_app(model_dir: str, threads: int) -> FastAPI:
    torch.set_num_threads(threads)
    lm = load_lm(model_dir)
    app = FastAPI()

    @app.post("/infer")
    def infer(body: Infer) -> dict:
        ids = torch.tensor([lm.prompt_ids(body.prompt)])
        torch.manual_seed(body.seed)
        with torch.no_grad():
            out = lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=body.temperature,
                top_p=body.top_p,
                max_new_tokens=body.max_new_tokens,
                min_new_tokens=body.max_new_tokens if body.ignore_eos else None,
                use_cache=False,
                pad_token_id=lm.eos_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        if lm.eos_token_id in new and not body.ignore_eos:
            new = new[: new.index(lm.eos_token_id)]
        return {"text": lm.decode(new), "tokens": {"generated": len(new)}}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    uvicorn.run(build_app(a.model, a.threads), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
