"""Proofs: a network as the ops the bounds support (:mod:`epsl.certify.trace`), sound bounds on
its outputs over an ε-ball (:mod:`epsl.certify.crown`: IBP and CROWN), the certified radius
ε_cert per example (:mod:`epsl.certify.radius`) and the exact minimum by MILP
(:mod:`epsl.certify.exact`)."""
