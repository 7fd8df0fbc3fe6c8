"""``python -m dservices.mediagen``: serves MRLs where ``CGN_LISTEN`` says."""

from __future__ import annotations

import asyncio
import os

from cgn_common.logs import setup_logging
from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.server import serve


def main() -> None:
    """Entry point: reads ``CGN_LISTEN`` and the ``CGN_DSERVICE_MEDIAGEN_*`` settings."""
    config = MediaGenConfig.from_env()
    setup_logging("mediagen", config.log_level)
    asyncio.run(serve(os.environ.get("CGN_LISTEN", "127.0.0.1:8000"), config))


if __name__ == "__main__":
    main()
