"""Draw Figures 1-7 from the tables and log them to the parent runs (salt.figures.figures.main)."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821

from salt.figures.figures import main  # noqa: E402

main(Path(snakemake.input.manifest).parent, snakemake.params.out, log_to_mlflow=True)  # noqa: F821
