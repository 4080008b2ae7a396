"""ISO 8601 text of UTC moments, exactly as :meth:`datetime.isoformat` writes it, for the hot path.

``isoformat`` formats through a printf-like routine and looks up the offset; msgspec's encoder writes the
same fields for much less (measured in docs/benchmark.md). Only the fraction and the offset differ in
shape, and are fixed here. ``tests/test_timestamps.py`` checks the texts against ``isoformat``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

__all__ = ("utc_iso", "utc_iso_milliseconds")

_encode = msgspec.json.Encoder().encode


def utc_iso(moment: datetime) -> str:
    """``moment.astimezone(UTC).isoformat(timespec="microseconds")``: the same text."""
    moment = moment.astimezone(UTC)
    # msgspec writes a UTC moment as "YYYY-MM-DDTHH:MM:SS[.ffffff]Z", the fraction left out when zero.
    text = _encode(moment)[1:-2]
    return (text + b"+00:00" if moment.microsecond else text + b".000000+00:00").decode()


def utc_iso_milliseconds(seconds: float) -> str:
    """``datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")``: the same text."""
    moment = datetime.fromtimestamp(seconds, UTC)
    text = _encode(moment)
    return (text[1:24] + b"+00:00" if moment.microsecond else text[1:-2] + b".000+00:00").decode()
