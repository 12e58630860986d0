"""``python -m adapters.model [MODELS_DIR]``: regenerate the shipped calibration (after a change of the
default model, the prompt or the recipe; a test says when it is stale). With a prepared ``MODELS_DIR``
its fp32 model answers; else the GGUF is converted into a temporary directory first."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from adapters.model._calibration import write_shipped
from adapters.model._default_model import convert_gguf, gguf_path, is_prepared, plain_model_dir


def main(argv: list[str]) -> None:
    """Write the shipped calibration file and print its path."""
    if argv and is_prepared(plain_model_dir(Path(argv[0]))):
        print(write_shipped(plain_model_dir(Path(argv[0])), gguf_path()))
        return
    with tempfile.TemporaryDirectory(prefix="loopbot-plain-") as tmp:
        convert_gguf(Path(tmp))
        print(write_shipped(Path(tmp), gguf_path()))


if __name__ == "__main__":
    main(sys.argv[1:])
