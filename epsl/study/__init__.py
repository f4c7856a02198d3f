"""The whole study as data: a preset (:mod:`epsl.study.config`, TOML files in
``epsl/study/presets/``) and the stages that run it (:mod:`epsl.study.run`)."""
