"""Tracking: MLflow (or W&B) runs, the model registry with its champion gate, and the two pyfunc
wrappers that make a bundle an MLflow model (models-from-code, nothing pickled).

May import: inference, models, uncertainty, data and the foundation modules. mlflow is
imported inside functions so that the rooms above load without the train extra.
"""
