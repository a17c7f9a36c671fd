"""Serving: the FastAPI app factory, its routes, micro-batching and the generation engine, model
loading (directory, registry, export cache), metrics, settings and the web page.

May import every room below it (export, tracking, inference, models, requestlog, ...); not
monitor, its peer, nor cli.
"""
