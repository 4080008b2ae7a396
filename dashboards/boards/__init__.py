"""The three dashboards: overview (webhooks), generation (jobs and models), SLO (error budget, burn rates)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dashboards.boards.generation import generation
from dashboards.boards.overview import overview
from dashboards.boards.slo import slo

if TYPE_CHECKING:
    from collections.abc import Callable

    from dashboards.config import Config

__all__ = ("BOARDS", "generation", "overview", "slo")

BOARDS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "gateway-overview": overview,
    "gateway-generation": generation,
    "gateway-slo": slo,
}
"""Every dashboard by uid; each is written to ``dashboards/grafana/<uid>.json``."""
