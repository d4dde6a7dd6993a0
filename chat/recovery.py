"""Start-up recovery: answers a dead process left `streaming` become `interrupted`.

Django's ASGI app has no lifespan and a killed process runs no shutdown code, so the
next process to start (and every read of such a message) settles them instead.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections

from chat import services

logger = logging.getLogger(__name__)


def _sweep() -> None:
    try:
        swept = services.messages_sweep_orphans()
        if swept:
            logger.info("marked %d orphaned answers interrupted", swept)
    except Exception:
        # A database that is not ready yet must not stop the server from starting;
        # reads settle each message anyway.
        logger.warning("start-up sweep failed", exc_info=True)
    finally:
        close_old_connections()


def sweep_in_background() -> None:
    threading.Thread(target=_sweep, name="chat-recovery", daemon=True).start()
