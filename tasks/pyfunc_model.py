"""Kept only so that generator versions registered before the wrapper moved to `registry.pyfunc` still
load: MLflow pickled them by reference to `tasks.pyfunc_model.GeneratorModel`."""

from registry.pyfunc import GeneratorModel  # noqa: F401
