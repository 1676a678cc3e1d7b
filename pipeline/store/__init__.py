"""Every MLflow tracking and registry call of the pipeline, split by concern: location, connection, runs, registry.

location: where the store is (its URI, its identity, its artifacts); connection: opening it and the runs' life
cycle under signals, network faults and dead processes; runs: the execution's runs and what they log;
registry: logged models, versions, aliases and their history.
"""
