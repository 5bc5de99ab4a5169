"""Write one job's run config (params.run) with the study's MLflow parent run id filled in."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)

from salt.figures.workflow_io import write_run_config  # noqa: E402

write_run_config(snakemake.params.run, snakemake.input.parent, snakemake.output.yaml)  # noqa: F821
