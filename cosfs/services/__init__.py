"""The daemon's background and on-demand services: replication, inventory, origin pull.

Each service writes objects through the same key-level core and data path as the
front-ends (:mod:`cosfs.keyspace`, :mod:`cosfs.objects`), so the resolver decides every
object's encryption. Front-ends never import a service: the composition root
(:mod:`cosfs.mount`) builds the services and hands front-ends the callables they need.
"""
