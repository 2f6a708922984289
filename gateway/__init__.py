"""Herald: a multi-channel push gateway with priority arbitration.

Package map (each module is one concern; see README "Code map"):

- ``domain``: the vocabulary (categories, channels, outcomes, reasons) as plain enums.
- ``errors``: the exception tree and its one mapping to gRPC status codes.
- ``policy``: policy files -> one immutable, validated ``Policy``; hot reload.
- ``profiles``: user profiles, RFM tiers, WeChat customer-service windows.
- ``store``: the state store interface, its in-memory and Redis implementations, and
  the one module of Redis key names.
- ``core``: request validation, classification, decision and routing (pure), and the
  pipeline that runs them against the store.
- ``delivery``: the queue between decisions and channel adapters.
- ``api``: the gRPC servicers, authentication and the server.
- ``cli``: the ``herald`` command.
"""

__version__ = "0.1.0"
