"""The budget API receiver: the gRPC service that answers allow / deny / downgrade, and the factory
that wires a whole sidecar from its config.

``server`` is the factory (``create_sidecar``, ``Sidecar``, ``main``); ``servicer`` the thin gRPC
service; ``convert`` the one place where proto meets domain; ``batching`` lets concurrent requests
share a store transaction; ``protogen`` regenerates the committed gRPC code from ``proto/``.
Nothing here is imported on ``import collector_processor.api``, so that ``protogen`` runs before the
code it generates exists.
"""
