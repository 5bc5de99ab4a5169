# Light (seconds), and on a cluster the submit host is usually the one with internet access for hub
# downloads: runs there instead of becoming a SLURM job.
localrules:
    prepare_data,


rule prepare_data:
    """Normalise one dataset (generated, hub id or local file) to JSONL + manifest."""
    output:
        data=DATA_FILE,
        manifest=PLAN.path("data_manifest"),
    log:
        R("logs/prepare_data/{dataset}.log"),
    benchmark:
        R("benchmarks/prepare_data/{dataset}.tsv")
    params:
        args=prepare_args,
        out=lambda w, output: str(Path(output.data).parent),
    threads: threads_of("data")
    resources:
        **resources_of("data"),
    conda:
        CONDA_ENV
    shell:
        "python -m salt.cli prepare-data {params.args} --out {params.out} > {log} 2>&1"
