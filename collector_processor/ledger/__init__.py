"""The ledger: what orchestrates the store for every receiver, and the sweeper that tidies between requests.

``Ledger`` (in ``ledger``) is the one entry point for everything that reads or changes budgets and
spend: it validates what a store should never see, fills defaults, reads the clock and hands each
operation to the ``LedgerStore`` as one atomic call. ``Sweeper`` (in ``sweeper``) releases expired
reservations and prunes old records between requests. Nothing here imports a receiver or ``*_pb2``.
"""

from __future__ import annotations

from collector_processor.ledger.ledger import Ledger, LedgerSettings
from collector_processor.ledger.sweeper import Sweeper

__all__ = ["Ledger", "LedgerSettings", "Sweeper"]
