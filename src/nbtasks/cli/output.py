"""What the commands share: JSON on stdout, and an error that ends a command (exit 1)."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import click


def _finite(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (inf, nan) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit(data: Any) -> None:
    click.echo(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False))


def fail(exc: BaseException) -> NoReturn:
    raise click.ClickException(str(exc))
