"""A user's own model factory, loaded by tests with ``--model tests.factories:digits_cnn``."""

from epsl.models import Classifier, checkpoint, create_model


def digits_cnn() -> Classifier:
    return create_model("small-cnn", **checkpoint.model_kwargs_for("digits"))


def broken_factory() -> Classifier:
    raise RuntimeError("boom")


NOT_A_FACTORY = "just a string"
