"""Ids are prefixed, unique, and sort in creation order."""

from __future__ import annotations

from nbtasks.core.ids import new_id


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_id("run") for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.startswith("run_") and len(i) == len("run_") + 19 for i in ids)


def test_prefixes_keep_kinds_apart() -> None:
    assert new_id("attempt").startswith("attempt_")
    assert new_id("batch").startswith("batch_")
