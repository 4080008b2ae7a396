"""Delivery of applied events onward: the outbox, its dispatcher, and the sinks it delivers to."""
