"""Putting work on Dask: one executor for ingest and run, the tasks workers run, clusters.

Modules, low to high: ``executor`` (runs tasks on a client or local threads),
``cluster`` (getting a client), ``preflight`` (can every worker see the paths),
``compute`` and ``tasks`` (what workers run), ``models`` (the model as a file,
its facts from a worker), then ``ingest`` and ``run``.
"""
