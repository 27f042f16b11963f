"""Registry of unlearning methods: lower-case name → (pydantic config class, method
class). :data:`MethodConfig` is the discriminated union of every config (field
``method``), usable as a FastAPI/pydantic field type; :func:`parse_method_config` and
:func:`default_config` build configs; :func:`get_method` instantiates a method.

Names and registrations are checked at import time, so a bad method fails the worker's
start, not the first job that uses it.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from workers.engine.methods.base import (
    REFERENCE_QUANTITIES,
    BaseMethodConfig,
    Forward,
    Method,
    ReferenceCache,
    StepInputs,
    run_forward,
)
from workers.engine.methods.builtin import BUILTIN_METHODS, IDK_ANSWERS

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

REGISTRY: dict[str, tuple[type[BaseMethodConfig], type[Method]]] = {}


def _register(method: type[Method]) -> None:
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"method name {name!r} must be lower-case [a-z0-9_]")
    if name in REGISTRY:
        raise ValueError(f"method {name!r} registered twice")
    config = method.config_class
    field = config.model_fields.get("method")
    if field is None or typing.get_args(field.annotation) != (name,) or field.default != name:
        raise ValueError(f"{config.__name__}.method must be Literal[{name!r}] = {name!r}")
    unknown = set(method.needs) - REFERENCE_QUANTITIES
    if unknown:
        raise ValueError(f"method {name!r} needs unknown reference quantities {unknown}")
    REGISTRY[name] = (config, method)


for _method in BUILTIN_METHODS:
    _register(_method)

METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)

if typing.TYPE_CHECKING:
    # a union built at run time is no type a checker can read; to it, any config is one
    MethodConfig = BaseMethodConfig
else:
    MethodConfig = Annotated[
        Union[tuple(cfg for cfg, _ in REGISTRY.values())],  # noqa: UP007
        Field(discriminator="method"),
    ]
"""Any method's config, discriminated by ``method``."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(MethodConfig)


def parse_method_config(data: dict[str, Any]) -> BaseMethodConfig:
    """Validate ``data`` (must carry ``method``) into that method's config; raises
    ``pydantic.ValidationError`` on unknown names, unknown fields or bad values."""
    return _ADAPTER.validate_python(data)  # type: ignore[no-any-return]


def default_config(name: str) -> BaseMethodConfig:
    """The named method's config with its defaults; ``KeyError`` on unknown names."""
    if name not in REGISTRY:
        raise KeyError(f"unknown unlearning method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return REGISTRY[name][0]()


def get_method(config: BaseMethodConfig) -> Method:
    """The method implementation for ``config``."""
    name = getattr(config, "method", None)
    if name not in REGISTRY:
        raise KeyError(f"unknown unlearning method {name!r}")
    return REGISTRY[name][1](config)


__all__ = [
    "IDK_ANSWERS",
    "METHOD_NAMES",
    "REFERENCE_QUANTITIES",
    "REGISTRY",
    "BaseMethodConfig",
    "Forward",
    "Method",
    "MethodConfig",
    "ReferenceCache",
    "StepInputs",
    "default_config",
    "get_method",
    "parse_method_config",
    "run_forward",
]
