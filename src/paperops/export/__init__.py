"""Export: a trained bundle -> a self-contained directory serving loads (ONNX graph + int8 twin,
parity-checked), for classifiers (`export.classifier`) and the language model (`export.lm`); and
the int8 sentence-encoder graph the hybrid family trains and serves with (`export.encoder`).

May import: evaluate, tracking, inference, models, uncertainty, data and the foundation modules
(not train: train builds encoder graphs through this room). `export.cache` re-exports a registry
model on demand.
"""
