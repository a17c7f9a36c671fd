"""Export: a trained bundle -> a self-contained directory serving loads (ONNX graph + int8 twin,
parity-checked), for classifiers (`export.classifier`) and the language model (`export.lm`).

May import: train's results are not needed; evaluate, tracking, inference, models, uncertainty,
data and the foundation modules. `export.cache` re-exports a registry model on demand.
"""
