"""Proofs: sound bounds on a network's outputs over an ε-ball (:mod:`epsl.bounds.crown`: IBP
and CROWN) and the certified radius ε_cert per example, with the exact minimum by MILP
(:mod:`epsl.bounds.radius`)."""
