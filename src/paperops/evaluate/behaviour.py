"""Behavioural tests (CheckList / Made-With-ML style): does the model behave sensibly?

Aggregate accuracy cannot tell a model that reads the science from one that keys on formatting.
These checks perturb real test papers and compare predictions:

- invariance: edits that do not change what a paper is about (extra whitespace, the title's
  letter case, a few adjacent-letter typos) must not change the predicted label;
- directional: appending strong domain terms of class c to a paper of another class must raise
  P(c) (temperature-scaled).

Title and abstract are edited separately and the text is rebuilt with `model_text`, so every
check runs on exactly the string the model sees in training and serving. Sampling and edits are
seeded: the same model and data give the same report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from paperops.data.datamodule import EmptySplitError
from paperops.data.text import model_text
from paperops.evaluate.config import BehaviouralConfig, EvalConfig
from paperops.uncertainty.calibrate import log_softmax
from paperops.uncertainty.calibration import finite_logits

if TYPE_CHECKING:
    from paperops.data.datamodule import TextSplit
    from paperops.models.base import Classifier

__all__ = [
    "DOMAIN_TERMS",
    "INVARIANCE_CHECKS",
    "BehaviouralConfig",
    "add_typos",
    "class_terms",
    "derive_terms",
    "lowercase_title",
    "perturb_whitespace",
    "run_behavioural",
    "titlecase_title",
]

MAX_FAILURES = 3

# Strong, specific vocabulary per arXiv archive: words a paper of that archive uses and others
# rarely do. Multi-word phrases are kept as words a bag-of-words model and an encoder both read.
DOMAIN_TERMS: dict[str, list[str]] = {
    "astro-ph": ["galaxy", "redshift", "stellar", "luminosity", "telescope", "supernova"],
    "cond-mat": ["superconductivity", "phonon", "magnetization", "antiferromagnetic", "fermi"],
    "cs": ["algorithm", "software", "compiler", "runtime", "benchmark", "dataset"],
    "eess": ["beamforming", "wireless", "transmitter", "receiver", "signal", "filtering"],
    "gr-qc": ["spacetime", "gravitational", "waves", "black", "hole", "einstein", "metric"],
    "hep-ph": ["quark", "gluon", "collider", "lhc", "higgs", "neutrino", "qcd"],
    "hep-th": ["string", "theory", "brane", "supersymmetry", "holography", "ads", "cft"],
    "hep-ex": ["detector", "collisions", "cross", "section", "measured", "luminosity"],
    "hep-lat": ["lattice", "qcd", "monte", "carlo", "fermions", "quenched"],
    "math": ["theorem", "lemma", "proof", "manifold", "conjecture", "algebra"],
    "math-ph": ["hamiltonian", "operator", "spectrum", "schrodinger", "rigorous", "spectral"],
    "nlin": ["chaos", "chaotic", "soliton", "nonlinear", "lyapunov", "bifurcation"],
    "nucl-ex": ["nuclear", "beam", "isotopes", "heavy", "ion", "detector"],
    "nucl-th": ["nucleon", "nuclei", "nuclear", "isospin", "deuteron", "neutron"],
    "physics": ["laser", "optical", "plasma", "fluid", "turbulence", "photonic"],
    "q-bio": ["protein", "gene", "cells", "genomic", "species", "biological"],
    "q-fin": ["portfolio", "asset", "pricing", "volatility", "financial", "market"],
    "quant-ph": ["qubit", "quantum", "entanglement", "decoherence", "photon", "qubits"],
    "stat": ["estimator", "regression", "bayesian", "posterior", "inference", "statistical"],
    "econ": ["economic", "welfare", "policy", "auction", "labor", "market"],
}

# Words too common across all of science to mark a class (for terms derived from training data).
_STOPWORDS = frozenset(
    """the and for are but not you all any can had her was one our out has have him his how its
    may new now old see two way who did get let put say she too use with this that from they
    been were which their will would there these those then than them what when where while
    into onto upon also such some more most much many very only over under other each both
    between about after before above below using used based paper show shows shown study
    studies result results propose proposed present presents approach method methods model
    models problem problems case cases here well however thus therefore first second three
    given general different various several important recent recently work works large small
    high low number order terms within without via non due find found obtain obtained
    provide provides consider considered existing across demonstrate achieve achieves
    significantly""".split()  # noqa: SIM905 (a word list reads better as text)
)
_TOKEN = re.compile(r"\b[a-z]{3,}\b")
_LONG_WORD = re.compile(r"[^\W\d_]{4,}")  # a run of more than 3 letters


# --- perturbations -------------------------------------------------------------------------------


def perturb_whitespace(title: str, abstract: str, rng: np.random.Generator) -> tuple[str, str]:
    """Double ~10% of the spaces (at least one), break the abstract with a newline, pad the ends."""

    def respace(text: str, newline: bool) -> str:
        parts = text.split(" ")
        gaps = len(parts) - 1
        if gaps < 1:
            return text
        seps = [" "] * gaps
        for g in rng.choice(gaps, size=max(1, round(0.1 * gaps)), replace=False):
            seps[int(g)] = "  "
        if newline:
            seps[int(rng.integers(gaps))] = " \n "
        return parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))

    return "  " + respace(title, False) + " ", respace(abstract, True) + "\n"


def lowercase_title(title: str, abstract: str, rng: np.random.Generator) -> tuple[str, str]:
    """The title in lower case (as many people type one into a search box)."""
    return title.lower(), abstract


def titlecase_title(title: str, abstract: str, rng: np.random.Generator) -> tuple[str, str]:
    """Upper-case the first letter of every title word (journal-style capitalisation)."""
    return re.sub(r"(^|\s)([^\W\d_])", lambda m: m.group(1) + m.group(2).upper(), title), abstract


def _swap(word: str, rng: np.random.Generator) -> str:
    """Swap one pair of adjacent, different letters; the word back unchanged if none exists."""
    spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    if not spots:
        return word
    i = spots[int(rng.integers(len(spots)))]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def add_typos(text: str, rate: float, rng: np.random.Generator, *, at_least: int = 0) -> str:
    """Swap two adjacent letters in a `rate` fraction of the words longer than 3 letters.

    `at_least` forces that many typos when the draw gives fewer, so no example goes untested.
    """
    words = list(_LONG_WORD.finditer(text))
    if not words:
        return text
    pick = rng.random(len(words)) < rate
    missing = at_least - int(pick.sum())
    if missing > 0:
        free = np.flatnonzero(~pick)
        pick[rng.choice(free, size=min(missing, len(free)), replace=False)] = True
    out, last = [], 0
    for m, p in zip(words, pick, strict=True):
        if p:
            out += [text[last : m.start()], _swap(m.group(), rng)]
            last = m.end()
    return "".join([*out, text[last:]])


def _typos(rate: float) -> Callable[[str, str, np.random.Generator], tuple[str, str]]:
    def edit(title: str, abstract: str, rng: np.random.Generator) -> tuple[str, str]:
        title2 = add_typos(title, rate, rng)
        forced = 1 if title2 == title else 0  # at least one typo per paper in all
        return title2, add_typos(abstract, rate, rng, at_least=forced)

    return edit


# check name -> what the edit changes (the edits themselves: `_edits`, typos need the rate).
INVARIANCE_CHECKS: dict[str, str] = {
    "whitespace": "extra spaces and a newline inside the text",
    "lowercase_title": "title in lower case",
    "titlecase_title": "first letter of every title word upper-cased",
    "typos": "adjacent letters swapped in a few words (at least one per paper)",
}


def _edits(cfg: BehaviouralConfig) -> dict[str, Callable[..., tuple[str, str]]]:
    return {
        "whitespace": perturb_whitespace,
        "lowercase_title": lowercase_title,
        "titlecase_title": titlecase_title,
        "typos": _typos(cfg.typo_rate),
    }


# --- directional terms ---------------------------------------------------------------------------


def derive_terms(
    train: TextSplit,
    labels: Sequence[str],
    wanted: Sequence[str],
    n_terms: int = 6,
    max_docs: int = 20_000,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Words that mark each wanted class in the training split: top smoothed log-odds z-scores.

    For each word, the log-odds that a paper of class c contains it minus the same for the other
    papers, smoothed by +0.5 and divided by its standard error (Monroe et al. 2008), so a word
    seen in one paper cannot outrank one that most of the class uses. Capped at `max_docs` papers
    (seeded) to stay fast on the full corpus.
    """
    from scipy import sparse

    n = len(train)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if n <= max_docs else np.sort(rng.choice(n, max_docs, replace=False))
    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for r, i in enumerate(idx):
        for w in set(_TOKEN.findall(train.texts[i].lower())) - _STOPWORDS:
            rows.append(r)
            cols.append(vocab.setdefault(w, len(vocab)))
    if not vocab:
        return {}
    x = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(idx), len(vocab)), dtype=np.float64
    )
    words = np.array(sorted(vocab, key=vocab.__getitem__))
    y = np.asarray(train.y)[idx]
    total = np.asarray(x.sum(axis=0)).ravel()
    a = 0.5
    out: dict[str, list[str]] = {}
    for label in wanted:
        c = list(labels).index(label)
        in_c = y == c
        n_c, n_r = int(in_c.sum()), int((~in_c).sum())
        if n_c == 0:
            continue
        f_c = np.asarray(x[in_c].sum(axis=0)).ravel()
        f_r = total - f_c
        delta = np.log((f_c + a) / (n_c - f_c + a)) - np.log((f_r + a) / (n_r - f_r + a))
        var = 1 / (f_c + a) + 1 / (n_c - f_c + a) + 1 / (f_r + a) + 1 / (n_r - f_r + a)
        z = np.where(f_c >= min(2, n_c), delta / np.sqrt(var), -np.inf)
        top = [j for j in np.argsort(-z, kind="stable")[:n_terms] if z[j] > 0]
        if top:
            out[label] = words[top].tolist()
    return out


def class_terms(
    labels: Sequence[str], train: TextSplit | None, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """label -> {"terms": [...], "source": "curated" | "train"}; labels with neither are absent."""
    out: dict[str, dict[str, Any]] = {
        lab: {"terms": DOMAIN_TERMS[lab], "source": "curated"}
        for lab in labels
        if lab in DOMAIN_TERMS
    }
    rest = [lab for lab in labels if lab not in DOMAIN_TERMS]
    if rest and train is not None:
        for lab, terms in derive_terms(train, labels, rest, seed=seed).items():
            out[lab] = {"terms": terms, "source": "train"}
    return out


# --- running the checks --------------------------------------------------------------------------


def _log_probs(model: Classifier, texts: list[str], k: int, temperature: float) -> np.ndarray:
    """log softmax(logits / T): comparing log-probabilities cannot underflow to a 0 == 0 tie."""
    if not texts:
        return np.zeros((0, k))
    return log_softmax(finite_logits(model.logits(texts)), temperature)


def _rate(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def run_behavioural(
    model: Classifier,
    test: TextSplit,
    train: TextSplit | None,
    cfg: EvalConfig | BehaviouralConfig,
    temperature: float,
) -> dict[str, Any]:
    """Invariance and directional checks on `n_examples` seeded test papers.

    Each invariance check reports n (papers whose model text the edit changed), pass_rate and up
    to 3 failures; the directional check reports pass_rate and the mean change of P(target).
    `train` supplies terms for labels without curated ones (None: those labels are skipped).
    """
    bcfg = cfg.behavioural if isinstance(cfg, EvalConfig) else cfg
    if len(test) == 0:
        raise EmptySplitError(
            f"the {test.name!r} split is empty: no papers to run behavioural tests"
        )
    missing = [c for c in ("id", "title", "abstract") if c not in test.frame]
    if missing:
        raise ValueError(f"the {test.name!r} split's frame lacks columns {missing}")
    labels = list(model.labels)
    k = len(labels)
    rng = np.random.default_rng(bcfg.seed)
    n = min(bcfg.n_examples, len(test))
    idx = np.sort(rng.choice(len(test), size=n, replace=False))
    frame = test.frame.iloc[idx]
    ids = [str(i) for i in frame["id"]]
    titles = [str(t) for t in frame["title"]]
    abstracts = [str(a) for a in frame["abstract"]]
    y = np.asarray(test.y)[idx]
    base_texts = [model_text(t, a) for t, a in zip(titles, abstracts, strict=True)]
    base = _log_probs(model, base_texts, k, temperature)
    base_pred = base.argmax(axis=1)

    invariance: dict[str, Any] = {}
    for ci, (name, edit) in enumerate(_edits(bcfg).items()):
        erng = np.random.default_rng([bcfg.seed, ci + 1])  # independent of the other checks
        rows, texts = [], []
        for j, (t, a) in enumerate(zip(titles, abstracts, strict=True)):
            text = model_text(*edit(t, a, erng))
            if text != base_texts[j]:
                rows.append(j)
                texts.append(text)
        pred = _log_probs(model, texts, k, temperature).argmax(axis=1)
        ok = pred == base_pred[rows]
        invariance[name] = {
            "description": INVARIANCE_CHECKS[name],
            "n": len(rows),
            "pass_rate": _rate(ok),
            "failures": [
                {"id": ids[rows[i]], "before": labels[base_pred[rows[i]]], "after": labels[pred[i]]}
                for i in np.flatnonzero(~ok)[:MAX_FAILURES]
            ],
        }

    return {
        "n_examples": n,
        "seed": bcfg.seed,
        "typo_rate": bcfg.typo_rate,
        "invariance": invariance,
        "directional": _directional(
            model, labels, train, bcfg, temperature, (ids, titles, abstracts, y, base)
        ),
    }


def _directional(
    model: Classifier,
    labels: list[str],
    train: TextSplit | None,
    bcfg: BehaviouralConfig,
    temperature: float,
    sample: tuple[list[str], list[str], list[str], np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """Append a random other class's terms to each sampled abstract; P(that class) must rise."""
    ids, titles, abstracts, y, base = sample
    k = len(labels)
    terms = class_terms(labels, train, bcfg.seed)
    have = np.array([lab in terms for lab in labels])
    rng = np.random.default_rng([bcfg.seed, 1000])
    rows, targets, texts = [], [], []
    for j in range(len(ids)):
        candidates = np.flatnonzero(have & (np.arange(k) != y[j]))
        if not len(candidates):
            continue
        c = int(candidates[rng.integers(len(candidates))])
        phrase = " ".join(terms[labels[c]]["terms"])
        rows.append(j)
        targets.append(c)
        texts.append(model_text(titles[j], abstracts[j].rstrip() + " " + phrase))
    after = _log_probs(model, texts, k, temperature)
    tgt = np.array(targets, dtype=np.int64)
    lp_before = base[rows, tgt] if rows else np.zeros(0)
    lp_after = after[np.arange(len(rows)), tgt] if rows else np.zeros(0)
    p_before, p_after = np.exp(lp_before), np.exp(lp_after)
    delta = p_after - p_before
    ok = lp_after > lp_before  # same order as the probabilities, without underflow
    by_target: dict[str, Mapping[str, Any]] = {}
    for c in sorted(set(targets)):
        m = tgt == c
        by_target[labels[c]] = {
            "n": int(m.sum()),
            "pass_rate": _rate(ok[m]),
            "mean_delta": float(delta[m].mean()),
            "mean_delta_log_prob": float((lp_after - lp_before)[m].mean()),
        }
    return {
        "description": "strong terms of another class appended to the abstract",
        "n": len(rows),
        "pass_rate": _rate(ok),
        "mean_delta": _rate(delta),
        "mean_delta_log_prob": _rate(lp_after - lp_before),
        "by_target": by_target,
        "failures": [
            {
                "id": ids[rows[i]],
                "label": labels[y[rows[i]]],
                "target": labels[tgt[i]],
                "p_before": float(p_before[i]),
                "p_after": float(p_after[i]),
                "log_p_before": float(lp_before[i]),
                "log_p_after": float(lp_after[i]),
            }
            for i in np.flatnonzero(~ok)[:MAX_FAILURES]
        ],
        "terms": terms,
        "skipped_labels": [lab for lab in labels if lab not in terms],
    }
