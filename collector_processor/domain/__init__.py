"""The sidecar's vocabulary and rules, at the ground of the house: what every other folder speaks.

Budgets and scopes (``budgets``), the commands and answers of the ledger (``types``), the pure
decision rules every store applies inside its atomic operations (``decisions``), calendar periods
(``periods``), exact money (``money``), usage reports (``usage``) and the clock (``clock``). Nothing
here does I/O, and nothing here imports from the rest of ``collector_processor`` but ``errors``.
"""
