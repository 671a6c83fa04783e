"""Evaluation: typed tasks that evaluate and score themselves, metrics, sweeps against baselines, explain."""
