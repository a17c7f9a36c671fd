"""One ONNX text graph (input_ids + attention_mask -> one float output per text) with its tokenizer.

Shared by the exported classifiers (`inference.onnx_classifier`: output `logits`) and the int8
sentence encoder of the hybrid family (`models.hybrid`: output `embedding`). Tokenization uses the
`tokenizers` library directly, so neither path imports torch or transformers; it reproduces
`Encoder.tokenize` (optional lower-casing, truncation to max_seq_length, padding to the longest
text of a batch), which a unit test checks id for id.

Speed on 2 cores: texts are tokenized once, sorted by token length and run in sub-batches of
similar length, so a short abstract is not padded to the longest one (padding is wasted
attention and matmul work); results are put back in input order.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paperops.models.base import ModelLoadError

INPUT_NAMES = ("input_ids", "attention_mask")
# Texts per ONNX Runtime call after sorting by length. Measured on demo_embedding (MiniLM-L6,
# 128 tokens, 2 threads, requests of 32-64 abstracts, best of 4): 4-8 is ~16% faster than 32
# for fp32 (130 vs 111 texts/s) and int8 (190 vs 163): less padding, activations stay in cache.
DEFAULT_SUB_BATCH = 8


def load_tokenizer(path: Path, meta: Mapping[str, Any], hint: str) -> tuple[Any, int, bool]:
    """(tokenizer, pad_id, do_lower_case) from `tokenizer.json` and the settings in `meta`
    (max_seq_length, pad_id, truncation_side, do_lower_case), or a ModelLoadError + `hint`."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ModelLoadError(f"{path} not found; {hint}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception on a bad file
        raise ModelLoadError(f"{path} is corrupt ({e}); {hint}") from e
    try:
        max_len = int(meta["max_seq_length"])
        pad_id = int(meta["pad_id"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path.parent}: lacks max_seq_length / pad_id ({e}); {hint}") from e
    tokenizer.no_padding()  # padding is done per sub-batch
    tokenizer.enable_truncation(
        max_length=max_len,
        strategy="longest_first",
        direction=str(meta.get("truncation_side", "right")),
    )
    return tokenizer, pad_id, bool(meta.get("do_lower_case", False))


class OnnxTextGraph:
    """Texts -> (n, width) float64 rows of one graph output, in input order."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        *,
        output: str,
        do_lower_case: bool,
        pad_id: int,
        sub_batch: int = DEFAULT_SUB_BATCH,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.output = output
        self.do_lower_case = bool(do_lower_case)
        self.pad_id = int(pad_id)
        self.sub_batch = max(1, int(sub_batch))

    def check_io(self, model_path: Path, hint: str) -> int:
        """The output's width, after checking the graph's names and one warm-up run."""
        inputs = sorted(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != sorted(INPUT_NAMES) or self.output not in outputs:
            raise ModelLoadError(
                f"{model_path} has inputs {inputs} and outputs {outputs}; expected "
                f"{list(INPUT_NAMES)} -> {self.output!r}; {hint}"
            )
        try:
            probe = self.session.run([self.output], self.pad(self.encode(["warm-up"])))[0]
        except Exception as e:
            raise ModelLoadError(
                f"{model_path} failed on a test input ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); {hint}"
            ) from e
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ModelLoadError(f"{model_path} gives output shape {probe.shape}; {hint}")
        return int(probe.shape[1])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated), unpadded."""
        texts = [t.lower() for t in texts] if self.do_lower_case else list(texts)
        return [enc.ids for enc in self.tokenizer.encode_batch(texts)]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """input_ids + attention_mask (int64), right-padded to the longest of `ids`."""
        width = max((len(x) for x in ids), default=0)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def run(self, texts: Sequence[str], width: int) -> np.ndarray:
        """(n, width) float64 outputs in input order."""
        n = len(texts)
        out = np.zeros((n, width), dtype=np.float64)
        if n == 0:
            return out
        ids = self.encode(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        for start in range(0, n, self.sub_batch):
            idx = order[start : start + self.sub_batch]
            out[idx] = self.session.run([self.output], self.pad([ids[i] for i in idx]))[0]
        return out


ENCODER_META = "encoder.json"  # what `export.encoder` built: spec, fingerprints, dim, tokenizer
ENCODER_OUTPUT = "embedding"
ENCODER_DIR = "encoder"  # the int8 graph's place inside a bundle that embeds with it


class OnnxEncoder:
    """A sentence encoder exported as ONNX (int8): texts -> (n, dim) float32 embeddings.

    Written by `export.encoder.ensure_encoder_graph`; the hybrid family embeds with it both when
    training and when serving, so the features never differ between the two.
    """

    def __init__(self, directory: Path, threads: int | None = None) -> None:
        import hashlib
        import json

        from paperops.models.onnx_session import open_session

        self.directory = Path(directory)
        meta_path = self.directory / ENCODER_META
        hint = "rebuild it: delete the directory and train again (the graph is rebuilt)"
        if not meta_path.is_file():
            raise ModelLoadError(f"{meta_path} not found: not an encoder graph; {hint}")
        try:
            self.meta = json.loads(meta_path.read_text())
            graph = self.directory / str(self.meta["graph"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{meta_path} is corrupt ({e}); {hint}") from e
        if not graph.is_file():
            raise ModelLoadError(f"{graph} not found; {hint}")
        digest = hashlib.sha256(graph.read_bytes()).hexdigest()
        if digest != self.meta.get("graph_sha256"):
            raise ModelLoadError(
                f"{graph} does not match the sha256 in {meta_path} (changed or truncated); {hint}"
            )
        tokenizer, pad_id, lower = load_tokenizer(
            self.directory / "tokenizer" / "tokenizer.json", self.meta, hint
        )
        self.graph = OnnxTextGraph(
            open_session(graph, threads, hint),
            tokenizer,
            output=ENCODER_OUTPUT,
            do_lower_case=lower,
            pad_id=pad_id,
        )
        self.dim = self.graph.check_io(graph, hint)
        self._fingerprint = f"onnx:{digest}"

    def fingerprint(self) -> str:
        """Names what this graph computes: the embedding cache's key (not the torch encoder's)."""
        return self._fingerprint

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 embeddings in input order (`batch_size` is unused: the graph runs
        length-sorted sub-batches of 8, the fastest on 2 cores)."""
        del batch_size
        return self.graph.run(texts, self.dim).astype(np.float32)


def copy_encoder_graph(graph: OnnxEncoder, target: Path) -> dict[str, Any]:
    """Copy an int8 encoder graph into a bundle; returns what model.json records about it."""
    if target.resolve() != graph.directory.resolve():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(graph.directory, target)
    return {
        "backend": "onnx-int8",
        "dir": target.name,
        "spec": graph.meta.get("spec"),
        "fingerprint": graph.fingerprint(),
        "dim": graph.dim,
    }


def load_encoder_graph(directory: Path, identity: Mapping[str, Any]) -> OnnxEncoder:
    """A bundle's int8 encoder graph, checked against the fingerprint model.json recorded."""
    graph = OnnxEncoder(directory)
    if identity.get("fingerprint") != graph.fingerprint():
        raise ModelLoadError(
            f"{directory} is not the encoder graph this model was trained on (fingerprint "
            f"{graph.fingerprint()[:20]} vs {str(identity.get('fingerprint'))[:20]}); restore it"
        )
    return graph
