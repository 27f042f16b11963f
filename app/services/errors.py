"""Typed domain errors; the API maps each to a documented problem+json response."""

from __future__ import annotations


class LetheError(Exception):
    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(LetheError):
    status = 404
    title = "Not found"


class Conflict(LetheError):
    status = 409
    title = "Conflict"


class InvalidInput(LetheError):
    status = 422
    title = "Invalid input"


class Unavailable(LetheError):
    status = 503
    title = "Service unavailable"
