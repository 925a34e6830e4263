"""The console's HTTP server: hypercorn's trio worker inside the daemon's nursery.

:func:`serve` runs the console application on ``console.listen`` (a
:class:`cosfs.config.ConsoleConfig`) until ``shutdown_trigger`` returns; use
it with ``nursery.start``, which receives the bound URLs once the socket
listens. The console has its own listener beside the API's: the API's paths
are bucket names (``/<bucket>/<key>``), so pages could not share them, and a
separate origin keeps the console's cookies away from API clients.

Limits: request heads of at most :data:`MAX_HEADER_BYTES`, idle connections
closed after :data:`IDLE_TIMEOUT` seconds (an upload in progress is never
idle), requests in progress get :data:`GRACEFUL_SECONDS` to finish at stop.
Runs on the trio thread.
"""

import logging

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT = 60.0
GRACEFUL_SECONDS = 10.0


def hypercorn_config(console):
    from hypercorn.config import Config

    cfg = Config()
    cfg.bind = [console.listen]
    cfg.h11_max_incomplete_size = MAX_HEADER_BYTES
    cfg.keep_alive_timeout = IDLE_TIMEOUT
    cfg.read_timeout = IDLE_TIMEOUT
    cfg.graceful_timeout = GRACEFUL_SECONDS
    cfg.include_server_header = False
    cfg.accesslog = None  # the application logs each request
    cfg.errorlog = logging.getLogger(__name__ + ".http")
    cfg.max_app_queue_size = 8
    return cfg


async def serve(app, console, *, shutdown_trigger, task_status=None):
    """Serve ``app`` on ``console.listen`` until ``shutdown_trigger()`` returns; raises
    :class:`cosfs.errors.CosfsError` when the address cannot be bound."""
    import trio
    from hypercorn.trio import serve as hypercorn_serve

    try:
        await hypercorn_serve(app, hypercorn_config(console), shutdown_trigger=shutdown_trigger,
                              task_status=task_status or trio.TASK_STATUS_IGNORED)
    except OSError as exc:
        from ..errors import CosfsError
        raise CosfsError("cannot serve the console on %s: %s" % (console.listen,
                                                                  exc.strerror or exc),
                         errno=exc.errno, code="InvalidConfig") from None
    log.info("the console on %s has stopped", console.listen)
