"""SLO: the failed-generation error budget left over the SLO period and how fast each window burns it.

Its panels read the recorded ratios the burn-rate alerts use, so the dashboard shows exactly what pages.
Recorded ratios are per job and kind, across replicas: the instance variable applies to the traffic row only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dashboards.panels import Board, query, stat, timeseries
from dashboards.promql import DASHBOARD_SELECTOR as SEL
from dashboards.promql import failed_ratio_record

if TYPE_CHECKING:
    from dashboards.config import Config

__all__ = ("slo",)

JOB = 'job=~"$job"'


def slo(config: Config) -> dict[str, Any]:
    """The dashboard behind every GatewayJobFailureBudgetBurn page."""
    spec = config.slo
    budget = f"{spec.budget:g}"
    objective = f"{spec.objective * 100:g}%"
    fastest = spec.burn_rates[0]
    period_ratio = f"{failed_ratio_record(spec.period)}{{{JOB}}}"
    board = Board(
        config,
        "gateway-slo",
        "Gateway SLO",
        f"Failed-generation SLO: {objective} of the jobs that complete or fail succeed over {spec.period} "
        "(canceled jobs count in neither). Error budget left and burn rate per alert window, from the recording "
        "rules the alerts use.",
    )
    board.row(
        "Error budget",
        stat(
            f"Error budget remaining ({spec.period})",
            f"Share of the {spec.period} failure budget ({spec.budget * 100:g}% of completed and failed jobs) not "
            "yet spent, per kind. Negative: the SLO is already missed for this period.",
            "percentunit",
            [query(f"1 - {period_ratio} / {budget}", "{{kind}}")],
            thresholds=((0, "orange"), (0.25, "green")),
            base="red",
            span=8,
        ),
        stat(
            f"Success ratio ({spec.period})",
            "Completed jobs over completed and failed jobs over the SLO period, per kind; the objective is "
            f"{objective}.",
            "percentunit",
            [query(f"1 - {period_ratio}", "{{kind}}")],
            thresholds=((spec.objective, "green"),),
            base="red",
            decimals=2,
            span=8,
        ),
        stat(
            f"Burn rate ({fastest.long})",
            f"How many times faster than sustainable the budget burned over the last {fastest.long}, per kind: "
            f"1 spends exactly the budget over {spec.period}; {fastest.factor:g} pages.",
            "suffix:x",
            [query(f"{failed_ratio_record(fastest.long)}{{{JOB}}} / {budget}", "{{kind}}")],
            thresholds=((1, "orange"), (fastest.factor, "red")),
            decimals=1,
            span=8,
        ),
    )
    burn_panels = []
    for burn in spec.burn_rates:
        action = "pages" if burn.severity == "critical" else "opens a ticket"
        burn_panels.append(
            timeseries(
                f"Burn rate over {burn.long} and {burn.short} ({burn.severity} at {burn.factor:g}x)",
                f"Failed ratio divided by the failure budget ({budget}), over {burn.long} and {burn.short}, per "
                f"kind. When both lines stay above the dashed {burn.factor:g}x line for {burn.for_}, "
                f"GatewayJobFailureBudgetBurn {action}.",
                "suffix:x",
                [
                    query(f"{failed_ratio_record(window)}{{{JOB}}} / {budget}", f"{{{{kind}}}} {window}")
                    for window in (burn.long, burn.short)
                ],
                thresholds=((burn.factor, "red"),),
            )
        )
    board.row("Burn rates", *burn_panels)
    board.row(
        "Traffic behind the SLI",
        timeseries(
            "Jobs finished by kind and result",
            "Finished jobs per second: a burn rate over a handful of jobs is less alarming than over thousands. "
            "Canceled jobs are shown but are not in the SLI.",
            "cps",
            [
                query(
                    f"sum by (kind, result) (rate(gateway_jobs_finished_total{{{SEL}}}[$__rate_interval]))",
                    "{{kind}} {{result}}",
                )
            ],
            span=24,
        ),
    )
    return board.to_dict()
