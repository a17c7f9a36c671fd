"""ONNX Runtime decoding of an exported GPT-2 (`paperops export` of an `lm` bundle).

One graph, `decoder.onnx` (or its int8 twin), serves both the prefill and every decode step:
inputs `input_ids`, `attention_mask` (past + new positions), `position_ids` and the per-layer
`past.{i}.key` / `past.{i}.value` (batch, heads, past_len, head_dim); outputs the LAST
position's `logits` (batch, vocab) and `present.{i}.key` / `present.{i}.value` (past + new). The
prefill passes a zero-length past, which ONNX Runtime accepts, so there is no second graph.

`OnnxDecoder` implements `paperops.generation.DecoderBackend` with torch tensors in and out
(`Tensor.numpy()` / `torch.from_numpy` share memory, no copies), so the sampler and `generate`
run unchanged on either backend, and a past from one backend is valid input for the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paperops.models.base import EXPORT_FILE, ModelLoadError, is_language_model
from paperops.models.onnx_session import open_session

LM_INPUTS = ("input_ids", "attention_mask", "position_ids")
LOGITS = "logits"


def past_names(n_layer: int, prefix: str = "past") -> list[str]:
    """Graph names of the per-layer key/value tensors, in `Past` order (k0, v0, k1, v1, ...)."""
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def _hint(export_dir: Path) -> str:
    return f"re-export it: `paperops export --model <lm bundle> --output {export_dir}`"


def read_lm_export_meta(export_dir: Path) -> dict[str, Any]:
    """export.json of an LM export directory, with a clear error when missing, corrupt or not
    an LM export."""
    export_dir = Path(export_dir)
    path = export_dir / EXPORT_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {export_dir} is not an export; {_hint(export_dir)}"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); {_hint(export_dir)}") from e
    if not isinstance(meta, dict) or not is_language_model(meta):
        family = meta.get("family") if isinstance(meta, dict) else None
        raise ModelLoadError(
            f"{path}: family is {family!r}, not 'lm'; a classifier export is served by OnnxRuntime"
        )
    missing = [
        k
        for k in ("n_layer", "n_head", "head_dim", "vocab_size", "context_length", "eos_token_id")
        if not isinstance(meta.get(k), int)
    ]
    if missing:
        raise ModelLoadError(f"{path} lacks {missing}; {_hint(export_dir)}")
    return meta


class OnnxDecoder:
    """An exported GPT-2 decoder in ONNX Runtime; implements `DecoderBackend`."""

    def __init__(
        self,
        session: Any,
        meta: dict[str, Any],
        *,
        int8: bool,
        tokenizer: Any = None,
        export_dir: Path | None = None,
    ) -> None:
        self.session = session
        self.meta = meta
        self.kind = "onnx-int8" if int8 else "onnx"
        self.eos_token_id = int(meta["eos_token_id"])
        self.context_length = int(meta["context_length"])
        self.vocab_size = int(meta["vocab_size"])
        self.n_layer = int(meta["n_layer"])
        self.n_head = int(meta["n_head"])
        self.head_dim = int(meta["head_dim"])
        self.tokenizer = tokenizer
        self.export_dir = export_dir
        self._past_in = past_names(self.n_layer, "past")
        self._outputs = [LOGITS, *past_names(self.n_layer, "present")]

    @classmethod
    def load(
        cls, export_dir: Path, *, int8: bool = False, threads: int | None = None
    ) -> OnnxDecoder:
        """Open `decoder.onnx` (or `decoder.int8.onnx`) and `tokenizer.json` of an LM export.

        Runs a one-token prefill and one decode step before returning, so a broken or
        mismatched graph fails here (ModelLoadError), not on the first request.
        """

        export_dir = Path(export_dir)
        meta = read_lm_export_meta(export_dir)
        files = meta.get("files") or {}
        name = files.get("int8" if int8 else "model")
        if not name:
            raise ModelLoadError(
                f"{export_dir} has no {'int8' if int8 else 'fp32'} decoder in {EXPORT_FILE}; "
                + ("serve runtime 'onnx' or re-export with int8" if int8 else _hint(export_dir))
            )
        model_path = export_dir / str(name)
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path} not found; {_hint(export_dir)}")
        tokenizer = None
        tok_path = export_dir / str(files.get("tokenizer") or "tokenizer.json")
        if tok_path.is_file():
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_file(str(tok_path))
            except Exception as e:  # the Rust side raises plain Exception on a bad file
                raise ModelLoadError(f"{tok_path} is corrupt ({e}); {_hint(export_dir)}") from e
        session = open_session(model_path, threads, _hint(export_dir))
        dec = cls(session, meta, int8=int8, tokenizer=tokenizer, export_dir=export_dir)
        inputs = sorted(i.name for i in session.get_inputs())
        outputs = sorted(o.name for o in session.get_outputs())
        if inputs != sorted([*LM_INPUTS, *dec._past_in]) or outputs != sorted(dec._outputs):
            raise ModelLoadError(
                f"{model_path} has inputs {inputs} and outputs {outputs}, not those of a "
                f"{dec.n_layer}-layer decoder export; {_hint(export_dir)}"
            )
        dec._probe(model_path)
        return dec

    def _probe(self, model_path: Path) -> None:
        import torch

        try:
            ids = torch.zeros((1, 1), dtype=torch.long)
            logits, past = self.forward(ids, torch.ones((1, 1), dtype=torch.long), ids, None)
            logits, past = self.forward(ids, torch.ones((1, 2), dtype=torch.long), ids + 1, past)
        except Exception as e:
            raise ModelLoadError(
                f"{model_path} failed on a test input ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); {_hint(self.export_dir or model_path.parent)}"
            ) from e
        want = (1, self.n_head, 2, self.head_dim)
        if tuple(logits.shape) != (1, self.vocab_size) or tuple(past[0][0].shape) != want:
            raise ModelLoadError(
                f"{model_path} gives logits {tuple(logits.shape)} and past "
                f"{tuple(past[0][0].shape)}; export.json says ({1}, {self.vocab_size}) and {want}; "
                f"{_hint(self.export_dir or model_path.parent)}"
            )

    @staticmethod
    def _np(t: Any, dtype: Any) -> np.ndarray:
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        return np.ascontiguousarray(a, dtype=dtype)  # no copy when already so

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        position_ids: Any,
        past: Sequence[tuple[Any, Any]] | None,
    ) -> tuple[Any, tuple[tuple[Any, Any], ...]]:
        """Logits of the last position (b, vocab) and the new past (past_len + s per layer)."""
        import torch

        feed: dict[str, np.ndarray] = {
            "input_ids": self._np(input_ids, np.int64),
            "attention_mask": self._np(attention_mask, np.int64),
            "position_ids": self._np(position_ids, np.int64),
        }
        if past is None:
            empty = np.zeros(
                (feed["input_ids"].shape[0], self.n_head, 0, self.head_dim), dtype=np.float32
            )
            feed |= dict.fromkeys(self._past_in, empty)
        else:
            if len(past) != self.n_layer:
                raise ValueError(f"past has {len(past)} layers; this model has {self.n_layer}")
            for i, (k, v) in enumerate(past):
                feed[self._past_in[2 * i]] = self._np(k, np.float32)
                feed[self._past_in[2 * i + 1]] = self._np(v, np.float32)
        out = self.session.run(self._outputs, feed)
        tensors = [torch.from_numpy(a) for a in out]
        new_past = tuple((tensors[1 + 2 * i], tensors[2 + 2 * i]) for i in range(self.n_layer))
        return tensors[0], new_past

    def _tok(self) -> Any:
        if self.tokenizer is None:
            raise ModelLoadError(
                f"{self.export_dir} has no tokenizer.json; {_hint(Path(self.export_dir or '.'))}"
            )
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, as `CausalLM.encode`."""
        return list(self._tok().encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, as `CausalLM.decode` (special tokens skipped)."""
        return str(self._tok().decode(list(ids), skip_special_tokens=True))

    def prompt_ids(self, prompt: str) -> list[int]:
        """`<|endoftext|>` + prompt, as `CausalLM.prompt_ids` (every training document so began)."""
        return [self.eos_token_id, *self.encode(prompt)]
