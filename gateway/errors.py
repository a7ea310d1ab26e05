"""The gateway's domain errors. The library raises them; the edges translate them (HTTP status, CLI message)."""
from __future__ import annotations


class GatewayError(Exception):
    """A request the gateway cannot carry out, with a message the caller can act on."""

    status = 400  # what the HTTP edge answers

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


class InvalidInput(GatewayError):
    """The request is malformed or a field is out of range; `field` names it."""


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    """The request is valid but the thing is not in a state that allows it (a cancelled case, a revoked device)."""

    status = 409
