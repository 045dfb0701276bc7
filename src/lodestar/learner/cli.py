"""`lodestar explain`: read a decision log of the learned policy.

Consumes: a JSONL decision log (`--param decision_log=PATH` on `lodestar sim --policy lodestar`, or the gateway's
policy config). Produces: a printed summary (`lodestar.learner.explain.explain`), or JSON with `--json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer, out: Console) -> None:
    @app.command("explain")
    def explain_cmd(
        log: Annotated[Path, typer.Argument(help="Decision log (JSONL) written by the lodestar policy.")],
        top: Annotated[int, typer.Option(help="How many of the worst mispredictions to list.", min=0)] = 5,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Summarise a decision log: modes, picks, prediction accuracy, worst mispredictions."""
        from lodestar.learner.explain import explain

        s = explain(log, top)
        if as_json:
            out.print_json(json.dumps(s))
            return
        out.print(f"{s['decisions']} decisions ({s['with_outcome']} with an observed TTFT); modes: {s['modes']}")
        out.print(f"picked the lowest predicted TTFT in {s['pick_was_lowest_prediction']:.1%} of decisions")
        if "r2" in s:
            out.print(
                f"picked candidate's prediction: R^2 {s['r2']:.3f}, median relative error {s['median_rel_err']:.1%}, "
                f"mean predicted {s['mean_predicted_ttft_s']:.4f}s vs observed {s['mean_observed_ttft_s']:.4f}s"
            )
        t = Table(title="picks per endpoint")
        t.add_column("endpoint")
        t.add_column("decisions", justify="right")
        for ep, n in s["picks"].items():
            t.add_row(ep, str(n))
        out.print(t)
        if s["worst"]:
            w = Table(title="worst mispredictions")
            for col in ("request", "endpoint", "predicted TTFT", "observed TTFT"):
                w.add_column(col)
            for r in s["worst"]:
                w.add_row(str(r["req"]), r["pick"], f"{r['pred_ttft_s']:.4f}s", f"{r['ttft_s']:.4f}s")
            out.print(w)
