"""``python -m epsl``, and ``torchrun --nproc-per-node N -m epsl ...``: the ``epsl`` command."""

from epsl.cli.entry import main

main()
