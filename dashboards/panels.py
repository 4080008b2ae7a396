"""Panel and dashboard builders with the house conventions built in.

Every panel gets a title, a description and a unit, queries the ``$datasource`` variable, and every
dashboard gets the datasource, job and instance variables and links to its siblings, so the conventions
the dashboard test checks hold by construction rather than by review.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as board_builders
from grafana_foundation_sdk.builders import heatmap as heatmap_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from dashboards.config import Config

__all__ = (
    "DATASOURCE",
    "Board",
    "heatmap",
    "query",
    "stat",
    "timeseries",
)

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and variable queries whichever Prometheus the ``datasource`` variable names."""

Steps = Sequence[tuple[float, str]]


class _PanelBuilder(Protocol):
    """What every panel builder of the SDK offers (each panel type has its own class)."""

    def title(self, title: str, /) -> Self: ...
    def description(self, description: str, /) -> Self: ...
    def unit(self, unit: str, /) -> Self: ...
    def datasource(self, datasource: model.DataSourceRef, /) -> Self: ...
    def span(self, w: int, /) -> Self: ...
    def height(self, h: int, /) -> Self: ...
    def with_target(self, target: Any, /) -> Self: ...


P = TypeVar("P", bound=_PanelBuilder)


def _conventional(
    panel: P, title: str, description: str, unit: str, targets: Sequence[Any], span: int, height: int
) -> P:
    """The conventions every panel follows: a title, a description, a unit, the datasource variable."""
    panel = panel.title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def query(expr: str, legend: str = "__auto", *, exemplar: bool = False, heatmap: bool = False) -> Any:
    """A Prometheus range query; ``exemplar`` overlays the trace exemplars Prometheus stored for it."""
    target = prometheus_builders.Dataquery().expr(expr).legend_format(legend).range()
    if exemplar:
        target = target.exemplar(True)
    if heatmap:
        target = target.format(prometheus_model.PromQueryFormat.HEATMAP)
    return target


def _thresholds(base: str, steps: Steps) -> board_builders.ThresholdsConfig:
    return (
        board_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(None, base), *(model.Threshold(value, color) for value, color in steps)])
    )


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Any],
    *,
    span: int = 12,
    height: int = 8,
    thresholds: Steps = (),
    stacked: bool = False,
    minimum: float | None = 0,
) -> timeseries_builders.Panel:
    """A time series panel; ``thresholds`` are drawn as dashed lines (the SLO, an alert's threshold).

    The y axis starts at ``minimum`` (0: rates and ratios are never negative), or fits the data if None.
    """
    panel = (
        _conventional(timeseries_builders.Panel(), title, description, unit, targets, span, height)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if thresholds:
        panel = panel.thresholds(_thresholds("green", thresholds)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    return panel


def stat(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Any],
    *,
    span: int = 6,
    height: int = 5,
    thresholds: Steps = (),
    base: str = "green",
    decimals: int | None = None,
) -> stat_builders.Panel:
    """A single-value panel of each query's last value, coloured by ``thresholds``."""
    panel = (
        _conventional(stat_builders.Panel(), title, description, unit, targets, span, height)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(base, thresholds))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def heatmap(
    title: str, description: str, unit: str, target: Any, *, repeat: str | None = None, span: int = 12
) -> heatmap_builders.Panel:
    """A heatmap of a histogram's buckets as Prometheus stores them (no re-bucketing in the browser)."""
    panel = (
        _conventional(heatmap_builders.Panel(), title, description, unit, [target], span, 8)
        .calculate(False)
        .y_axis(heatmap_builders.YAxisConfig().unit(unit))
        .cell_values(heatmap_builders.CellValues().unit("short"))
        .color(
            heatmap_builders.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
        )
    )
    if repeat:
        panel = panel.repeat(repeat).repeat_direction("h").max_per_row(2)
    return panel


class Board:
    """A dashboard under construction: variables, rows of panels, then ids, ``refId`` s and JSON."""

    def __init__(self, config: Config, uid: str, title: str, description: str) -> None:
        self._builder = (
            board_builders.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["gateway"])
            .editable()
            .refresh("30s")
            .time("now-6h", "now")
            .timezone("browser")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .annotation(
                # Grafana's own annotations and alert state changes, as on every new dashboard.
                board_builders.AnnotationQuery()
                .name("Annotations & Alerts")
                .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                .enable(True)
                .hide(True)
                .icon_color("rgba(0, 211, 255, 1)")
                .type("dashboard")
                .built_in(1)
            )
            .link(
                board_builders.DashboardLink("Gateway dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["gateway"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(
                board_builders.DatasourceVariable("datasource")
                .label("Data source")
                .description("The Prometheus that scrapes the gateway.")
                .type("prometheus")
                .current(model.VariableOption(selected=True, text="Prometheus", value=config.prometheus_uid))
            )
        )
        self._query_variable("job", "Job", "label_values(gateway_build_info, job)", "Prometheus job of the gateway.")
        self._query_variable(
            "instance",
            "Instance",
            'label_values(gateway_build_info{job=~"$job"}, instance)',
            "Gateway replicas; the SLO and stuck-job figures are across all of them.",
        )

    def _query_variable(self, name: str, label: str, expr: str, description: str) -> None:
        self._builder = self._builder.with_variable(
            board_builders.QueryVariable(name)
            .label(label)
            .description(description)
            .datasource(DATASOURCE)
            .query(expr)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
        )

    def variable(self, name: str, label: str, expr: str, description: str) -> Board:
        """Add a multi-value query variable (``All`` matches everything) after job and instance."""
        self._query_variable(name, label, expr, description)
        return self

    def row(self, title: str, *panels: Any) -> Board:
        """A row of panels, laid out left to right, wrapping at 24 columns."""
        self._builder = self._builder.with_row(board_builders.Row(title))
        for panel in panels:
            self._builder = self._builder.with_panel(panel)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The dashboard as Grafana's JSON model, with stable panel ids and ``refId`` s."""
        built = self._builder.build()
        document: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
        for number, panel in enumerate(document["panels"], start=1):
            panel["id"] = number
            for index, target in enumerate(panel.get("targets", [])):
                target["refId"] = chr(ord("A") + index)
        return document
