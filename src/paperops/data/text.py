"""Text normalisation shared by prepare (cleaning, dedupe) and validate (overlap checks)."""

from __future__ import annotations

import hashlib

import pandas as pd


def clean_whitespace(s: pd.Series) -> pd.Series:
    """Collapse every whitespace run to one space and strip. TeX is kept as written."""
    return s.str.replace(r"\s+", " ", regex=True).str.strip()


def dedupe_key(title: pd.Series, abstract: pd.Series) -> pd.Series:
    """A hash of title+abstract, lower-cased with punctuation and spacing removed.

    Two copies of a paper that differ only in case, spacing or punctuation (a common artefact of
    different scrapes) get the same key, so they cannot land in train and test at once.
    """
    text = (title.fillna("") + " " + abstract.fillna("")).str.lower()
    text = text.str.replace(r"[\W_]+", "", regex=True)
    return text.map(lambda t: hashlib.blake2b(t.encode("utf-8"), digest_size=12).hexdigest())


def model_text(title: str, abstract: str) -> str:
    """The one string a classifier sees for a paper; training and serving must agree on it."""
    return f"{title.strip()}\n{abstract.strip()}"
