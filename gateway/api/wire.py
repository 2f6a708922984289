"""What arrives on the wire before Herald's handlers run: request bodies and metadata.

grpc parses a request body with the deserializer the generated ``add_*Servicer_to_server``
registers, before the handler runs; a body that is not a valid protobuf then answers
UNKNOWN "Unexpected DecodeError". :func:`guard` returns a stand-in for the server to
pass to those functions: it registers each handler with no deserializer and the body
parsed inside the call, so that such a body answers INVALID_ARGUMENT, is counted in
``herald_requests_refused_total`` and never echoes its bytes. (Health and reflection
are registered on the server itself, as before.)

grpc also logs a metadata value that is not UTF-8 whole, traceback and all, through
the root logger (``Invalid encoding on b'Bearer ...'`` from ``cygrpc._decode``) and
then hands it on decoded as Latin-1: with a malformed API key, the key would land in
the logs. :func:`guard` installs a filter that withholds the value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf.message import DecodeError

from gateway.errors import InvalidArgument, status_of
from gateway.logs import get_logger
from gateway.metrics import Metrics

log = get_logger(__name__)

# DecodeError's text is "Error parsing message with type 'X': <reason>"; the reason is
# shown only when it is a few plain words, so that no byte of the body comes back.
_REASON_RE = re.compile(r": ([A-Za-z0-9 -]{1,60})$")


def _message_name(parse: Callable[[bytes], Any]) -> str:
    owner = getattr(parse, "__self__", None)  # Message.FromString is bound to its class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request message"))


def _not_valid(parse: Callable[[bytes], Any], error: DecodeError) -> InvalidArgument:
    """The error for a body ``parse`` refused with ``error``."""
    found = _REASON_RE.search(str(error))
    reason = f" ({found.group(1)})" if found else ""
    return InvalidArgument(
        "request body",
        f"is not a valid {_message_name(parse)}{reason}; check that every string field is UTF-8 "
        "and that the client's code was generated from the same herald/v1 protos as the server's",
    )


class _Checked:
    """Builds the checked form of a method handler; counts and logs what it refuses."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def handler(self, method: str, handler: Any) -> Any:
        """``handler`` with its body parsed in the call; only unary-unary handlers with a
        deserializer change (Herald's services have no others)."""
        parse = getattr(handler, "request_deserializer", None)
        behavior = getattr(handler, "unary_unary", None)
        if parse is None or behavior is None:
            return handler
        name = method.rsplit("/", 1)[-1]

        async def run(body: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(body)
            except DecodeError as exc:
                await self._refuse(name, context, _not_valid(parse, exc))
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=None, response_serializer=handler.response_serializer
        )

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, error: InvalidArgument) -> NoReturn:
        structlog.contextvars.clear_contextvars()
        code = status_of(error)
        self._metrics.refused.labels(method, code.name).inc()
        log.info("refused", method=method, code=code.name, error=error.message)
        await context.abort(code, error.message)
        raise AssertionError("context.abort returned")


class Guarded:
    """Passed to a generated ``add_*Servicer_to_server`` in place of the server: what it
    registers reaches the server with request bodies checked."""

    def __init__(self, server: grpc.aio.Server, metrics: Metrics) -> None:
        self._server = server
        self._checked = _Checked(metrics)

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        # The generated code adds each method both ways; the registered handler takes
        # precedence (grpc.aio.Server.add_registered_method_handlers), so the generic
        # one is never reached and goes on as it is.
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        checked = {name: self._checked.handler(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, checked)


_GRPC_UNDECODABLE = "Invalid encoding on %s"  # grpc/_cython/_cygrpc/grpc_string.pyx.pxi, _decode


class WithholdUndecodableMetadata(logging.Filter):
    """grpc's log line for a metadata value that is not UTF-8, without the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _GRPC_UNDECODABLE:
            record.msg = (
                "grpc: a request carried a metadata value that is not valid UTF-8 (value withheld: "
                "it may be a key); grpc hands it to the handler decoded as Latin-1"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _withhold_undecodable_metadata() -> None:
    # grpc logs it with ``logging.exception``: on the root logger, whose own filters
    # apply before any handler (lastResort included); its module logger too, should
    # a later grpc log it there.
    for logger in (logging.getLogger(), logging.getLogger("grpc._cython.cygrpc")):
        if not any(isinstance(f, WithholdUndecodableMetadata) for f in logger.filters):
            logger.addFilter(WithholdUndecodableMetadata())


def guard(server: grpc.aio.Server, metrics: Metrics) -> Guarded:
    """Register Herald's services through the returned object instead of ``server``."""
    _withhold_undecodable_metadata()
    return Guarded(server, metrics)
