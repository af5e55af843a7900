"""Metrics, export of chosen early-exit models, evaluation and reports."""
