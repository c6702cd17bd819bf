"""RFC 7386 JSON merge patches: the smallest status write that turns what is stored into what was decided.

`json-merge-patch` is the implementation (the test API server applies patches with the same
library); lists are replaced whole, `None` deletes a key.
"""

from __future__ import annotations

from typing import Any, cast

import json_merge_patch

JSON = dict[str, Any]


def merge_patch(old: JSON, new: JSON) -> JSON:
    """The merge patch that turns `old` into `new` ({} when nothing changed)."""
    return cast(JSON, json_merge_patch.create_patch(old, new))
