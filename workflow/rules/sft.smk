rule warmup_sft:
    """Warm-up SFT of a toy model with SFT seed {warmup} (one per replicate seed: the warm-up is a random
    factor of the design, docs/design.md); only for models without `path`. Its metrics.json holds its
    own held-out evaluation (greedy and sampled pass@1, pass@k): the warm-up baseline of its replicate."""
    output:
        metrics=PLAN.path("warmup_metrics"),
    log:
        R("logs/warmup_sft/{model}/warmup{warmup}.log"),
    benchmark:
        R("benchmarks/warmup_sft/{model}/warmup{warmup}.tsv")
    params:
        args=sft_args,
        out=lambda w, output: str(Path(output.metrics).parent),
    threads: threads_of("sft")
    # Every replicate's training jobs wait on their warm-up: without a priority Snakemake's scheduler
    # fills both cores with ready one-thread jobs first and a two-thread warm-up can start last,
    # leaving its replicate's runs as a serial tail (measured 2026-12-06: the last warm-up started 57
    # minutes into a 71-minute run).
    priority: 100
    resources:
        **resources_of("sft"),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m salt.cli sft --out {params.out} {params.args} > {log} 2>&1"
