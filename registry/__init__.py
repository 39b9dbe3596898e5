"""The MLflow adapter layer: where runs are tracked, the shipped generator as a pyfunc model, its
registered versions and the `champion` alias. No Prefect here, and `t2v/` never imports this.

The names below import nothing, so the CLI can show them in `--help` without loading MLflow.
"""

REGISTERED_MODEL = "t2v-generator"  # the registered model every training adds a version to
CHAMPION = "champion"  # the alias of the version that is shipped; moved only by `versions.set_champion`
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
