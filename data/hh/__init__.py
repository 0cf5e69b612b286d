"""Anthropic HH-RLHF, converted to the formats data/loader.py reads."""
