"""The hot path's ISO texts are exactly what ``datetime.isoformat`` writes (stored times, log lines)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.timestamps import utc_iso, utc_iso_milliseconds

_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 26, 10, 0, tzinfo=UTC),  # no fraction: msgspec leaves it out
        datetime(2026, 11, 26, 10, 0, 0, 120000, tzinfo=UTC),  # trailing zeros kept
        datetime(2026, 11, 26, 10, 0, 0, 999, tzinfo=UTC),  # under a millisecond
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))),  # another offset: the day before in UTC
    ],
)
def test_the_texts_are_isoformats(moment: datetime) -> None:
    assert utc_iso(moment) == moment.astimezone(UTC).isoformat(timespec="microseconds")
    seconds = moment.timestamp()
    if moment.year == 9999:
        return  # as a float, the last microsecond of 9999 rounds into year 10000: no datetime has it
    assert utc_iso_milliseconds(seconds) == datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@given(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=_ZONES))
def test_any_aware_moment_is_written_as_isoformat_writes_it(moment: datetime) -> None:
    assert utc_iso(moment) == moment.astimezone(UTC).isoformat(timespec="microseconds")


@given(st.floats(min_value=0, max_value=253_402_300_799, allow_nan=False))
def test_any_log_time_is_written_as_isoformat_writes_it(seconds: float) -> None:
    assert utc_iso_milliseconds(seconds) == datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
