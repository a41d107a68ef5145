"""Search: processes, the registry of algorithms and scorers, batching, collection, evaluation, sweeps."""
