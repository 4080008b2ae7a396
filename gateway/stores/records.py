"""Row helpers every job store shares: metadata merging and JSON columns, so backends agree byte for byte."""

from __future__ import annotations

import msgspec

from gateway.payloads import Metadata

__all__ = ("decode_metadata", "merge_metadata", "to_json")

_encode = msgspec.json.Encoder().encode
_metadata_decoder = msgspec.json.Decoder(Metadata)


def merge_metadata(stored: Metadata | None, incoming: Metadata | None) -> Metadata | None:
    """Fields the event carries override the stored ones; fields it leaves out are kept."""
    if incoming is None or stored is None:
        return incoming or stored
    return Metadata(
        model_name=incoming.model_name or stored.model_name,
        generation_time_seconds=(
            incoming.generation_time_seconds
            if incoming.generation_time_seconds is not None
            else stored.generation_time_seconds
        ),
    )


def to_json(value: object) -> str | None:
    """A JSON text column (``None`` stays SQL ``NULL``)."""
    return _encode(value).decode() if value is not None else None


def decode_metadata(text: str | None) -> Metadata | None:
    return _metadata_decoder.decode(text) if text is not None else None
