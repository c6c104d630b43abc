"""Dysonian ESR line parameters from a 1D CNN trained on exact simulated spectra."""

__version__ = "0.1.0"

#: Bumped when a checkpoint written by this version cannot be read by older code (here,
#: torch-free, so the prediction tools can check it without importing torch).
CHECKPOINT_FORMAT = 1
