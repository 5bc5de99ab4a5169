"""Build results/report.html (salt.figures.report.main), then attach each study's table, the figures,
the claims and the report to the study's MLflow parent run (workflow_io.log_study_artifacts, beside this script)."""

import json
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
REPO = Path(snakemake.scriptdir).parents[1]  # noqa: F821
sys.path.insert(0, str(REPO))  # the repository (salt may not be installed)
sys.path.append(str(snakemake.scriptdir))  # workflow_io.py, the workflow's glue  # noqa: F821

from salt.figures.report import main  # noqa: E402
from workflow_io import log_study_artifacts  # noqa: E402

main(  # noqa: F821
    figures=list(snakemake.input.png),  # noqa: F821
    captions_dir=snakemake.params.captions,  # noqa: F821
    table_md=snakemake.input.table_md,  # noqa: F821
    manifest=snakemake.input.manifest,  # noqa: F821
    out=snakemake.output.html,  # noqa: F821
    title=snakemake.params.title,  # noqa: F821
    claims_md=snakemake.input.claims_md,  # noqa: F821
    readme=REPO / "README.md",
    replication_md=snakemake.input.replication_md,  # noqa: F821
    warmups_md=snakemake.input.warmups_md,  # noqa: F821
)
log_study_artifacts(
    json.loads(Path(snakemake.input.manifest).read_text()),  # noqa: F821
    figures=list(snakemake.input.png) + list(snakemake.input.pdf),  # noqa: F821
    claims=[snakemake.input.claims_md, snakemake.input.claims_json, snakemake.input.replication_md,  # noqa: F821
            snakemake.input.replication_json, snakemake.input.warmups_md],  # noqa: F821
    report_html=snakemake.output.html,  # noqa: F821
)
