"""The ingest pipeline: from an HTTP request's headers and body to an event applied exactly once.

Read :mod:`gateway.ingest.pipeline` top to bottom: it calls every stage, in order.
"""
