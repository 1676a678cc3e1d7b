"""One module per command, each an `execute()`: read params and inputs, call the core, write outputs, record them.

No stage imports another stage: what two stages share lives in a module named for what it is (workspace,
records, lineage, scoring, reporting, the store). `run`, every stage in order, is pipeline/flow.py.
"""
