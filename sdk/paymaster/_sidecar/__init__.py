"""The client side of the budget sidecar: transport, circuit breaker, replay journal, leases and the
per-run session the executor consults. Private: the public surface is ``paymaster.budget``.

Everything here may import grpc and the generated API; ``paymaster.budget`` imports this package only
when a ``SidecarBudget`` is built, so ``import paymaster`` never pays for it.
"""
