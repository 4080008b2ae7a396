"""PromQL shared by the rules and the dashboards, so both compute the SLI the same way."""

from __future__ import annotations

__all__ = ("DASHBOARD_SELECTOR", "failed_ratio", "failed_ratio_record", "matchers", "quantile")

DASHBOARD_SELECTOR = 'job=~"$job", instance=~"$instance"'
"""What every dashboard query of a gateway metric filters on: the job and instance template variables."""


def matchers(*parts: str) -> str:
    """Label matchers joined into one selector body, skipping empty parts."""
    return ", ".join(part for part in parts if part)


def failed_ratio(selector: str, window: str, by: str = "job, kind") -> str:
    """The failed-generation SLI: failed jobs over jobs that completed or failed, per ``by``.

    A canceled job (``result="canceled"``) is neither a success nor a failure of generation: it counts on
    neither side, so cancellations never burn the error budget nor dilute real failures.
    A kind whose jobs all succeeded has no ``result="failed"`` series yet; ``or ... * 0`` makes its ratio 0
    instead of missing, so dashboards show a flat line rather than "No data". No completed or failed job at
    all gives 0/0: no ratio, and the alerts built on it stay silent when there is no such traffic.
    """
    generated_selector = matchers(selector, 'result=~"completed|failed"')
    finished = f"rate(gateway_jobs_finished_total{{{generated_selector}}}[{window}])"
    failed_selector = matchers(selector, 'result="failed"')
    failed = f"rate(gateway_jobs_finished_total{{{failed_selector}}}[{window}])"
    total = f"sum by ({by}) ({finished})"
    return f"(\n  sum by ({by}) ({failed})\n  or\n  {total} * 0\n)\n/\n{total}"


def failed_ratio_record(window: str) -> str:
    """Name of the recorded SLI over ``window`` (``level:metric:operations``, as Prometheus recommends)."""
    return f"job_kind:gateway_jobs_failed:ratio_rate{window}"


def quantile(q: float, metric: str, selector: str, window: str, by: str = "") -> str:
    """``histogram_quantile`` of a histogram's buckets summed by ``le`` (and ``by``)."""
    keep = matchers(by, "le")
    return f"histogram_quantile({q:g}, sum by ({keep}) (rate({metric}_bucket{{{selector}}}[{window}])))"
