"""Legacy path, kept for one release: MLflow pyfunc language models logged before the layered
layout run code that imports `paperops.generation`. New code imports
`paperops.inference.decoding`.
"""

from paperops.inference.decoding import SamplingParams, TorchDecoder, generate

__all__ = ["SamplingParams", "TorchDecoder", "generate"]
