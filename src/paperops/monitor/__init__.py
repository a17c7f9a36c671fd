"""Drift detection over the request log, its reports, and the retrain path."""
