"""(G on granian) The gateway as ``gateway serve`` builds it, as a module-level ASGI app for servers
that take an app rather than a factory."""

from __future__ import annotations

from gateway.http.app import create_app

app = create_app()
