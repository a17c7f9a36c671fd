"""Serving: runtimes (ONNX Runtime, sklearn, torch), the FastAPI app, micro-batching, metrics,
the request log and the web page. `paperops serve` and `paperops predict` start here."""
