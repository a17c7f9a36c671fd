"""Inference: texts -> answers without HTTP. The classifier `Predictor` (sklearn, torch or ONNX
Runtime, calibrated), decoding and sampling for the language model, the ONNX decoder, and
generator loading. Evaluation, export, the CLI and the API share it.

May import: models, uncertainty, data and the foundation modules. Safe on a serve-only install:
torch and transformers are imported only where a torch model is actually loaded.
"""
