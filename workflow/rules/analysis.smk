# the file names are the package's (salt.figures.registry): the rules declare what the scripts write
TABLES = {key: str(path) for key, path in table_paths(PLAN.path("tables_dir")).items()}
REPLICATION = {key: str(path) for key, path in replication_paths(PLAN.path("tables_dir")).items()}
FIGURES_DIR = PLAN.path("figures_dir")


localrules:
    mlflow_parent,
    make_run_config,
    aggregate,
    replication,
    figures,
    report,


rule aggregate:
    """Collect the logged metrics of every run (metrics.jsonl, evaluation metrics.json + problems.jsonl) into
    tables with paired differences from the baseline, and measure the published claims."""
    input:
        done=all_train_done(),
        evals=all_eval_metrics(),
        proxy=all_proxy(),
        warmups=all_warmup_metrics(),
    output:
        steps=TABLES["steps"],
        evals=TABLES["evals"],
        runs=TABLES["runs"],
        table_csv=report(TABLES["results"], caption="../report/table.rst", category="Tables"),
        table_md=TABLES["results_md"],
        manifest=TABLES["manifest"],
        claims_md=TABLES["claims_md"],
        claims_json=report(TABLES["claims_json"], caption="../report/claims.rst", category="Tables"),
        warmups_md=TABLES["warmups_md"],
        warmups_csv=TABLES["warmups_csv"],
        study_md=[STUDY_TABLE_MD.format(study=s) for s in config["studies"]],
        study_csv=[STUDY_TABLE_CSV.format(study=s) for s in config["studies"]],
    log:
        R("logs/aggregate.log"),
    benchmark:
        R("benchmarks/aggregate.tsv")
    params:
        manifest=PLAN.manifest(),
        out=lambda w, output: str(Path(output.table_csv).parent),
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/aggregate.py"


rule replication:
    """The claims on two disjoint halves of the main study's replicates (each its own warm-up and RL seed),
    compared claim by claim with the power figures (salt.figures.replication; `salt replicate`)."""
    input:
        manifest=rules.aggregate.output.manifest,
        claims=rules.aggregate.output.claims_json,
    output:
        json=REPLICATION["json"],
        md=REPLICATION["md"],
    log:
        R("logs/replication.log"),
    benchmark:
        R("benchmarks/replication.tsv")
    params:
        out=lambda w, output: str(Path(output.json).parent),
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    shell:
        "python -m salt.cli replicate --manifest {input.manifest} --out {params.out} > {log} 2>&1"


rule figures:
    """Figures 1-7 (PNG + PDF) from the aggregated tables: every entry of salt/figures/registry.py."""
    input:
        manifest=rules.aggregate.output.manifest,
        steps=rules.aggregate.output.steps,
        evals=rules.aggregate.output.evals,
        runs=rules.aggregate.output.runs,
        table=rules.aggregate.output.table_csv,
    output:
        png=[
            report(str(fig.file(FIGURES_DIR, "png")), caption=f"../report/{fig.caption}", category="Figures")
            for fig in FIGURE_SPECS
        ],
        pdf=[str(fig.file(FIGURES_DIR, "pdf")) for fig in FIGURE_SPECS],
    log:
        R("logs/figures.log"),
    benchmark:
        R("benchmarks/figures.tsv")
    params:
        out=lambda w, output: str(Path(output.png[0]).parent),
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/figures.py"


rule report:
    """Self-contained HTML report (toy task, claims, results table, figures; also: `snakemake --report`);
    each study's parent MLflow run gets its table, the figures, the claims and the report as artifacts."""
    input:
        png=rules.figures.output.png,
        pdf=rules.figures.output.pdf,
        table_md=rules.aggregate.output.table_md,
        table_csv=rules.aggregate.output.table_csv,
        claims_md=rules.aggregate.output.claims_md,
        claims_json=rules.aggregate.output.claims_json,
        replication_md=rules.replication.output.md,
        replication_json=rules.replication.output.json,
        warmups_md=rules.aggregate.output.warmups_md,
        study_md=rules.aggregate.output.study_md,
        study_csv=rules.aggregate.output.study_csv,
        manifest=rules.aggregate.output.manifest,
        parents=all_parents(),
    output:
        html=R("report.html"),
    log:
        R("logs/report.log"),
    benchmark:
        R("benchmarks/report.tsv")
    params:
        captions=str(Path(workflow.basedir) / "report"),
        title=config["report"]["title"],
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"
