"""What ``runs.sql`` returns: a result detached from the store, in a sealed database."""

from __future__ import annotations

from typing import Any

Row = tuple[Any, ...]
# No file, no extension to install or load, and no way to change that.
SEALED: dict[str, Any] = {
    "threads": 1,
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def detached(relational: Any, described: list[tuple[str, str]], rows: list[Row]) -> Any:
    """A relation over ``rows`` in a new sealed in-memory database."""
    conn = relational.connect(":memory:", config=dict(SEALED))
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET lock_configuration = true")
    conn.execute(
        "CREATE TABLE result ("
        + ", ".join(f"c{i} {kind}" for i, (_, kind) in enumerate(described))
        + ")"
    )
    if rows:
        appender = conn.appender("result")
        appender.append_rows(rows)
        appender.flush()
    names = ", ".join(
        f'c{i} AS "{name.replace(chr(34), chr(34) * 2)}"' for i, (name, _) in enumerate(described)
    )
    return conn.sql(f"SELECT {names} FROM result")
