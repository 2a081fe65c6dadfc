"""The stages of ``ops/train_demo_model.py``, one module each (imported as ``demo_model``: the script's own
directory is first on ``sys.path``).

:mod:`.corpus` (the standard library's docstrings and comments, and chat pairs made from them),
:mod:`.tokenizer` (the byte-level BPE and the chat template), :mod:`.network` (the torch BitNet b1.58 model),
:mod:`.training` (the training loop and evaluation), :mod:`.export` (transformers' packed checkpoint),
:mod:`.checks` (transformers and the project's engine on the exported directory).
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet helpers are @torch.compile'd

__all__ = ["log"]


def log(msg: str) -> None:
    """Print a progress message at once."""
    print(msg, flush=True)
