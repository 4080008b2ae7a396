"""``gateway send`` as an SRE runs it: a real ``python -m gateway send`` against a live ``gateway serve``."""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, LiveServer, completed_blog, free_port
from tests.test_cli import run_gateway


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One gateway for the module (each test uses jobs of its own): starting one per test costs a second."""
    server = LiveServer(tmp_path_factory.mktemp("send"), {"WEBHOOK_SECRET": SECRET})
    yield server
    server.stop()


def send(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_gateway(tmp_path, "send", *args, env=env)


def send_json(server: LiveServer, tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = send(tmp_path, "--url", server.url, "--json", *args, env=env)
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def job(server: LiveServer, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/api/jobs/{job_id}")


def new_key() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.mark.parametrize(
    ("scenario", "status"),
    [("completed", "completed"), ("failed", "failed"), ("canceled", "canceled"), ("generating", "generating")],
)
def test_each_seed_scenario_is_applied(live_server: LiveServer, tmp_path: Path, scenario: str, status: str) -> None:
    code, report = send_json(live_server, tmp_path, "--scenario", scenario, env={"WEBHOOK_SECRET": SECRET})
    assert code == 0, report
    assert report["ok"] is True
    [answer] = report["requests"]
    assert answer["status_code"] == 200
    assert answer["outcome"] == "applied"
    assert answer["elapsed_ms"] > 0
    stored = job(live_server, report["job_id"]).json()
    assert stored["status"] == status
    assert stored["kind"] == "image"
    if scenario == "failed":
        assert stored["error_message"] == "Clé API Google invalide"
    if scenario == "canceled":
        assert stored["error_message"] == "Canceled by the user"
        assert stored["completed_at"] is not None


def test_duplicate_sends_one_delivery_twice_and_the_second_is_a_duplicate(
    live_server: LiveServer, tmp_path: Path
) -> None:
    code, report = send_json(live_server, tmp_path, "--scenario", "duplicate", env={"WEBHOOK_SECRET": SECRET})
    assert code == 0, report
    assert [answer["outcome"] for answer in report["requests"]] == ["applied", "duplicate"]
    assert len(job(live_server, report["job_id"]).json()["history"]) == 1


def test_invalid_is_the_expected_400_naming_the_missing_field(live_server: LiveServer, tmp_path: Path) -> None:
    result = send(tmp_path, "--url", live_server.url, "--scenario", "invalid", env={"WEBHOOK_SECRET": SECRET})
    assert result.returncode == 0, result.stdout  # a 400 is what this scenario is for
    assert "400" in result.stdout
    assert "missing required field `data`" in result.stdout
    assert "OK (expected 400" in result.stdout


def test_human_output_names_code_outcome_and_time(live_server: LiveServer, tmp_path: Path) -> None:
    result = send(tmp_path, "--url", live_server.url, "--job-id", "sre-check-1", env={"WEBHOOK_SECRET": SECRET})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "job sre-check-1" in result.stdout
    assert "200 outcome=applied job status=completed in " in result.stdout
    assert " ms" in result.stdout


def test_default_url_is_where_gateway_serve_binds(live_server: LiveServer, tmp_path: Path) -> None:
    """Without --url, the sender reads GATEWAY_HOST/GATEWAY_PORT exactly as ``gateway serve`` does."""
    env = {"WEBHOOK_SECRET": SECRET, "GATEWAY_PORT": str(live_server.port)}
    result = send(tmp_path, "--job-id", "default-url", env=env)
    assert result.returncode == 0, result.stdout
    assert f"http://127.0.0.1:{live_server.port}/api/webhooks/image-completion" in result.stdout
    assert job(live_server, "default-url").json()["status"] == "completed"


def test_a_wrong_secret_is_a_401_that_says_what_to_check(live_server: LiveServer, tmp_path: Path) -> None:
    result = send(tmp_path, "--url", live_server.url, env={"WEBHOOK_SECRET": "not-the-secret"})
    assert result.returncode == 1
    assert "401" in result.stdout
    assert "WEBHOOK_SECRET here differs from the gateway's" in result.stdout
    assert "not-the-secret" not in result.stdout
    assert "UNEXPECTED" in result.stdout


def test_no_credentials_against_a_gateway_that_wants_them(live_server: LiveServer, tmp_path: Path) -> None:
    result = send(tmp_path, "--url", live_server.url)
    assert result.returncode == 1
    assert "set WEBHOOK_SECRET or WEBHOOK_SIGNING_KEYS" in result.stdout


def test_signing_key_signs_with_the_first_key(tmp_path: Path, stopping: list[LiveServer]) -> None:
    """With WEBHOOK_SIGNING_KEYS the sender signs (the server has no shared secret at all); with several
    keys it signs with the first, and a copy of the same delivery is a duplicate by its webhook-id."""
    newest, older = new_key(), new_key()
    server = LiveServer(tmp_path, {"WEBHOOK_SIGNING_KEYS": f"{newest},{older}", "WEBHOOK_SECRET": ""})
    stopping.append(server)

    code, report = send_json(server, tmp_path, "--scenario", "duplicate", env={"WEBHOOK_SIGNING_KEYS": newest})
    assert code == 0, report
    assert "signed with the first key" in report["authentication"]
    assert [answer["outcome"] for answer in report["requests"]] == ["applied", "duplicate"]

    # The sender's list, newest first, holding a key the server dropped after it: still accepted.
    code, report = send_json(server, tmp_path, env={"WEBHOOK_SIGNING_KEYS": f"{newest},{new_key()}"})
    assert code == 0, report

    # A key the server does not know: a 401 with what to check.
    result = send(tmp_path, "--url", server.url, env={"WEBHOOK_SIGNING_KEYS": new_key()})
    assert result.returncode == 1
    assert "401" in result.stdout
    assert "refused the signature" in result.stdout
    assert "WEBHOOK_TOLERANCE_SECONDS" in result.stdout


def test_file_and_stdin_payloads_go_to_the_kinds_route(live_server: LiveServer, tmp_path: Path) -> None:
    payload = tmp_path / "blog.json"
    payload.write_text(json.dumps(completed_blog("blog-from-file")))
    code, report = send_json(
        live_server, tmp_path, "--kind", "blog", "--file", str(payload), env={"WEBHOOK_SECRET": SECRET}
    )
    assert code == 0, report
    assert report["url"].endswith("/api/webhooks/blog-completion")
    assert job(live_server, "blog-from-file").json()["kind"] == "blog"

    clean = {name: value for name, value in os.environ.items() if not name.startswith(("GATEWAY_", "WEBHOOK_"))}
    piped = subprocess.run(
        [sys.executable, "-m", "gateway", "send", "--url", live_server.url, "--kind", "blog", "--file", "-"],
        input=json.dumps(completed_blog("blog-from-stdin")),
        env={**clean, "WEBHOOK_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert job(live_server, "blog-from-stdin").json()["status"] == "completed"


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = send(tmp_path, "--file", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_usage_mistakes_exit_2_saying_what_is_wrong(tmp_path: Path) -> None:
    result = send(tmp_path, "--url", "127.0.0.1:8000")
    assert result.returncode == 2
    assert "--url must start with http:// or https://" in result.stderr
    result = send(tmp_path, "--file", "-", "--job-id", "x")
    assert result.returncode == 2
    assert "a --file carries its own" in result.stderr
    result = send(tmp_path, "--scenario", "exploded")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_gateway_listening_says_so(tmp_path: Path) -> None:
    result = send(tmp_path, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stdout
    assert "is `gateway serve` running there?" in result.stdout


def test_help_shows_examples(tmp_path: Path) -> None:
    result = send(tmp_path, "--help")
    assert result.returncode == 0
    for text in ("--scenario", "--file", "--kind", "--job-id", "--json", "examples:", "WEBHOOK_SIGNING_KEYS"):
        assert text in result.stdout


def test_a_kind_without_a_sample_is_refused_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A kind registered without `sample` (here a throwaway one, never added to KINDS): no guessed body.
    from gateway import send as send_module
    from gateway.config import Settings
    from gateway.kinds import JobKind
    from gateway.payloads import ImagePayload

    video = JobKind("video", ImagePayload, "Video generation.")
    monkeypatch.setattr(send_module, "kind_named", lambda name: video)
    args = argparse.Namespace(
        kind="video", url="http://127.0.0.1:9", file=None, job_id=None, scenario="completed", timeout=1.0, json=True
    )

    assert send_module.run_send(args, Settings.from_env({})) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no sample completed payload for a video job" in captured.err
    assert "--file" in captured.err
