"""Datasets and the one loader every training script uses."""
