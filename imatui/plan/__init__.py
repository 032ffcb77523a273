"""Quantization plans: per-tensor error probes, the budget solver, readiness checks (layer 2)."""
