"""Legacy path, kept for one release: MLflow pyfunc models logged before the layered layout run
code that imports `paperops.calibrate`. New code imports `paperops.uncertainty.calibrate`."""

from paperops.uncertainty.calibrate import (
    TemperatureScaler,
    expected_calibration_error,
    fit_temperature,
    log_softmax,
    softmax,
)

__all__ = [
    "TemperatureScaler",
    "expected_calibration_error",
    "fit_temperature",
    "log_softmax",
    "softmax",
]
