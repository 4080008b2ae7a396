"""(G-routed) ``gateway serve`` with webhook ``POST`` requests routed by Litestar like every other
request, instead of taken before its router (:class:`gateway.http.webhooks.WebhooksFirst`):
``python -m benchmarks.apps.routed serve --port N``. G beside it shows what the bypass buys
(docs/seams.md); the answers are the same (tests/test_seams.py).
"""

from __future__ import annotations

import functools
import sys

from gateway.http import app


def main(argv: list[str]) -> int:
    app.create_app = functools.partial(app.create_app, webhooks_first=False)
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
