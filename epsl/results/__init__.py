"""Results on disk: :mod:`epsl.results.records` owns every result (fixed names, schema
versions, provenance, reuse) and :mod:`epsl.results.files` writes every file (atomically, one
run per folder). Torch-free, so that :mod:`epsl.analysis` reads through it."""
