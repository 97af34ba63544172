"""Integrations with other tools, at the edge of evomerge: the core never imports them.

Each integration is an optional module of its own (``evomerge.integrations.tune``: Ray Tune),
as Optuna keeps ``optuna_integration`` apart. An integration may use every layer below it (the
run wiring, the search, the worker that merges and scores a candidate); nothing below imports
it. Importing this package loads no integration.
"""
