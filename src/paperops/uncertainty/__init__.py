"""Uncertainty: temperature scaling, conformal prediction sets, and the `Calibration` that
serving applies.

May import only the foundation modules (config, io, log) and numpy: serving, evaluation and
the legacy pyfunc all load it, so it stays light.
"""
