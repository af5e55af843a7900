"""Elastic supernet: search space, elastic ops, network, extraction, costs and training."""
