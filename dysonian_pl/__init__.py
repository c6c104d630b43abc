"""Dysonian ESR line parameters from a 1D CNN trained on exact simulated spectra."""

__version__ = "0.1.0"
