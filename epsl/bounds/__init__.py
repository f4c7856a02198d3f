"""Proofs: a network as the ops the bounds support (:mod:`epsl.bounds.trace`), sound bounds on
its outputs over an ε-ball (:mod:`epsl.bounds.crown`: IBP and CROWN), the certified radius
ε_cert per example (:mod:`epsl.bounds.radius`) and the exact minimum by MILP
(:mod:`epsl.bounds.exact`)."""
