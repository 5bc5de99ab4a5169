"""Draw Figures 1-7 from the tables (salt.figures.figures.main); the report step logs them to MLflow."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821

from salt.figures.figures import main  # noqa: E402

main(Path(snakemake.input.manifest).parent, snakemake.params.out)  # noqa: F821
