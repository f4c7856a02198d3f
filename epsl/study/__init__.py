"""The whole study as data: a preset (:mod:`epsl.study.preset`, read and written by
:mod:`epsl.study.config`; TOML files in ``epsl/study/presets/``) and the stages that run it
(:mod:`epsl.study.run`: ``reproduce``; :mod:`epsl.study.stages` per model,
:mod:`epsl.study.grid` over the grid)."""
