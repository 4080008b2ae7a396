"""gateway: an observability-first webhook ingest gateway for generation job-status webhooks."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ("__version__",)

try:
    __version__ = version("gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
