"""Generation: how the backend's jobs end, per kind and model, how long they take, what they deliver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dashboards.panels import Board, heatmap, query, timeseries
from dashboards.promql import DASHBOARD_SELECTOR as SEL
from dashboards.promql import failed_ratio, matchers, quantile

if TYPE_CHECKING:
    from dashboards.config import Config

__all__ = ("generation",)

RI = "$__rate_interval"
GENERATION = "gateway_generation_duration_seconds"
MODEL_SEL = matchers(SEL, 'model=~"$model"')


def generation(config: Config) -> dict[str, Any]:
    """The dashboard to find which kind or model fails or slows down."""
    budget = config.slo.budget
    slo_line = ((budget, "red"),)
    objective = f"{config.slo.objective * 100:g}%"
    board = Board(
        config,
        "gateway-generation",
        "Gateway generation",
        "Generation jobs as their webhooks report them: completed, failed and canceled per kind and model "
        "against the SLO, generation time, images delivered and job duration.",
    ).variable(
        "model",
        "Model",
        f"label_values(gateway_generation_duration_seconds_count{{{SEL}}}, model)",
        "Models that reported a generation time (bounded by GATEWAY_MODEL_LABELS / GATEWAY_MAX_MODEL_LABELS).",
    )
    board.row(
        "Outcomes",
        timeseries(
            "Jobs finished by kind, model and result",
            "Jobs reaching completed, failed or canceled per second. A failure without a model name takes the "
            "job's model from its earlier events, else 'unknown'.",
            "cps",
            [
                query(
                    f"sum by (kind, model, result) (rate(gateway_jobs_finished_total{{{SEL}}}[{RI}]))",
                    "{{kind}} {{model}} {{result}}",
                )
            ],
            span=24,
        ),
        timeseries(
            "Failed ratio by kind against the SLO",
            "Failed jobs over completed and failed jobs (canceled ones count in neither), per kind: the SLI. "
            f"The dashed line is the failure budget of the {objective} SLO ({budget * 100:g}%); staying above it "
            "burns the error budget (see the SLO dashboard).",
            "percentunit",
            [query(failed_ratio(SEL, RI, by="kind"), "{{kind}}")],
            thresholds=slo_line,
        ),
        timeseries(
            "Failed ratio by model",
            "Failed jobs over completed and failed jobs per kind and model (canceled ones count in neither): "
            "which model is behind a failure spike.",
            "percentunit",
            [query(failed_ratio(SEL, RI, by="kind, model"), "{{kind}} {{model}}")],
            thresholds=slo_line,
        ),
    )
    board.row(
        "Generation time",
        timeseries(
            "Generation time by model",
            "generation_time_seconds reported by the backend when a job finished: 50th/95th/99th percentiles "
            "per kind and model, from the histogram. Dots are exemplars: click one to open the webhook's trace.",
            "s",
            [
                query(
                    quantile(q, GENERATION, MODEL_SEL, RI, by="kind, model"),
                    f"p{round(q * 100)} {{{{kind}}}} {{{{model}}}}",
                    exemplar=True,
                )
                for q in (0.5, 0.95, 0.99)
            ],
            span=24,
        ),
        heatmap(
            "Generation time distribution: $model",
            "How many jobs of this model finished in each generation-time bucket per second (darker: more).",
            "s",
            query(
                f"sum by (le) (rate({GENERATION}_bucket{{{MODEL_SEL}}}[{RI}]))",
                "{{le}}",
                heatmap=True,
            ),
            repeat="model",
        ),
    )
    board.row(
        "Output and duration",
        timeseries(
            "Images per minute by model",
            "Images delivered by completed image jobs, per minute.",
            "cpm",
            [query(f"sum by (model) (rate(gateway_images_total{{{SEL}}}[{RI}])) * 60", "{{model}}")],
            span=8,
        ),
        timeseries(
            "Job duration",
            "First event the gateway saw for a job to its terminal event (50th and 95th percentiles per kind and "
            "result): what the user waits, as far as the webhooks tell.",
            "s",
            [
                query(
                    quantile(q, "gateway_job_duration_seconds", SEL, RI, by="kind, result"),
                    f"p{round(q * 100)} {{{{kind}}}} {{{{result}}}}",
                )
                for q in (0.5, 0.95)
            ],
            span=8,
        ),
        timeseries(
            "Status transitions",
            "Applied status transitions per second (a job's first event included, progress updates not).",
            "cps",
            [
                query(
                    f"sum by (kind, status) (rate(gateway_job_transitions_total{{{SEL}}}[{RI}]))",
                    "{{kind}} {{status}}",
                )
            ],
            span=8,
            stacked=True,
        ),
    )
    return board.to_dict()
