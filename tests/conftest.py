"""Shared test helpers: tiny, realistic arXiv records and a JSON-lines writer.

Everything a test reads is written by the test into its own tmp_path; nothing touches the network
or the shared dev data (that lives in tests/integration).
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from paperops.data import taxonomy

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

# Small per-archive vocabularies, so that texts differ between classes like real papers do.
VOCAB: dict[str, tuple[list[str], list[str]]] = {
    "cs": (
        [
            "Learning",
            "Neural",
            "Networks",
            "Graph",
            "Efficient",
            "Transformers",
            "Robust",
            "Scalable",
            "Algorithms",
            "Reinforcement",
            "Federated",
            "Optimisation",
        ],
        [
            "we",
            "propose",
            "a",
            "model",
            "training",
            "dataset",
            "benchmark",
            "accuracy",
            "gradient",
            "architecture",
            "inference",
            "latency",
            "attention",
            "embedding",
            "loss",
        ],
    ),
    "math": (
        [
            "Cohomology",
            "Varieties",
            "Moduli",
            "Stacks",
            "Sheaves",
            "Curves",
            "Conjecture",
            "Invariants",
            "Birational",
            "Surfaces",
            "Abelian",
            "Schemes",
        ],
        [
            "we",
            "prove",
            "that",
            "every",
            "smooth",
            "projective",
            "variety",
            "admits",
            "a",
            "morphism",
            "theorem",
            "lemma",
            "genus",
            "field",
            "characteristic",
        ],
    ),
    "hep-th": (
        [
            "String",
            "Duality",
            "Holography",
            "Branes",
            "Supersymmetry",
            "Anomalies",
            "Gauge",
            "Conformal",
            "Entanglement",
            "Black",
            "Holes",
            "Amplitudes",
        ],
        [
            "we",
            "compute",
            "the",
            "partition",
            "function",
            "of",
            "a",
            "gauge",
            "theory",
            "on",
            "anti",
            "de",
            "sitter",
            "space",
            "boundary",
        ],
    ),
    "astro-ph": (
        [
            "Galaxies",
            "Stellar",
            "Dark",
            "Matter",
            "Halos",
            "Clusters",
            "Redshift",
            "Survey",
            "Quasars",
            "Accretion",
            "Dwarf",
            "Spectroscopy",
        ],
        [
            "we",
            "observe",
            "a",
            "sample",
            "of",
            "galaxies",
            "with",
            "the",
            "telescope",
            "luminosity",
            "metallicity",
            "star",
            "formation",
            "rate",
            "emission",
        ],
    ),
    "q-bio": (
        [
            "Neurons",
            "Cortex",
            "Synaptic",
            "Plasticity",
            "Spiking",
            "Memory",
            "Cognition",
            "Dynamics",
            "Decision",
            "Making",
            "Visual",
            "Circuits",
        ],
        [
            "we",
            "record",
            "activity",
            "in",
            "the",
            "cortex",
            "of",
            "mice",
            "and",
            "model",
            "neural",
            "population",
            "responses",
            "to",
            "stimuli",
        ],
    ),
}
GENERIC_VOCAB = (
    [
        "Systems",
        "Dynamics",
        "Models",
        "Analysis",
        "Methods",
        "Structure",
        "Theory",
        "Waves",
        "Chaos",
        "Control",
        "Signals",
        "Transport",
    ],
    [
        "we",
        "study",
        "a",
        "system",
        "of",
        "equations",
        "with",
        "numerical",
        "simulations",
        "and",
        "experiments",
        "showing",
        "stable",
        "behaviour",
        "results",
    ],
)
SECONDARY = ["stat.ML", "math-ph", "physics.data-an", "cs.AI", "quant-ph"]

Record = dict[str, Any]


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def make_records(
    counts: Mapping[str, int],
    *,
    seed: int = 0,
    first_serial: int = 1,
    start: date = date(2020, 1, 1),
    days: int = 1000,
) -> list[Record]:
    """Kaggle-snapshot-shaped records: `counts[primary category] = how many`.

    Ids look like real new-style ids (`2101.00001`, yymm of the date), dates are YYYY-MM-DD, and
    every title+abstract is distinct even after normalisation, so prepare drops none as duplicates.
    The output is interleaved across classes (like a real dump) and fully determined by `seed`.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Record] = []
    serial = first_serial
    for primary, n in counts.items():
        try:
            archive = taxonomy.archive_of(primary)
        except ValueError:  # deliberately unknown codes still get text
            archive = ""
        title_words, abstract_words = VOCAB.get(archive, GENERIC_VOCAB)
        for _ in range(n):
            while True:
                title = " ".join(rng.sample(title_words, rng.randint(4, 7)))
                abstract = " ".join(rng.choice(abstract_words) for _ in range(rng.randint(25, 45)))
                abstract = abstract[0].upper() + abstract[1:] + "."
                key = _norm(title + abstract)
                if key not in seen:
                    seen.add(key)
                    break
            day = start + timedelta(days=rng.randrange(days))
            categories = primary
            if rng.random() < 0.3:
                categories += " " + rng.choice(SECONDARY)
            out.append(
                {
                    "id": f"{day:%y%m}.{serial:05d}",
                    "submitter": "A. Author",  # extra keys, as in the real snapshot, are ignored
                    "title": title,
                    "abstract": abstract,
                    "categories": categories,
                    "update_date": day.isoformat(),
                }
            )
            serial += 1
    rng.shuffle(out)
    return out


def write_jsonl(path: Path, records: Iterable[Record | str | bytes], gzip: bool = False) -> Path:
    """Write records as JSON lines (dicts are dumped, str/bytes written verbatim as one line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        if isinstance(r, bytes):
            lines.append(r)
        elif isinstance(r, str):
            lines.append(r.encode("utf-8"))
        else:
            lines.append(json.dumps(r, ensure_ascii=False).encode("utf-8"))
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip_module.compress(data, mtime=0) if gzip else data)
    return path


def small_trainer_cfg(*, max_epochs: int, patience: int, **overrides: Any) -> dict[str, Any]:
    """configs/trainer/default.yaml (the contract) shrunk to a quiet 1-thread CPU run."""
    import yaml

    cfg = yaml.safe_load((CONFIG_DIR / "trainer" / "default.yaml").read_text())
    cfg.update(
        accelerator="cpu",
        num_threads=1,
        max_epochs=max_epochs,
        patience=patience,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    cfg.update(overrides)
    return cfg


# Default data set: four archive-level classes of different sizes (all >= 10 so every split of
# every class is within one row of its fraction).
DEFAULT_COUNTS = {"cs.LG": 24, "math.AG": 16, "hep-th": 12, "astro-ph.GA": 10}


@pytest.fixture
def make_arxiv() -> Callable[..., list[Record]]:
    return make_records


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture() -> Callable[..., Path]:
    return write_jsonl


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    """A good raw file with DEFAULT_COUNTS records."""
    return write_jsonl(tmp_path / "raw" / "arxiv.jsonl", make_records(DEFAULT_COUNTS))


@pytest.fixture(scope="session")
def _prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from paperops.data.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("prepared")
    raw = write_jsonl(base / "arxiv.jsonl", make_records(DEFAULT_COUNTS))
    prepare(PrepareConfig(raw_paths=raw, output_dir=base / "processed", min_count=4))
    return base / "processed"


@pytest.fixture
def prepared_dir(_prepared_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of a good prepared directory (DEFAULT_COUNTS, stratified, seed 42)."""
    return Path(shutil.copytree(_prepared_once, tmp_path / "processed"))


@pytest.fixture(autouse=True)
def _no_exported_tracking_uri() -> Iterator[None]:
    """Each test starts without MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (the default store of
    every paperops config, configs/logger/mlflow.yaml) and leaves none behind: MLflow exports the
    URI to os.environ whenever its fluent URI is set (Lightning's MLFlowLogger does), which made
    a later test's `dvc repro` child register into an earlier test's store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.pop(k, None) for k in keys}
    yield
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging (and every CLI call) reconfigures the root logger; undo it after a test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ---- neural families: a tiny sentence-transformers encoder built from the test texts ----


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with mean pooling, in sentence-transformers layout.

    Its WordPiece vocabulary is trained on the DEFAULT_COUNTS texts, so every test word is a
    token; `load_encoder(str(dir))` and `SentenceTransformer(str(dir))` both load it.
    """
    import os

    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path_factory.mktemp("tiny_encoder")
    texts = [f"{r['title']}. {r['abstract']}" for r in make_records(DEFAULT_COUNTS)]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=400, min_frequency=1)
    # transformers 5: the vocabulary is `vocab=` (a dict or a vocab.txt path), not `vocab_file=`
    tokenizer = BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )
    return out


# ---- trained bundles for serving, export and prediction tests ----


def _train_bundle(base: Path, prepared: Path, experiment: str, *extra: str) -> Path:
    """A real `paperops train` run (no tracking) on the DEFAULT_COUNTS data: bundle +
    calibration.json + training.json, exactly what serving loads in production."""
    from paperops.config import load_config
    from paperops.train import train

    out = base / experiment
    cfg = load_config(
        [
            f"experiment={experiment}",
            f"train.processed_dir={prepared}",
            f"train.output_dir={out}",
            f"paths.work={base}/outputs",
            "train.track=false",
            "train.register=false",
            "evaluate.alpha=0.2",  # the tiny calibration split has 6 rows: alpha 0.1 needs >= 9
            *extra,
        ]
    )
    train(cfg)
    return out


@pytest.fixture(scope="session")
def tfidf_bundle(_prepared_once: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated tfidf bundle (read-only: copy it before changing anything)."""
    base = tmp_path_factory.mktemp("tfidf_bundle")
    return _train_bundle(base, _prepared_once, "tfidf", "model.min_df=1")


@pytest.fixture(scope="session")
def embedding_bundle(
    _prepared_once: Path, tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A calibrated embedding bundle on the tiny encoder (read-only: copy before changing)."""
    base = tmp_path_factory.mktemp("embedding_bundle")
    return _train_bundle(
        base,
        _prepared_once,
        "embedding",
        f"model.encoder={tiny_encoder_dir}",
        f"model.cache_dir={base}/cache",
        *TINY_HEAD,
    )


CATEGORY_COUNTS = {"cs.LG": 40, "math.AG": 30, "hep-th": 30}


@pytest.fixture(scope="session")
def category_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tfidf bundle over fine categories with its cross-list head (`experiment=category`),
    trained once per session; its prepared data is `<bundle>/../processed` (read-only)."""
    from paperops.data.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("category_bundle")
    records = make_records(CATEGORY_COUNTS, seed=4)
    for i, r in enumerate(records):  # a cross-list the head can learn: most cs.LG are stat.ML
        if r["categories"].startswith("cs.LG") and i % 5:
            r["categories"] = "cs.LG stat.ML"
    raw = write_jsonl(base / "raw.jsonl", records)
    processed = base / "processed"
    prepare(PrepareConfig(raw_paths=raw, output_dir=processed, label_level="category", min_count=8))
    head = ("train.cross_lists.min_papers=5", "train.cross_lists.min_df=1")
    return _train_bundle(base, processed, "category", "model.min_df=1", *head)


# the embedding head on the tiny encoder, trained in seconds on one thread
TINY_HEAD = (
    "model.hidden_dim=64",
    "model.lr=0.02",
    "model.batch_size=16",
    "trainer.accelerator=cpu",
    "trainer.num_threads=1",
    "trainer.max_epochs=20",
    "trainer.patience=5",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture(scope="session")
def hybrid_bundle(
    _prepared_once: Path, tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A calibrated hybrid bundle (TF-IDF + the tiny encoder as int8 ONNX; read-only)."""
    base = tmp_path_factory.mktemp("hybrid_bundle")
    return _train_bundle(
        base,
        _prepared_once,
        "hybrid",
        "model.min_df=1",
        f"model.encoder={tiny_encoder_dir}",
        f"model.cache_dir={base}/cache",
        f"model.graph_dir={base}/graphs",
    )


# The slowest modules first (measured with --durations): `make test` runs two xdist workers with
# --dist loadscope, which hands out modules in collection order, and a 3-minute module that
# starts last decides the wall time. A stable sort: every other test keeps its order.
SLOW_FIRST = (
    "tests/integration/test_dvc_pipeline.py",  # ~190 s
    "tests/integration/test_retrain.py",  # ~115 s
    "tests/reliability/test_soak.py",  # ~75 s
    "tests/unit/train/test_ddp.py",  # ~75 s
    "tests/reliability/test_pipeline_faults.py",  # ~90 s
    "tests/integration/test_drift.py",  # ~50 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL server per test process (tests/pg.py); each test makes its own
    database with `pg_cluster.new_database()`."""
    from tests.pg import start_cluster

    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def pg_own_cluster() -> Iterator[Any]:
    """A cluster for one module alone: for tests that stop and start the server."""
    from tests.pg import start_cluster

    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A SQLAlchemy URL (postgresql+psycopg) of a fresh, empty database."""
    return str(pg_cluster.url(pg_cluster.new_database()))
