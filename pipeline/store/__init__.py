"""The pipeline's MLflow tracking and registry calls, split by concern: location, connection, runs, registry.

location: where the store is (its URI, its identity, its artifacts); connection: opening it and the runs' life
cycle under signals, network faults and dead processes; runs: the execution's runs and what they log;
registry: logged models, versions, aliases and their history. Outside it, MLflow is met only where it loads
or serves a model (serving.py, the serve and ui commands) and where an error of its is named (records.py).
"""
