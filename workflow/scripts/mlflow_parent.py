"""Create or find again the study's MLflow parent run; write its id to output.json."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821
sys.path.append(str(snakemake.scriptdir))  # workflow_io.py, the workflow's glue  # noqa: F821

from workflow_io import ensure_parent_run  # noqa: E402

ensure_parent_run(snakemake.params.tracking, snakemake.params.study, snakemake.output.json)  # noqa: F821
