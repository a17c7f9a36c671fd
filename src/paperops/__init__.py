"""paperops: an MLOps system for classifying scientific papers and generating scientific text."""

__version__ = "0.1.0"
