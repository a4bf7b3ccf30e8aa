"""`metaedge sweep`: many budgets from one baseline and one PruningNet, the accuracy-latency frontier
of the results, and the pick of the point to deploy."""

from metaedge.sweep.config import SweepConfig
from metaedge.sweep.frontier import FrontierRow
from metaedge.sweep.pick import choose_point, copy_point
from metaedge.sweep.runner import SweepResult, run_sweep

__all__ = ["FrontierRow", "SweepConfig", "SweepResult", "choose_point", "copy_point", "run_sweep"]
