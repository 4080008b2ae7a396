"""``gateway send``: post a correctly signed webhook to a running gateway and say what it answered.

It authenticates exactly as the server expects, from the same environment variables read the same way
(:meth:`Settings.from_env`), and uses only the standard library for HTTP, so it works with the base
install.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway import signatures
from gateway.config import Settings
from gateway.kinds import KINDS, JobKind, a_job_of_kind, kind_named
from gateway.redact import scrub, shown_url

__all__ = ("SCENARIOS", "add_send_parser", "run_send")

Scenario = Literal["completed", "failed", "canceled", "generating", "duplicate", "invalid"]
SCENARIOS: tuple[Scenario, ...] = ("completed", "failed", "canceled", "generating", "duplicate", "invalid")

_EXAMPLES = """\
examples:
  gateway send                                   a completed image webhook to the local gateway
  gateway send --scenario failed --kind blog     a failed blog job
  gateway send --scenario canceled               a job canceled by its user (not a failed generation)
  gateway send --scenario duplicate              the same delivery twice: the second is a duplicate
  gateway send --scenario invalid                a completed event without data: 400 naming `data`
  gateway send --url https://gw.example.com --job-id job-42 --scenario generating
  gateway send --file payload.json               a payload from disk (- reads stdin)
  gateway send --json --scenario completed       one JSON object on stdout, for scripts

  Every scenario of the seed's test script, in order:
  for s in completed failed generating duplicate invalid; do gateway send --scenario "$s"; done

authentication (read from the environment, as `gateway serve` reads it):
  WEBHOOK_SIGNING_KEYS  sign with Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)
                        using the FIRST key of the list: list the newest key first when rotating
  WEBHOOK_SECRET        otherwise, send it in X-Webhook-Secret
  neither               send no credentials (accepted only by a development gateway without any)

exit status: 0 when the gateway answered as the scenario expects (2xx; `duplicate` for the second copy
of --scenario duplicate; 400 for --scenario invalid), 1 otherwise or when it cannot be reached, 2 for a
usage or configuration error.
"""


@dataclass(frozen=True, slots=True)
class Credentials:
    """How requests are authenticated: a Standard Webhooks key, the shared secret, or nothing."""

    signing_key: bytes | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    sender: str | None = None
    """The sender of ``GATEWAY_SENDERS_FILE`` whose credentials these are (``None``: no file)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """The credentials of the first sender: of the senders file, else ``WEBHOOK_*``."""
        first = settings.active_senders[0]
        sender = first.name if settings.senders else None
        if first.signing_keys:
            return cls(signing_key=first.signing_keys[0], sender=sender)
        return cls(secret=first.secret, sender=sender)

    @property
    def described(self) -> str:
        if self.sender is not None and (self.signing_key is not None or self.secret is not None):
            what = "signed with its first key" if self.signing_key is not None else "X-Webhook-Secret"
            return f"{what}, as sender {self.sender!r} of GATEWAY_SENDERS_FILE"
        if self.signing_key is not None:
            return "signed with the first key of WEBHOOK_SIGNING_KEYS"
        if self.secret is not None:
            return "X-Webhook-Secret from WEBHOOK_SECRET"
        return "no credentials"

    def headers(self, body: bytes, delivery_id: str, now: float) -> dict[str, str]:
        """The authentication headers for one delivery of ``body``."""
        if self.signing_key is not None:
            timestamp = str(int(now))
            return {
                "webhook-id": delivery_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": signatures.sign(self.signing_key, delivery_id, timestamp, body),
            }
        if self.secret is not None:
            # The server compares the header's Latin-1 decoded bytes with the UTF-8 secret: send UTF-8.
            return {"X-Webhook-Secret": self.secret.encode().decode("latin-1")}
        return {}

    def refused_hint(self) -> str:
        """What to check after a 401, since the gateway never says which part was wrong."""
        if self.signing_key is not None:
            return (
                "the gateway refused the signature (signed with the first key of WEBHOOK_SIGNING_KEYS): check "
                "that key is one of the gateway's, and that both clocks agree within WEBHOOK_TOLERANCE_SECONDS"
            )
        if self.secret is not None:
            return "the gateway refused X-Webhook-Secret: WEBHOOK_SECRET here differs from the gateway's"
        return "the gateway requires credentials: set WEBHOOK_SECRET or WEBHOOK_SIGNING_KEYS as the gateway has them"


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's result, as printed."""

    status_code: int | None
    """``None`` when no HTTP answer came back (connection refused, timeout)."""
    elapsed_seconds: float
    body: Any = None
    error: str | None = None

    @property
    def outcome(self) -> str | None:
        return self.body.get("outcome") if isinstance(self.body, dict) else None

    @property
    def detail(self) -> str | None:
        return self.body.get("detail") if isinstance(self.body, dict) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "outcome": self.outcome,
            "detail": self.detail,
            "elapsed_ms": round(self.elapsed_seconds * 1000, 2),
            "body": self.body,
            "error": self.error,
        }


def add_send_parser(commands: Any) -> None:
    """Register ``send`` on the CLI's subcommands (``commands`` is argparse's subparsers action)."""
    send = commands.add_parser(
        "send",
        help="post a signed test webhook to a running gateway",
        description="Post a correctly authenticated webhook to a running gateway and print the status code, "
        "the outcome and the time taken. Reproduces the seed's five test scenarios, and a cancellation.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument(
        "--url",
        help="the gateway's base URL; the kind's webhook route is appended "
        "(default: http://$GATEWAY_HOST:$GATEWAY_PORT, i.e. where `gateway serve` binds: http://127.0.0.1:8000)",
    )
    what = send.add_mutually_exclusive_group()
    what.add_argument("--scenario", choices=SCENARIOS, help="which of the seed's scenarios (default: completed)")
    what.add_argument("--file", metavar="PATH", help="send this file's bytes as the body ('-': standard input)")
    send.add_argument(
        "--kind",
        choices=[kind.name for kind in KINDS],
        default=KINDS[0].name,
        help="job kind, which picks the route (default: %(default)s)",
    )
    send.add_argument("--job-id", help="job id of the scenario's payload (default: a new UUID)")
    send.add_argument("--timeout", type=_positive, default=10.0, help="seconds to wait for an answer (default: 10)")
    send.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {value!r}")
    return seconds


def run_send(args: argparse.Namespace, settings: Settings) -> int:
    """Send what ``args`` asks for and report; the exit status says whether the answer was the expected one."""
    kind = kind_named(args.kind)
    assert kind is not None  # argparse restricted the choices
    base = (args.url or _local_url(settings)).rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"gateway send: --url must start with http:// or https://, got {shown_url(base)!r}", file=sys.stderr)
        return 2
    if args.file is not None and args.job_id is not None:
        print("gateway send: --job-id names the job of a --scenario payload; a --file carries its own", file=sys.stderr)
        return 2
    url = f"{base}{kind.route}"
    credentials = Credentials.from_settings(settings)
    scenario: str = args.scenario or ("file" if args.file is not None else "completed")
    job_id: str = args.job_id or str(uuid.uuid4())

    if args.file is not None:
        try:
            body = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
        except OSError as error:
            print(f"gateway send: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
            return 2
    elif scenario in {"completed", "duplicate"} and kind.sample is None:
        print(
            f"gateway send: no sample completed payload for {a_job_of_kind(kind.name)}: "
            "send one with --file, or another --scenario",
            file=sys.stderr,
        )
        return 2
    else:
        body = json.dumps(_payload(kind, scenario, job_id)).encode()

    delivery_id = f"msg_{uuid.uuid4().hex}"
    post = _Poster(url, credentials, args.timeout)
    answers = [post(body, delivery_id)]
    if scenario == "duplicate" and answers[0].status_code is not None and 200 <= answers[0].status_code < 300:
        answers.append(post(body, delivery_id))  # the same delivery again: same body, same webhook-id

    expected, ok = _judge(scenario, answers)
    if args.json:
        report = {
            "scenario": scenario,
            "url": shown_url(url),
            "kind": kind.name,
            "job_id": None if args.file is not None else job_id,
            "authentication": credentials.described,
            "expected": expected,
            "ok": ok,
            "requests": [answer.as_json() for answer in answers],
        }
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_text(scenario, url, None if args.file is not None else job_id, credentials, answers, expected, ok)
    return 0 if ok else 1


def _local_url(settings: Settings) -> str:
    """Where ``gateway serve`` listens with the same environment; a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload(kind: JobKind, scenario: str, job_id: str) -> dict[str, Any]:
    """The seed's payload for ``scenario``, for a job of ``kind`` (a completed one carries the kind's sample)."""
    envelope: dict[str, Any] = {"job_id": job_id, "timestamp": _now()}
    metadata = {"model_name": "gemini-2.0-flash-exp", "generation_time_seconds": 12.5}
    if scenario == "failed":
        return {**envelope, "status": "failed", "error_message": "Clé API Google invalide"}
    if scenario == "canceled":
        return {**envelope, "status": "canceled", "error_message": "Canceled by the user"}
    if scenario == "generating":
        return {**envelope, "status": "generating"}
    if scenario == "invalid":
        return {**envelope, "status": "completed"}  # a completed event without its `data`
    assert kind.sample is not None  # run_send refused a completed scenario of a kind without one
    result = kind.sample(job_id)
    return {**envelope, "status": "completed", "data": {**result, "metadata": metadata}}


class _Poster:
    """POSTs bodies to one URL with fresh authentication headers, timing each request."""

    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        self._url = url
        self._credentials = credentials
        self._timeout = timeout

    def __call__(self, body: bytes, delivery_id: str) -> Answer:
        headers = {"Content-Type": "application/json", "User-Agent": "gateway-send"}
        headers.update(self._credentials.headers(body, delivery_id, time.time()))
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")  # noqa: S310
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, not HTTP at all
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            return Answer(
                None,
                time.perf_counter() - started,
                error=scrub(f"cannot reach {shown_url(self._url)}: {reason}", self._url),
            )
        elapsed = time.perf_counter() - started
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return Answer(status, elapsed, parsed)


def _judge(scenario: str, answers: list[Answer]) -> tuple[str, bool]:
    """What the scenario expects, and whether the answers match it."""
    last = answers[-1]
    if scenario == "invalid":
        return "400 naming the missing field `data`", last.status_code == 400 and "data" in (last.detail or "")
    if scenario == "duplicate":
        return "2xx twice, the second with outcome `duplicate`", len(answers) == 2 and last.outcome == "duplicate"
    return "2xx", last.status_code is not None and 200 <= last.status_code < 300


def _print_text(
    scenario: str,
    url: str,
    job_id: str | None,
    credentials: Credentials,
    answers: list[Answer],
    expected: str,
    ok: bool,
) -> None:
    job = f" job {job_id}" if job_id is not None else ""
    print(f"{scenario}: POST {shown_url(url)}{job} ({credentials.described})")
    for number, answer in enumerate(answers, start=1):
        label = f"  #{number} " if len(answers) > 1 else "  "
        took = f"in {answer.elapsed_seconds * 1000:.1f} ms"
        if answer.status_code is None:
            print(f"{label}no answer {took}: {answer.error} (is `gateway serve` running there?)")
            continue
        if answer.outcome is not None:
            status = answer.body.get("status")
            print(f"{label}{answer.status_code} outcome={answer.outcome} job status={status} {took}")
        else:
            print(f"{label}{answer.status_code} {took}: {answer.detail or answer.body}")
        if answer.status_code == 401:
            print(f"{label}{credentials.refused_hint()}")
    print(f"{'OK' if ok else 'UNEXPECTED'} (expected {expected})")
