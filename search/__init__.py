"""Constrained multi-objective search over subnets, exit sets and thresholds."""
