"""Collect every run's logged metrics into the tables (salt.figures.aggregate.main)."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821

from salt.figures.aggregate import main  # noqa: E402

main(snakemake.params.manifest, snakemake.params.out)  # noqa: F821
