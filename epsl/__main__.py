"""``python -m epsl``, and ``torchrun --nproc-per-node N -m epsl ...``: the ``epsl`` command."""

from epsl.cli.main import main

main(prog_name="epsl")
