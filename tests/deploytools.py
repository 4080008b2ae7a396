"""The deployment tests' external tools: kubectl (kustomize), and checkov and kubernetes-validate, each in
a virtualenv of its own outside the checkout (checkov pins an older ``packaging`` than the suite's).

A missing tool is installed on first use (``pip`` into ``$GATEWAY_CI_TOOLS/<name>``, by default
``/var/lib/gateway-ci/tools`` when writable, else ``~/.cache/gateway-ci/tools``); one that cannot be
installed skips its tests locally and fails them in CI (``CI=true``), like Prometheus' tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ("PINNED", "kubectl", "missing", "venv_tool")

PINNED = {"checkov": "checkov==3.3.30", "kubernetes-validate": "kubernetes-validate==1.37.0"}
"""The versions the committed manifests were scanned with; a new one is a deliberate bump."""


def missing(message: str) -> None:
    """Skip locally, fail in CI, where .ci/services installs every tool."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; .ci/services installs it, so CI must not skip this test")
    pytest.skip(message)


def tools_dir() -> Path:
    configured = os.environ.get("GATEWAY_CI_TOOLS")
    if configured:
        return Path(configured)
    system = Path("/var/lib/gateway-ci/tools")
    try:
        system.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path.home() / ".cache" / "gateway-ci" / "tools"
    return system if os.access(system, os.W_OK) else Path.home() / ".cache" / "gateway-ci" / "tools"


def venv_tool(name: str) -> str:
    """The path of ``name``'s command, installing its pinned version into its own virtualenv if needed."""
    venv = tools_dir() / name
    command = venv / "bin" / name
    if command.exists():
        return str(command)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", PINNED[name]], check=True, capture_output=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError) as error:
        missing(f"{name} could not be installed into {venv}: {error}")
    if not command.exists():
        missing(f"{name} was installed into {venv} but has no {command}")
    return str(command)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        missing("kubectl is not installed (its `kubectl kustomize` renders the manifests)")
    assert path is not None
    return path
