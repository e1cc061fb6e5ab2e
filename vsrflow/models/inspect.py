"""``python -m vsrflow.models.inspect [--face] WEIGHTS``: load a weights file, print its scale
and architecture as JSON.

Run by :func:`vsrflow.models.facts.inspect_in_child` so that the flow process learns a user
model's scale (and that the file is a model at all; with ``--face``, a face restorer we can
run) without importing torch itself. When the file is no usable model: exit 2, the loader's
error class and one-line message as JSON on stdout (so the flow raises the same class), the
message on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vsrflow.errors import VsrflowError


def main(argv: list[str]) -> int:
    face = argv[:1] == ["--face"]
    args = argv[1:] if face else argv
    if len(args) != 1:
        print("usage: python -m vsrflow.models.inspect [--face] WEIGHTS", file=sys.stderr)
        return 2
    from vsrflow.models.loader import descriptor_from_state_dict, read_state_dict

    path = Path(args[0])
    try:
        state = read_state_dict(path)
        if face:
            from vsrflow.faces.restore import face_descriptor_from_state_dict

            descriptor = face_descriptor_from_state_dict(state, source=str(path))
        else:
            descriptor = descriptor_from_state_dict(state, source=str(path))
    except VsrflowError as exc:
        message = str(exc).replace("\n", " ")
        print(json.dumps({"error": type(exc).__name__, "message": message}))
        print(message, file=sys.stderr)
        return 2
    facts = {"scale": int(descriptor.scale), "architecture": str(descriptor.architecture.id)}
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
