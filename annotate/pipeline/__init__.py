"""``annotate run``: segments, feature jobs, the annotator, the resumable store, the runs.

:mod:`~annotate.pipeline.local` runs on this machine, :mod:`~annotate.pipeline.cluster`
on a Dask cluster; both report through :mod:`~annotate.pipeline.progress`.
"""
