"""Pure statistics over an Imatrix: no printing, no Textual, plain data out."""

from imatui.stats.tensor import LayerStats, StatsReport, TensorStats, compute_stats

__all__ = ["LayerStats", "StatsReport", "TensorStats", "compute_stats"]
