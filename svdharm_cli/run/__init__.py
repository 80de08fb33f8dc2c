"""Running a command: options as frozen values, one input's transform, the executors that
run many, and the run log.

``options`` (what is read, drawn, written), ``results`` (per-file results, statuses and the
failure boundary), ``worker`` (one input in, its files' results out), ``executors/`` (where
tasks run: this process, a local pool, a Dask cluster, a GPU), ``fitting`` and ``sampling``
(the tasks of fit-reference and compare), ``resume`` (``--skip-existing``), ``runlog`` (the
JSON run log) and ``jobs`` (one command from start to end).
"""
