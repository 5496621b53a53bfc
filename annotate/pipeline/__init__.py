"""``annotate run``: the plan, one driver over two executors, one store.

:mod:`~annotate.pipeline.run` drives every run; :mod:`~annotate.pipeline.local`
annotates on this machine, :mod:`~annotate.pipeline.cluster` on a Dask
cluster; both hand finished recordings to the driver, which alone writes
:mod:`~annotate.pipeline.store`, and reports through :mod:`~annotate.pipeline.progress`.
"""
