"""`paperops train experiment=lm_*`: the language model's path through the same lifecycle.

corpus -> tokenizer (pretrained, or a BPE trained on the training split) -> fit (Lightning,
early stopping on val_loss) -> held-out perplexity -> sampled continuations of fixed prompts ->
bundle (atomic) -> MLflow run -> registry `paperops-generator`, where lower validation
perplexity moves the `champion` alias.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from paperops.data.corpus import load_corpus
from paperops.evaluate.lm import SAMPLES_FILE, sample_continuations, samples_markdown
from paperops.io import atomic_dir, atomic_write_text
from paperops.models.base import TRAINING_FILE
from paperops.models.lm import FAMILY, CausalLM, pretrained_tokenizer, train_tokenizer
from paperops.models.lm_module import LMConfig
from paperops.models.process import seed_everything
from paperops.tracking import promotion
from paperops.tracking import runs as tracking
from paperops.train.common import TrainResult, _plain, is_global_rank_zero, run_info, tracked_run

log = logging.getLogger(__name__)
METRIC = "val_perplexity"


def build_tokenizer(config: LMConfig, train_texts: list[str]) -> Any:
    """An explicit tokenizer, else the pretrained model's, else a BPE trained on the train split
    (never on val/test: held-out perplexity must not see their vocabulary)."""
    if config.tokenizer:
        return pretrained_tokenizer(config.tokenizer)
    if config.pretrained:
        return pretrained_tokenizer(config.pretrained)
    t0 = time.perf_counter()
    tok = train_tokenizer(train_texts, config.vocab_size, config.min_frequency)
    log.info(
        "trained a byte-level BPE: %d tokens from %d texts in %.1f s",
        tok.get_vocab_size(),
        len(train_texts),
        time.perf_counter() - t0,
    )
    return tok


def train_lm(cfg: DictConfig, *, callbacks: list[Any] | None = None) -> TrainResult | None:
    """Train `model.family=lm` on `corpus.output_dir`; None on DDP ranks other than 0."""

    t_start = time.perf_counter()
    seed = int(cfg.seed)
    seed_everything(seed)
    tcfg = cfg.train
    corpus_dir = Path(cfg.corpus.output_dir)
    # train.max_rows is shared with the classifiers (which also have a calibration split)
    max_rows = {k: v for k, v in dict(_plain(tcfg.max_rows) or {}).items() if v is not None}
    texts = load_corpus(corpus_dir, splits=("train", "val"), max_rows=max_rows, seed=seed)
    log.info(
        "training the LM on %s: %s",
        corpus_dir,
        ", ".join(f"{k}={len(v):,} texts" for k, v in texts.items()),
    )
    config = LMConfig.from_dict(_plain(cfg.model))
    lm = CausalLM.from_config(config, build_tokenizer(config, texts["train"]))
    lm.meta["corpus"] = str(cfg.corpus.name)
    log.info(
        "GPT-2 %s: %.2fM parameters, context %d, vocab %d",
        f"from {config.pretrained}" if config.pretrained else "from scratch",
        lm.params / 1e6,
        lm.context_length,
        lm.vocab_size,
    )
    rank_zero = is_global_rank_zero()
    out_dir = Path(tcfg.output_dir)
    work_dir = Path(cfg.paths.work) / str(tcfg.run_name)
    with tracked_run(cfg, corpus_dir, track=bool(tcfg.track) and rank_zero) as (run, loggers):
        summary = lm.fit(
            texts["train"],
            texts["val"],
            trainer_cfg=_plain(cfg.trainer),
            loggers=loggers,
            work_dir=work_dir,
            seed=seed,
            callbacks=callbacks,
        )
        if not rank_zero or summary.get("global_rank", 0) != 0:
            return None
        val = lm.perplexity(texts["val"], config.eval_batch_size)
        val_metrics = {
            "val_loss": val["loss"],
            "val_perplexity": val["perplexity"],
            "val_tokens": val["tokens"],
        }
        log.info("validation: loss %.4f, perplexity %.2f", val["loss"], val["perplexity"])
        samples = sample_continuations(lm, config, seed)
        train_seconds = float(summary.get("train_seconds", time.perf_counter() - t_start))
        info = {
            **run_info(cfg, run, corpus_dir, seed=seed),
            "corpus": str(cfg.corpus.name),
            "max_rows": max_rows,
            "rows": {k: len(v) for k, v in texts.items()},
            "params": lm.params,
            "val_metrics": val_metrics,
            "train_seconds": train_seconds,
            "fit_summary": summary,
        }
        with atomic_dir(out_dir) as tmp:
            lm.save(tmp)
            atomic_write_text(tmp / SAMPLES_FILE, json.dumps(samples, indent=2) + "\n")
            atomic_write_text(tmp / TRAINING_FILE, json.dumps(info, indent=2, default=str) + "\n")
        log.info("saved the LM bundle to %s", out_dir)
        result = TrainResult(out_dir, FAMILY, val_metrics, train_seconds, fit_summary=summary)
        if run is not None:
            result.run_id = run.run_id
            result.decision = _track_and_register(cfg, run, out_dir, info, samples)
        return result


def _track_and_register(
    cfg: DictConfig, run: Any, bundle_dir: Path, info: dict[str, Any], samples: list[Any]
) -> dict[str, Any] | None:
    from dataclasses import asdict

    step = int(info["fit_summary"].get("epochs_run") or 0)
    run.log_metrics(
        {**info["val_metrics"], "train_seconds": info["train_seconds"], "params": info["params"]},
        step=step,
    )
    run.log_dict({"samples": samples}, "samples/samples.json")
    run.log_text(samples_markdown(samples), "samples/samples.md")
    model_uri = tracking.log_model_bundle(run, bundle_dir)
    if not bool(cfg.train.register):
        return None
    decision = promotion.register_candidate(
        cfg.logger,
        run_id=run.run_id,
        model_uri=model_uri,
        score=info["val_metrics"][METRIC],
        metric=METRIC,
        higher_is_better=False,
        tags={"family": FAMILY, "corpus": info["corpus"], "data_hash": info["data_hash"]},
    )
    run.set_tags(
        {"registry.version": str(decision.version), "registry.promoted": str(decision.promoted)}
    )
    log.info("registry: %s", decision.reason)
    return asdict(decision)
