"""The on-disk contract between stages: what each stage writes and how the next reads it.

numpy and pyarrow only (no Spark, torch, Ray or Prefect), so the Spark jobs, the trainers
and the flow all build on it without depending on each other:

  files       URIs on any pyarrow filesystem, JSON records, atomic publish (temp, then rename)
  manifest    stage manifests and the skip-if-unchanged rule
  index       the index stage's Parquet layout and its dense readers
  runs        a training run's directory and its ``run.json`` record
  flow_state  the flow's own step records (evaluate, register)
"""
