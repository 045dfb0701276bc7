"""The `lodestar` command line (DESIGN.md 4.1).

Every user mistake surfaces as one line `error: ...` on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lodestar.errors import UserError
from lodestar.kv_args import parse_kv

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Lodestar: a learned LLM inference router, and the simulator that measures it.",
    pretty_exceptions_enable=False,
)
# Wide enough for the summary table when output is piped (rich assumes 80 columns then).
out = Console(width=None if sys.stdout.isatty() else 130)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 130)

DEFAULT_SCENARIO = "synthetic-chat"


def _csv(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text, "--seeds")]
    except ValueError:
        raise UserError(f"--seeds: expected integers like 0,1,2, got {text!r}") from None


class _Progress:
    """A rich progress bar on an interactive terminal; silent otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(), console=err, transient=True,
            )  # fmt: skip
            self._bar.__enter__()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task(self.label, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _summary_table(results: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for col in [
        "policy",
        "seed",
        "done/total",
        "TTFT mean",
        "p50",
        "p99",
        "TPOT mean",
        "E2E mean",
        "prefix hit",
    ]:
        t.add_column(col, justify="right" if col != "policy" else "left")
    for r in results:
        q, f, p, e = r["requests"], r["ttft_s"], r["tpot_s"], r["e2e_s"]
        t.add_row(
            r["policy"], str(r["seed"]), f"{q['completed']}/{q['total']}",
            f"{f['mean']:.3f}s", f"{f['p50']:.3f}s", f"{f['p99']:.3f}s",
            f"{p['mean'] * 1e3:.1f}ms", f"{e['mean']:.2f}s", f"{r['prefix_hit_ratio']:.1%}",
        )  # fmt: skip
    return t


@app.command()
def sim(
    scenario: Annotated[str, typer.Option(help="Scenario YAML path or built-in name.")] = DEFAULT_SCENARIO,
    policy: Annotated[str, typer.Option(help="Registered policy name (see `lodestar policies`).")] = "least-request",
    seed: Annotated[int | None, typer.Option(help="Seed (default: the scenario's).")] = None,
    duration: Annotated[float | None, typer.Option(help="Only requests arriving in the first SECONDS.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the result JSON here.")] = None,
    requests_out: Annotated[Path | None, typer.Option(help="Write one CSV row per request here.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Policy parameter KEY=VALUE (repeatable).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """One simulated run: prints a summary, writes the result JSON."""
    from lodestar.sim.api import run_one
    from lodestar.sim.results import write_requests_csv

    with _Progress(f"{policy}", progress) as bar:
        summary, rec = run_one(scenario, policy, seed, duration, parse_kv(param, "--param"), progress=bar)
    out.print(_summary_table([summary], f"scenario {summary['scenario']}"))
    out.print(
        f"ideal TTFT mean {summary['ideal_ttft_s']['mean']:.3f}s; simulated {summary['sim_duration_s']:.0f}s "
        f"in {summary['wall_s']:.2f}s wall ({summary['requests_per_wall_s']:.0f} req/s, "
        f"{summary['events_per_wall_s']:.0f} events/s)"
    )
    if out_file is not None:
        _write(out_file, json.dumps(summary, indent=2))
    if requests_out is not None:
        write_requests_csv(rec, requests_out)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


@app.command()
def compare(
    scenario: Annotated[str, typer.Option(help="Scenario YAML path or built-in name.")] = DEFAULT_SCENARIO,
    policies: Annotated[str | None, typer.Option(help="Comma-separated policy names (default: all).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    duration: Annotated[float | None, typer.Option(help="Only requests arriving in the first SECONDS.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Same scenario, several policies and seeds: summary.json, summary.md and plots in --out."""
    from lodestar.policies.base import policy_registry
    from lodestar.sim.report import write_compare
    from lodestar.sim.scenario import load_scenario

    sc = load_scenario(scenario)
    names = _csv(policies, "--policies") if policies else list(policy_registry())
    reg = policy_registry()
    for n in names:
        if n not in reg:
            raise UserError(f"unknown policy {n!r}; expected one of: {', '.join(reg)}")
    seed_list = _seeds(seeds)
    out_dir = out_dir or Path("results") / f"compare-{sc.name}"
    from lodestar.sim.api import run_one, scenario_requests

    results, records = [], []
    for s in seed_list:
        reqs = scenario_requests(sc, s, duration)
        for name in names:
            with _Progress(f"{name} seed {s}", progress) as bar:
                summary, rec = run_one(sc, name, s, progress=bar, requests=reqs)
            results.append(summary)
            records.append(rec)
            err.print(f"  {name:<24} seed {s}: TTFT mean {summary['ttft_s']['mean']:.3f}s "
                      f"p99 {summary['ttft_s']['p99']:.3f}s ({summary['wall_s']:.1f}s wall)")  # fmt: skip
    md = write_compare(out_dir, sc, results, records)
    out.print(_summary_table(results, f"scenario {sc.name}"))
    out.print(md.splitlines()[0] if md else "")
    out.print(f"wrote {out_dir}/summary.json, summary.md, ttft_cdf.png, ttft_over_time.png")


@app.command("policies")
def list_policies() -> None:
    """List registered policy names with one-line descriptions."""
    from lodestar.policies.base import policy_registry

    t = Table(title="policies")
    t.add_column("name")
    t.add_column("description")
    for name, cls in policy_registry().items():
        t.add_row(name, cls.description)
    out.print(t)


@app.command("scenarios")
def list_scenarios() -> None:
    """List built-in scenarios."""
    from lodestar.sim.scenario import builtin_scenarios, load_scenario

    t = Table(title="built-in scenarios")
    t.add_column("name")
    t.add_column("description")
    for name in builtin_scenarios():
        t.add_row(name, load_scenario(name).description)
    out.print(t)


@app.command("eval")
def eval_suite(
    suite: Annotated[str, typer.Option(help="Suite name (default, quick) or a suite folder / suite.yaml.")] = "default",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default results/eval-SUITE).")] = None,
    policies: Annotated[str | None, typer.Option(help="Comma-separated policy names (default: the suite's).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (default: the suite's).")] = None,
    jobs: Annotated[int | None, typer.Option(help="Worker processes (default: CPU count).", min=1)] = None,
    learned: Annotated[str, typer.Option(help="Policy reported as the learned one.")] = "lodestar",
    plots: Annotated[bool, typer.Option(help="Write the plots.")] = True,
) -> None:
    """The scenario suite x policies x seeds: results.json, summary.md and plots in --out."""
    from lodestar.eval.report import write_report
    from lodestar.eval.runner import Job, run_suite
    from lodestar.eval.suite import load_suite, resolve_policies

    s = load_suite(suite)
    requested = _csv(policies, "--policies") if policies else s.policies
    names, notes = resolve_policies(requested, learned)
    if not names:
        raise UserError("no registered policy to run")
    seed_list = _seeds(seeds) if seeds else s.seeds
    out_dir = out_dir or Path("results") / f"eval-{s.name}"

    def say(text: str) -> None:
        err.print(text, markup=False, highlight=False, soft_wrap=True)

    for n in notes:
        say(f"note: {n}")

    def on_done(k: int, total: int, job: Job, summary: dict[str, Any] | None, error: str | None) -> None:
        head = f"[{k}/{total}] {job.scenario} {job.policy} seed {job.seed}:"
        if summary is None:
            say(f"{head} FAILED: {error}")
        else:
            t = summary["ttft_s"]
            say(f"{head} TTFT mean {t['mean']:.3f}s p99 {t['p99']:.3f}s ({summary['wall_s']:.1f}s wall)")

    ev = run_suite(s, names, seed_list, jobs, learned=learned, on_done=on_done, notes=notes)
    for sk in ev.skipped:
        say(f"note: skipped scenario {sk['scenario']}: {sk['reason']}")
    write_report(out_dir, ev, plots=plots)
    out.print(f"{len(ev.runs)} runs in {ev.wall_s:.0f}s; wrote {out_dir}/results.json, summary.md"
              f"{', plots/' if plots else ''}")  # fmt: skip
    if ev.errors:
        raise UserError(f"{len(ev.errors)} run(s) failed; see {out_dir}/summary.md")


def _register_subcommands() -> None:
    """Commands that live with their subsystem: explain (learner), serve (gateway), emulate/replay (emulator), up."""
    from lodestar.emulator.cli import register as register_emulator
    from lodestar.gateway.cli import register as register_gateway
    from lodestar.learner.cli import register as register_explain
    from lodestar.up import register as register_up

    register_explain(app, out)
    register_gateway(app)
    register_emulator(app)
    register_up(app, out)


_register_subcommands()


def main() -> None:
    try:
        app(standalone_mode=True)
    except UserError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
