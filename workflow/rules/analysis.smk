localrules:
    mlflow_parent,
    make_run_config,
    aggregate,
    figures,
    report,


rule aggregate:
    """Collect the logged metrics of every run (metrics.jsonl + evaluation metrics.json) into tables."""
    input:
        done=all_train_done(),
        evals=all_eval_metrics(),
        proxy=all_proxy(),
    output:
        steps="results/tables/steps.csv",
        evals="results/tables/evals.csv",
        runs="results/tables/runs.csv",
        table_csv=report("results/tables/results.csv", caption="../report/table.rst", category="Tables"),
        table_md="results/tables/results.md",
        manifest="results/tables/manifest.json",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    params:
        manifest=manifest(),
        out=lambda w, output: str(Path(output.table_csv).parent),
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/aggregate.py"


rule figures:
    """Figures 1-7 (PNG + PDF) from the aggregated tables; logged as artifacts of the parent runs."""
    input:
        manifest=rules.aggregate.output.manifest,
        steps=rules.aggregate.output.steps,
        evals=rules.aggregate.output.evals,
        runs=rules.aggregate.output.runs,
        table=rules.aggregate.output.table_csv,
        parents=all_parents(),
    output:
        png=[
            report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURE_NAMES
        ],
        pdf=[f"results/figures/{name}.pdf" for name in FIGURE_NAMES],
    log:
        "results/logs/figures.log",
    benchmark:
        "results/benchmarks/figures.tsv"
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
    """Self-contained HTML report: figures + captions + results table (also: `snakemake --report`)."""
    input:
        png=rules.figures.output.png,
        table_md=rules.aggregate.output.table_md,
        table_csv=rules.aggregate.output.table_csv,
        manifest=rules.aggregate.output.manifest,
    output:
        html="results/report.html",
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
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
