"""The run layer: one module per result kind, each with its config, ``run_<kind>(config) ->
Result`` and ``ensure_<kind>`` (reuse or run and save). :mod:`epsl.runs.context` loads a
checkpoint and its examples with the checks every run needs, and builds every provenance."""
