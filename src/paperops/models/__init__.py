"""Classifier and language-model families."""
