"""Maps an action name to its payload model and handler."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .envelope import Envelope

Handler = Callable[[Envelope, Any], Awaitable[None]]


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the message goes straight to dead letter."""


class UnknownAction(PermanentError):
    pass


@dataclass(frozen=True)
class Route:
    action: str
    model: type[BaseModel]
    handler: Handler


class Router:
    def __init__(self, *, concurrency: int | None = None) -> None:
        """`concurrency`: messages in flight this router wants from its consumer (None: the worker's default);
        a handler that batches its writes needs many at once."""
        self.routes: dict[str, Route] = {}
        self.concurrency = concurrency

    def register(self, action: str, model: type[BaseModel], handler: Handler | None = None):
        """router.register("charge", Charge, fn), or as a decorator: @router.register("charge", Charge)."""
        if handler is None:
            return lambda fn: self.register(action, model, fn)
        if action in self.routes:
            raise ValueError(f"action {action!r} is already registered")
        self.routes[action] = Route(action, model, handler)
        return handler

    @property
    def models(self) -> dict[str, type[BaseModel]]:
        return {action: route.model for action, route in self.routes.items()}

    def resolve(self, envelope: Envelope) -> tuple[Route, BaseModel]:
        """The route and the validated payload; raises UnknownAction or pydantic.ValidationError."""
        route = self.routes.get(envelope.action)
        if route is None:
            raise UnknownAction(f"no handler for action {envelope.action!r}")
        return route, route.model.model_validate(envelope.payload)
