rule warmup_sft:
    """Warm-up SFT of a toy model (teaches the answer format); only for models without `path`."""
    output:
        metrics=R("models/{model}/metrics.json"),
    log:
        R("logs/warmup_sft/{model}.log"),
    benchmark:
        R("benchmarks/warmup_sft/{model}.tsv")
    params:
        args=sft_args,
        out=lambda w, output: str(Path(output.metrics).parent),
    threads: threads_of("sft")
    resources:
        **resources_of("sft"),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m salt.cli sft --out {params.out} {params.args} > {log} 2>&1"
