"""Build results/report.html from the figures, their captions and the table (salt.figures.report.main)."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # the repository (salt may not be installed)  # noqa: F821

from salt.figures.report import main  # noqa: E402

main(  # noqa: F821
    figures=list(snakemake.input.png),  # noqa: F821
    captions_dir=snakemake.params.captions,  # noqa: F821
    table_md=snakemake.input.table_md,  # noqa: F821
    manifest=snakemake.input.manifest,  # noqa: F821
    out=snakemake.output.html,  # noqa: F821
    title=snakemake.params.title,  # noqa: F821
)
