"""The COS XML API front-end: an ASGI application served by hypercorn inside the daemon."""
