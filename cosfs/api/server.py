"""The HTTP server of the XML API: hypercorn's trio worker inside the daemon's nursery.

:func:`hypercorn_config` turns the ``api:`` section of the configuration
(:class:`cosfs.config.ApiConfig`) into a :class:`hypercorn.config.Config`;
:func:`serve` runs an ASGI application with it until ``shutdown_trigger``
returns, then stops gracefully. Use it with ``nursery.start``: it reports
the bound addresses (``["http://127.0.0.1:8360"]``) once the socket listens.

Limits that keep abusive clients cheap (all from the configuration):

* ``max_header_bytes``: the request line and headers must fit, else the
  connection gets 431/400 from the HTTP parser before any application code;
* ``idle_timeout``: a connection that sends nothing for that long, between
  requests, while sending headers or in the middle of a body, is closed
  (hypercorn's ``keep_alive_timeout`` and ``read_timeout``). A stalled
  client costs one trio task and one socket, never a thread;
* bodies go to the application in chunks of at most :data:`RECV_SIZE` through
  a bounded queue (``max_app_queue_size``), so a fast sender waits for the
  store and a connection buffers at most ``APP_QUEUE * RECV_SIZE`` bytes.

Graceful stop: once the trigger fires, no new connection is accepted, idle
keep-alive connections are closed, and requests in progress get up to
:func:`graceful_seconds` to finish; the caller then commits the data path.
Runs on the trio thread.
"""

import logging

log = logging.getLogger(__name__)

#: at least this long for requests in progress when the daemon stops
MIN_GRACEFUL_SECONDS = 30.0

#: Bytes hypercorn reads from a socket at once (its own default is 64 KiB). Every read
#: becomes one HTTP data event that crosses h11, hypercorn and the application's queue;
#: with 1 MiB reads a 1 GiB boto3 upload took 7.6-9.6 daemon CPU seconds instead of
#: 9.4-10.0 (145-174 MB/s against 139-151, three alternating pairs). Hypercorn has no
#: setting for it, only this module value.
RECV_SIZE = 1024 * 1024

#: data events queued per request between hypercorn and the application (so at most
#: 4 MiB of a body waits in memory per request)
APP_QUEUE = 4


def _tune_hypercorn():
    from hypercorn.trio import tcp_server
    if isinstance(getattr(tcp_server, "MAX_RECV", None), int):
        tcp_server.MAX_RECV = RECV_SIZE
    else:  # a hypercorn without it: its default reads, slower but correct
        log.debug("hypercorn.trio.tcp_server has no MAX_RECV: socket reads keep its default")


def graceful_seconds(api):
    return max(MIN_GRACEFUL_SECONDS, api.idle_timeout)


def hypercorn_config(api, bind=None):
    """A hypercorn Config for ``api`` (an :class:`cosfs.config.ApiConfig`); ``bind``
    (``unix:PATH``) listens there instead, without TLS (the daemon's control socket)."""
    from hypercorn.config import Config

    cfg = Config()
    cfg.bind = [bind or api.listen]
    cfg.h11_max_incomplete_size = api.max_header_bytes
    cfg.h2_max_header_list_size = api.max_header_bytes
    cfg.keep_alive_timeout = api.idle_timeout
    cfg.read_timeout = api.idle_timeout
    cfg.graceful_timeout = graceful_seconds(api)
    cfg.include_server_header = False  # the application names itself
    cfg.accesslog = None  # the application logs each request with its id
    cfg.errorlog = logging.getLogger(__name__ + ".http")
    cfg.max_app_queue_size = APP_QUEUE
    if api.tls_cert is not None and bind is None:
        cfg.certfile = str(api.tls_cert)
        cfg.keyfile = str(api.tls_key)
    return cfg


async def serve(app, api, *, shutdown_trigger, task_status=None, bind=None):
    """Serve ``app`` as ``api`` says (or on ``bind``, see :func:`hypercorn_config`) until
    ``shutdown_trigger()`` returns, then stop gracefully. ``task_status.started``
    receives the bound URLs."""
    import trio
    from hypercorn.trio import serve as hypercorn_serve

    cfg = hypercorn_config(api, bind)
    _tune_hypercorn()
    try:
        await hypercorn_serve(app, cfg, shutdown_trigger=shutdown_trigger,
                              task_status=task_status or trio.TASK_STATUS_IGNORED)
    except OSError as exc:
        from ..errors import CosfsError
        raise CosfsError("cannot serve the API on %s: %s" % (bind or api.listen,
                                                              exc.strerror or exc),
                         errno=exc.errno, code="InvalidConfig") from None
    log.info("the API on %s has stopped", bind or api.listen)
