"""The MLflow adapter layer: where runs are tracked, the shipped generator as a pyfunc model, its
registered versions and the `champion` alias. No Prefect here, and `t2v/` never imports this."""
