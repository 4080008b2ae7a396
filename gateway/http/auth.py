"""Who may call which route: one guard for the whole app, chosen by the request's method.

Every route is guarded by :meth:`ApiAccess.guard`, registered once on the app (``create_app``), so a route
added later is covered without anyone remembering to: a request that reads (``GET``, ``HEAD``) needs the
read credential, and one that writes (any other method but ``OPTIONS``) needs the bearer token. A route
opts out only by declaring it: :data:`PUBLIC` for reads anyone may make (health, metrics, the status page,
the OpenAPI document), :data:`OWN_AUTHENTICATION` for the routes that authenticate their caller
themselves (the webhooks, the sign-in routes). ``GATEWAY_PUBLIC_READ=true`` opens reads only; in
production with no ``GATEWAY_API_TOKEN`` every write is refused (403); in development with no token
everything is open.

The credential is ``GATEWAY_API_TOKEN`` as a bearer token, or, for reads, a session cookie signed with it.
A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page signs in once
(``POST /api/session`` with the token) and gets an HttpOnly, SameSite=Strict cookie holding an expiry and
an HMAC of it, keyed by a key derived from the token: nothing to store server-side, any replica with the
same token verifies it, and changing the token signs every session out. Webhook secrets never open the
read API. Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Request, Response, delete, post
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from gateway.http.responses import ErrorBody, error_response, json_response

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler, HTTPRouteHandler

__all__ = (
    "OWN_AUTHENTICATION",
    "PUBLIC",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "SIGN_IN_MAX_BYTES",
    "ApiAccess",
    "Session",
    "SignIn",
    "session_routes",
)

SESSION_COOKIE = "gateway_session"
SESSION_SECONDS = 8 * 3600
"""A working day: the status page signs in again after that."""
SIGN_IN_MAX_BYTES = 4096
"""Most bytes of a ``POST /api/session`` body (413 beyond, before it is read)."""

_NEEDS = (
    "The read API needs GATEWAY_API_TOKEN: send `Authorization: Bearer <token>`, or sign in with "
    'POST /api/session and body {"token": "<token>"} for a session cookie'
)


_READS = frozenset({"GET", "HEAD"})
_ALWAYS_OPEN = frozenset({"OPTIONS"})
"""Answered with the path's ``Allow`` header only: reads nothing, changes nothing."""
_WRITES_NEED = "Routes that change data need GATEWAY_API_TOKEN: send `Authorization: Bearer <token>`"

_ACCESS = "access"
Declared = Literal["public", "own"]
"""What a route may declare under ``opt["access"]``; a route declaring nothing gets the default rule."""
PUBLIC: Mapping[str, Declared] = MappingProxyType({_ACCESS: "public"})
"""A route's ``opt`` for reads anyone may make (health, metrics, status page, OpenAPI document); never opens a
write."""
OWN_AUTHENTICATION: Mapping[str, Declared] = MappingProxyType({_ACCESS: "own"})
"""A route's ``opt`` for routes that authenticate their caller themselves: the webhooks (secret or signature)
and ``POST``/``DELETE /api/session`` (the token in the body; signing out needs nothing)."""


def _digest(value: str) -> bytes:
    """Hash before comparing, so the comparison takes the same time whatever the lengths."""
    return hashlib.sha256(value.encode()).digest()


class ApiAccess:
    """Decides who may call which route; :meth:`guard` is the app's one guard.

    ``token``: ``GATEWAY_API_TOKEN``. ``public_read``: ``GATEWAY_PUBLIC_READ`` (reads need no credential).
    ``production``: ``GATEWAY_ENV=production``, where writes stay closed when no token is set.
    """

    def __init__(
        self,
        token: str | None,
        clock: Callable[[], float] = time.time,
        *,
        public_read: bool = False,
        production: bool = False,
    ) -> None:
        self._token = _digest(token) if token is not None else None
        self._key = hmac.new(token.encode(), b"gateway-session-v1", hashlib.sha256).digest() if token else b""
        self._clock = clock
        self._public_read = public_read
        self._writes_closed = production and token is None

    @property
    def required(self) -> bool:
        return self._token is not None

    @property
    def writes_closed(self) -> bool:
        """No write route can ever be called: production without ``GATEWAY_API_TOKEN``."""
        return self._writes_closed

    def guard(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        """The app's guard: reads need the read credential, writes the bearer token, unless the route
        declared :data:`PUBLIC` (reads only) or :data:`OWN_AUTHENTICATION`. Raises 401 (a credential would
        help) or 403 (production with no token: nothing opens a write)."""
        method = connection.scope.get("method", "GET")
        declared: Declared | None = handler.opt.get(_ACCESS)
        if method in _ALWAYS_OPEN or declared == "own":
            return
        if method in _READS:
            if declared != "public" and not self._public_read:
                self._check_read(connection)
            return
        self._check_write(connection)

    def _check_write(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """The bearer token, and only it (a cookie rides along with forged requests); open in development
        when no token is set."""
        if self._writes_closed:
            raise PermissionDeniedException(
                "GATEWAY_API_TOKEN is not set, so in production the routes that change data are closed "
                "(GATEWAY_PUBLIC_READ opens reads only): set GATEWAY_API_TOKEN and send it as a bearer token"
            )
        if self._token is None:
            return
        if self._bearer_given(connection, _WRITES_NEED):
            return
        if connection.cookies.get(SESSION_COOKIE) is not None:
            # A cookie rides along with any request the browser makes, a forged one included: it opens
            # reads (the status page's), never a change (registration, replay).
            raise NotAuthorizedException(
                "The session cookie only opens reads: send Authorization: Bearer <token> to change anything",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise NotAuthorizedException(_WRITES_NEED, headers={"WWW-Authenticate": "Bearer"})

    def _bearer_given(self, connection: ASGIConnection[Any, Any, Any, Any], needs: str) -> bool:
        """Whether the request carries the token as a bearer; ``False`` without an ``Authorization`` header.

        Raises ``NotAuthorizedException`` (401 saying ``needs``) for any other ``Authorization`` value.
        """
        authorization = connection.headers.get("authorization")
        if authorization is None:
            return False
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
            return True
        raise NotAuthorizedException(
            f"Invalid credentials. {needs}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    def _check_read(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """The bearer token or a valid session cookie; open when no token is set."""
        if self._token is None:
            return
        if self._bearer_given(connection, _NEEDS):
            return
        cookie = connection.cookies.get(SESSION_COOKIE)
        if cookie is not None and self.session_valid(cookie):
            return
        detail = f"Session expired or invalid. {_NEEDS}" if cookie is not None else _NEEDS
        raise NotAuthorizedException(detail, headers={"WWW-Authenticate": "Bearer"})

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(_digest(given), self._token)

    def sign(self) -> tuple[str, int]:
        """A session value and its expiry (epoch seconds)."""
        expires = int(self._clock()) + SESSION_SECONDS
        return f"{expires}.{self._mac(expires)}", expires

    def session_valid(self, value: str) -> bool:
        expires_text, _, mac = value.partition(".")
        if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
            return False
        expires = int(expires_text)
        return hmac.compare_digest(mac.encode(), self._mac(expires).encode()) and expires > self._clock()

    def _mac(self, expires: int) -> str:
        signature = hmac.new(self._key, f"session:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(signature).decode().rstrip("=")


class SignIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /api/session``."""

    token: str


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a sign-in."""

    token_required: bool
    """``False``: no ``GATEWAY_API_TOKEN`` is set, the read API is open and no cookie was needed."""
    expires_at: datetime | None = None


def _sign_in_too_large(_: Request[Any, Any, Any], __: RequestEntityTooLarge) -> Response[bytes]:
    return error_response(413, f'A sign-in body is {{"token": "<token>"}}: at most {SIGN_IN_MAX_BYTES} bytes')


def session_routes(access: ApiAccess) -> list[HTTPRouteHandler]:
    """``POST /api/session`` (sign in with the token, get the cookie) and ``DELETE /api/session``."""

    @post(
        "/api/session",
        opt=OWN_AUTHENTICATION,
        tags=["session"],
        summary="Exchange the API token for a session cookie (browsers)",
        status_code=200,
        responses={
            200: ResponseSpec(
                Session, generate_examples=False, description="Signed in (the cookie is set), or no token is needed."
            ),
            401: ResponseSpec(ErrorBody, generate_examples=False, description="Wrong token."),
            413: ResponseSpec(
                ErrorBody, generate_examples=False, description=f"Body larger than {SIGN_IN_MAX_BYTES} bytes."
            ),
        },
        # A token is a few dozen bytes: nobody reads megabytes before a sign-in is even checked.
        request_max_body_size=SIGN_IN_MAX_BYTES,
        exception_handlers={RequestEntityTooLarge: _sign_in_too_large},
    )
    async def sign_in(data: JSONBody[SignIn], request: Request[Any, Any, Any]) -> Response[bytes]:
        if not access.required:
            return json_response(Session(token_required=False))
        if not access.token_matches(data.token):
            raise NotAuthorizedException(f"Wrong token. {_NEEDS}")
        value, expires = access.sign()
        response = json_response(
            Session(token_required=True, expires_at=datetime.fromtimestamp(expires, UTC)), status_code=200
        )
        response.set_cookie(
            Cookie(
                key=SESSION_COOKIE,
                value=value,
                max_age=SESSION_SECONDS,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        )
        return response

    @delete(
        "/api/session",
        opt=OWN_AUTHENTICATION,
        tags=["session"],
        summary="Sign out: clear the session cookie",
        status_code=204,
        responses={204: ResponseSpec(None, description="Signed out: the cookie is cleared (no body).")},
    )
    async def sign_out() -> Response[None]:
        response: Response[None] = Response(None, status_code=204)
        # Expired at once, with the attributes it was set with, so every browser drops the same cookie.
        response.set_cookie(Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/", httponly=True, samesite="strict"))
        return response

    return [sign_in, sign_out]
