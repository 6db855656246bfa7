"""The codec endpoint: opens sealed payloads for an authorized reader (a web UI's backend
or a browser), so the key ring stays here and never reaches the browser.

``POST /decode`` with ``Authorization: Bearer <token>`` (verified by
:class:`~immortal.security.TokenVerifier`; the tenant is the token's, never the body's)::

    {"workflow_id": "order-42", "run_id": "9f0c...",
     "payloads": [{"field": "input", "data": "<base64 of the sealed bytes>"},
                  {"field": "result", "data": "...", "run_id": "another run of it"}]}

answers the same list, in order: ``{"data": "<base64 of the plain msgpack>", "value":
<it as JSON>}`` per payload that opened, ``{"error": "...", "key_id": "k2"}`` per one that
did not (as Temporal's codec server answers ``/decode``, with each payload's binding). A
plain payload comes back as it is. Readers, writers and admins of the tenant may decode;
the hub's identity may not (the hub never needs plaintext).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from immortal._codec import to_wire, unpack
from immortal._errors import PayloadError
from immortal.codec._aesgcm import PayloadCodec
from immortal.codec._binding import Binding
from immortal.codec._envelope import key_id_of
from immortal.codec._errors import CodecError
from immortal.codec._reveal import unreadable
from immortal.codec._sealing import open_payload
from immortal.security.errors import TokenError
from immortal.security.identity import Principal, Role

if TYPE_CHECKING:
    from immortal.security.tokens import TokenVerifier

__all__ = ["CodecServer", "DecodeRefused"]

log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024
MAX_PAYLOADS = 1000


class DecodeRefused(Exception):
    """A request refused as a whole: its HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CodecServer:
    """``/decode`` over HTTP for the tenants whose rings it holds.

    >>> server = CodecServer({"acme": AesGcmCodec(ring)}, TokenVerifier(AuthConfig.load()))
    >>> server.start(); print(server.url)
    """

    def __init__(
        self,
        codecs: Mapping[str, PayloadCodec],
        verifier: TokenVerifier,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_origin: str | None = None,
    ) -> None:
        self.codecs = dict(codecs)
        self.verifier = verifier
        self.allow_origin = allow_origin
        self._loop = asyncio.new_event_loop()  # token verification is async
        self._loop_thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._http = ThreadingHTTPServer((host, port), _handler(self))
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._loop_thread.start()
        self._http_thread.start()
        log.info("codec server on %s for tenant(s) %s", self.url, ", ".join(sorted(self.codecs)))

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def authorize(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise DecodeRefused(401, "no bearer token: send Authorization: Bearer <token>")
        verifying = asyncio.run_coroutine_threadsafe(
            self.verifier.verify(token.strip()), self._loop
        )
        try:
            principal = verifying.result(timeout=15)
        except TokenError as exc:
            raise DecodeRefused(401, f"token refused: {exc}") from None
        except Exception as exc:  # the IdP's key set unreachable, a verification timed out
            log.warning("token not verified: %r", exc)
            raise DecodeRefused(503, "the token could not be verified now; try again") from None
        if principal.has(Role.HUB) or not principal.can_read:
            raise DecodeRefused(403, f"{principal.subject} may not read payloads")
        if principal.tenant not in self.codecs:
            raise DecodeRefused(403, f"no key ring for tenant {principal.tenant!r} here")
        return principal

    def decode(self, principal: Principal, request: Any) -> dict[str, Any]:
        """The answer to one ``/decode`` body for ``principal`` (already authorized)."""
        if not isinstance(request, dict) or not isinstance(request.get("payloads"), list):
            raise DecodeRefused(400, 'the body must be {"payloads": [...]}, JSON')
        asked = request.get("tenant")
        if asked is not None and asked != principal.tenant:
            raise DecodeRefused(403, f"the token is for tenant {principal.tenant!r}, not {asked!r}")
        payloads = request["payloads"]
        if len(payloads) > MAX_PAYLOADS:
            raise DecodeRefused(413, f"at most {MAX_PAYLOADS} payloads per request")
        codec = self.codecs[principal.tenant]
        out = [_decode_one(codec, principal.tenant, request, p) for p in payloads]
        log.info(
            "decoded %d payload(s) of tenant %s for %s (%s)",
            sum("value" in o for o in out), principal.tenant, principal.subject, principal.pid,
        )  # fmt: skip
        return {"payloads": out}


def _decode_one(codec: PayloadCodec, tenant: str, request: dict[str, Any], item: Any) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        return {"error": 'each payload needs "data" (base64) and "field"'}
    try:
        data = base64.b64decode(item["data"], validate=True)
    except (binascii.Error, ValueError):
        return {"error": "data is not base64"}
    where = Binding(
        tenant,
        str(item.get("workflow_id", request.get("workflow_id", ""))),
        str(item.get("run_id", request.get("run_id", ""))),
        str(item.get("field", "")),
    )
    try:
        plain = open_payload(codec, where, data)
        assert plain is not None
        value = to_wire(unpack(plain))
    except CodecError as exc:
        return {"error": unreadable(data, codec, exc), "key_id": key_id_of(data) or ""}
    except PayloadError as exc:
        return {"error": str(exc)}
    return {"data": base64.b64encode(plain).decode(), "value": value}


def _body_size(header: str | None) -> int:
    try:
        size = int(header or 0)
    except ValueError:
        size = -1
    if size < 0:
        raise DecodeRefused(400, "Content-Length must be a byte count")
    if size > MAX_BODY:
        raise DecodeRefused(413, f"a body of at most {MAX_BODY:,} bytes")
    return size


def _handler(server: CodecServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_OPTIONS(self) -> None:  # a browser's preflight
            self._answer(204, None)

        def do_POST(self) -> None:
            try:
                if self.path.split("?", 1)[0] != "/decode":
                    raise DecodeRefused(404, f"no endpoint {self.path} (POST /decode)")
                principal = server.authorize(self.headers.get("Authorization"))
                size = _body_size(self.headers.get("Content-Length"))
                try:
                    request = json.loads(self.rfile.read(size) or b"null")
                except ValueError as exc:
                    raise DecodeRefused(400, f"the body is not JSON: {exc}") from None
                self._answer(200, server.decode(principal, request))
            except DecodeRefused as exc:
                # The body may be unread: this connection cannot carry another request.
                self.close_connection = True
                self._answer(exc.status, {"error": str(exc)})

        def _answer(self, status: int, body: dict[str, Any] | None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if server.allow_origin:
                self.send_header("Access-Control-Allow-Origin", server.allow_origin)
                self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # never the headers (tokens)
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
