"""Running tiles on Dask: clusters, tasks, planning."""
