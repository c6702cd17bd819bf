"""RFC 7386 merge patches (patching.merge_patch): the smallest status write from stored to decided."""

from __future__ import annotations

from typing import Any

import json_merge_patch

from kubetune_operator.patching import merge_patch

JSON = dict[str, Any]


def test_a_nested_change_patches_only_the_changed_leaf() -> None:
    old: JSON = {"phase": "Running", "progress": {"step": 1, "totalSteps": 100, "eta": "1m"}}
    new: JSON = {"phase": "Running", "progress": {"step": 2, "totalSteps": 100, "eta": "1m"}}
    assert merge_patch(old, new) == {"progress": {"step": 2}}


def test_a_deleted_key_becomes_null() -> None:
    old: JSON = {"phase": "Failed", "error": {"reason": "x", "exitCode": 12}, "progress": {"eta": "1m", "step": 3}}
    new: JSON = {"phase": "Failed", "progress": {"step": 3}}
    assert merge_patch(old, new) == {"error": None, "progress": {"eta": None}}


def test_lists_are_replaced_whole() -> None:
    conditions = [{"type": "SpecValid", "status": "True"}, {"type": "Running", "status": "True"}]
    changed = [conditions[0], {"type": "Running", "status": "False"}]
    assert merge_patch({"conditions": conditions}, {"conditions": changed}) == {"conditions": changed}
    assert merge_patch({"checkpoints": [1, 2]}, {"checkpoints": [2]}) == {"checkpoints": [2]}
    assert merge_patch({"checkpoints": [1]}, {}) == {"checkpoints": None}


def test_no_change_is_an_empty_patch() -> None:
    status: JSON = {"phase": "Running", "conditions": [{"type": "Running"}], "progress": {"step": 4}}
    assert merge_patch(status, status) == {}
    assert merge_patch({}, {}) == {}


def test_applying_the_patch_gives_the_new_status() -> None:
    old: JSON = {"phase": "Running", "error": {"reason": "x"}, "progress": {"step": 1, "eta": "1m"}, "list": [1]}
    new: JSON = {"phase": "Succeeded", "progress": {"step": 2}, "list": [1, 2], "artifacts": {"outputUri": "s3://o/"}}
    assert json_merge_patch.merge(old, merge_patch(old, new)) == new
