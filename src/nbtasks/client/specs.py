"""A trigger's runs as ``RunSpec``s: options checked and payloads serialised.

Everything that can fail on bad input (options, dill) happens here, in the caller's thread,
before the engine sees the work: a bad trigger creates no run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nbtasks.client.config import version_of
from nbtasks.core import context as _context
from nbtasks.core.durations import parse_delay, parse_duration, utcnow
from nbtasks.core.ids import new_id
from nbtasks.core.models import BatchItem
from nbtasks.core.options import check_resources, coerce_queue
from nbtasks.core.serialize import dumps_checked, preview
from nbtasks.engine.state import RunSpec

if TYPE_CHECKING:
    from nbtasks.client.task import Task

OPTIONS = (
    "delay", "ttl", "idempotency_key", "idempotency_key_ttl", "idempotency_key_scope",
    "tags", "metadata", "max_attempts", "max_duration", "queue", "resources",
)  # fmt: skip
DEFAULT_KEY_TTL_S = 30 * 86400.0


def _check_tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    tags = (value,) if isinstance(value, str) else value
    if not isinstance(tags, (list, tuple, set, frozenset)) or not all(
        isinstance(t, str) and 0 < len(t) <= 128 for t in tags
    ):
        raise ValueError(
            f"tags={value!r} is not valid: use a string or a list of 1-128 char strings"
        )
    return tuple(tags)


def _check_metadata(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"metadata={value!r} is not valid: use a dict of JSON values")
    bad = _context.find_nonfinite(value, "metadata")
    if bad is not None:
        raise ValueError(
            f"metadata={value!r} is not valid: {bad[0]} is {bad[1]!r}; {_context.NONFINITE_HINT}"
        )
    try:
        return json.loads(json.dumps(value))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata={value!r} is not valid: {exc}") from None


def _check_max_attempts(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_attempts={value!r} is not valid: use an integer >= 1")
    return value


def _check_key(options: dict[str, Any]) -> tuple[str | None, float | None]:
    """The idempotency key, scoped to the parent run inside a task, and its ttl."""
    key = options.get("idempotency_key")
    scope = options.get("idempotency_key_scope")
    if scope not in (None, "run", "global"):
        raise ValueError(f"idempotency_key_scope={scope!r} is not valid: use 'run' or 'global'")
    ttl = parse_duration("idempotency_key_ttl", options.get("idempotency_key_ttl"))
    if key is None:
        return None, None
    if not isinstance(key, str) or not 0 < len(key) <= 512:
        raise ValueError(f"idempotency_key={key!r} is not valid: use a string of 1-512 chars")
    if _context.in_task() and scope != "global":
        key = f"{_context.context().run_id}/{key}"
    return key, DEFAULT_KEY_TTL_S if ttl is None else ttl


def spec_options(task: Task[Any, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """Validate trigger options into ``RunSpec`` fields; a bad one names itself and its value."""
    for name in options:
        if name not in OPTIONS:
            raise TypeError(
                f"unknown trigger option {name}={options[name]!r}; the options are: "
                + ", ".join(OPTIONS)
            )
    queue = coerce_queue(options.get("queue"))
    key, key_ttl = _check_key(options)
    return {
        "tags": _check_tags(options.get("tags")),
        "metadata": _check_metadata(options.get("metadata")),
        "max_attempts": _check_max_attempts(options.get("max_attempts")),
        "max_duration_s": parse_duration("max_duration", options.get("max_duration")),
        "queue": queue.name if queue else None,
        "concurrency_limit": queue.concurrency_limit if queue else None,
        "delay_until": parse_delay("delay", options.get("delay"), utcnow()),
        "ttl_s": parse_duration("ttl", options.get("ttl")),
        "idempotency_key": key,
        "idempotency_key_ttl_s": key_ttl,
        "resources": check_resources(options.get("resources")),
    }


def make_specs(
    task: Task[Any, Any] | None,
    items: Iterable[Any],
    options: dict[str, Any],
    batch_id: str | None = None,
    task_id: str | None = None,
) -> list[RunSpec]:
    """RunSpecs for a trigger: options checked and payloads serialised, before any run."""
    common = spec_options(task, options)
    tv = version_of(task) if task is not None else None
    specs = []
    now = utcnow()
    for i, item in enumerate(items):
        fields = common
        payload = item
        if isinstance(item, BatchItem):
            fields = spec_options(task, {**options, **item.options})
            payload = item.payload
        what = "payload" if batch_id is None else f"items[{i}]"
        data = dumps_checked(what, payload)
        specs.append(
            RunSpec(
                id=new_id("run"),
                task_id=task.id if task is not None else str(task_id),
                task=tv,
                payload=data,
                payload_preview=preview(payload),
                created_at=now,
                batch_id=batch_id,
                **fields,
            )
        )
    return specs
