"""``python -m bitnet_actor``: the same as the ``bitnet-actor`` command."""

from __future__ import annotations

import trio_asyncio  # noqa: F401  # first: some libraries capture asyncio at import

from bitnet_actor.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
