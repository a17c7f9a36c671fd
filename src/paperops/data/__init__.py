"""Data: sources, taxonomy, preparation, validation and the LM corpus.

May import only the foundation modules (config, io, log).
"""
