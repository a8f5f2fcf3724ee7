"""How ``metadata_props`` (string to string) carry JSON values: class names, mean, std, sizes.

A plain string is written as it is, so other tools see ``author = me``; any other value, and a
string that would itself read as JSON (``"3"``), is written JSON-encoded. Reading parses each
entry as JSON and keeps the raw string when it is not JSON, so every JSON-able value comes back
equal, and a foreign file's free text stays text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import OnnxExportError


def encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Each key its own ``metadata_props`` entry; non-string values JSON-encoded."""
    encoded = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise OnnxExportError(f"metadata keys must be strings, got {key!r}")
        if isinstance(value, str) and not _reads_as_json(value):
            encoded[key] = value
            continue
        try:
            encoded[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise OnnxExportError(
                f"metadata[{key!r}] = {value!r} cannot be written: values must be strings or "
                f"JSON-able (lists, numbers, dicts, finite floats) ({e})"
            ) from None
    return encoded


def decode_metadata(props: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The inverse of ``encode_metadata`` over ``(key, value)`` pairs."""
    return {key: _decode(value) for key, value in props}


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _reads_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
