"""Monitoring: drift detection over the request log, its reports, and the retrain path.

May import every room below serve (export, train, evaluate, tracking, inference, models,
requestlog, data, ...); not serve, which is its peer.
"""
