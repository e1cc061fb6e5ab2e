"""``python -m vsrflow.models.inspect WEIGHTS``: load a weights file, print its scale as JSON.

Run by :func:`vsrflow.models.facts.inspect_in_child` so that the flow process learns a user
model's scale (and that the file is a model at all) without importing torch itself. Exit 2
with the loader's one-line message on stderr when the file is no usable model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vsrflow.errors import VsrflowError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vsrflow.models.inspect WEIGHTS", file=sys.stderr)
        return 2
    from vsrflow.models.loader import descriptor_from_state_dict, read_state_dict

    path = Path(argv[0])
    try:
        descriptor = descriptor_from_state_dict(read_state_dict(path), source=str(path))
    except VsrflowError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    facts = {"scale": int(descriptor.scale), "architecture": str(descriptor.architecture.id)}
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
