"""`lodestar eval`: the scenario suite x every policy x seeds, with the results table and plots.

Consumes: a suite (`lodestar/eval/suites/<name>/suite.yaml` and its scenario files, or a folder of one's own).
Produces: `results.json`, `summary.md` and plots in an output folder. Modules: `suite` (suites as data),
`runner` (parallel runs), `metrics` (curves, time to converge, ratios), `report` and `plots`. See docs/eval.md.
"""

from lodestar.eval.metrics import convergence_time, geomean, rolling_mean_curve, steady_state
from lodestar.eval.report import aggregate, write_report
from lodestar.eval.runner import EvalRun, Job, run_job, run_suite
from lodestar.eval.suite import Suite, builtin_suites, load_suite, resolve_policies

__all__ = [
    "EvalRun",
    "Job",
    "Suite",
    "aggregate",
    "builtin_suites",
    "convergence_time",
    "geomean",
    "load_suite",
    "resolve_policies",
    "rolling_mean_curve",
    "run_job",
    "run_suite",
    "steady_state",
    "write_report",
]
