"""Helpers for the monitoring tests: Prometheus' own tools, a real Prometheus, the dashboards' queries."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"


def binary(name: str) -> str:
    """The path of one of Prometheus' binaries; skip without it, but fail in CI, which must install it."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; .ci/run installs it, so CI must not skip this test")
    pytest.skip(message)


def committed_dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards by uid."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((DASHBOARDS / "grafana").glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows are only containers)."""
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel
        yield from (inner for inner in panel.get("panels", []) if inner["type"] != "row")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def regex_escape(value: str) -> str:
    """How Grafana escapes a variable value it puts into a regex matcher: a backslash for the regex,
    doubled inside the PromQL string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


class Prometheus:
    """A real ``prometheus`` on a free loopback port with a throwaway TSDB; stop it with :meth:`stop`."""

    def __init__(self, executable: str, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--enable-feature=exemplar-storage",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=5)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.log.read_text()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus was not ready within 30 s:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails the test on a query Prometheus rejects."""
        response = self.http.post("/api/v1/query", data={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"Prometheus rejected {expr!r}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        body = self.http.get(f"/api/v1/label/{label}/values", params={"match[]": match}).json()
        assert body.get("status") == "success", f"Prometheus rejected {match!r}: {body}"
        values: list[str] = body["data"]
        return values

    def exemplars(self, expr: str, seconds: float) -> list[dict[str, Any]]:
        now = time.time()
        response = self.http.get("/api/v1/query_exemplars", params={"query": expr, "start": now - seconds, "end": now})
        body = response.json()
        assert body.get("status") == "success", body
        result: list[dict[str, Any]] = body["data"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.http.get("/api/v1/alerts").json()["data"]["alerts"]
        return alerts

    def wait_for(self, expr: str, timeout: float) -> list[dict[str, Any]]:
        """Poll an instant query until it returns something."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} returned nothing within {timeout} s")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def finite(result: list[dict[str, Any]]) -> bool:
    """Whether an instant vector holds at least one real number (NaN is what 0/0 gives)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)
