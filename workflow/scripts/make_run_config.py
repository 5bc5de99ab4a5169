"""Write one job's run config (params.run) with the study's MLflow parent run id filled in."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821
sys.path.append(str(snakemake.scriptdir))  # workflow_io.py, the workflow's glue  # noqa: F821

from workflow_io import write_run_config  # noqa: E402

write_run_config(snakemake.params.run, snakemake.input.parent, snakemake.output.yaml)  # noqa: F821
