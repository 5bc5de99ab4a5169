rule evaluate:
    """Sample n answers per problem from a trained model; pass@k attached to its MLflow training run."""
    input:
        done=RUN_DONE,
        data=eval_data,
    output:
        metrics=EVAL_METRICS,
        problems=EVAL_PROBLEMS,
    log:
        R("logs/evaluate/{study}/{model}/{task}/{method}/G{G}/seed{seed}/{benchmark}.log"),
    benchmark:
        R("benchmarks/evaluate/{study}/{model}/{task}/{method}/G{G}/seed{seed}/{benchmark}.tsv")
    params:
        model=lambda w: PLAN.path("run_model", **job_of(w)),
        args=eval_args,
        out=lambda w, output: str(Path(output.metrics).parent),
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
        "python -m salt.cli evaluate --model {params.model} --benchmark {wildcards.benchmark} --data {input.data} "
        "--out {params.out} {params.args} > {log} 2>&1"


rule validate_proxy:
    """LM-head vs last-block per-sample Gram correlation with both nulls (Figure 5)."""
    input:
        model=model_input,
        data=lambda w: data_file(config["proxy"]["dataset"]),
    output:
        json=PROXY_JSON,
    log:
        R("logs/validate_proxy/{model}.log"),
    benchmark:
        R("benchmarks/validate_proxy/{model}.tsv")
    params:
        model=lambda w: model_path(w.model, 0),
        out=lambda w, output: str(Path(output.json).parent),
        args=proxy_args,
    threads: threads_of("proxy")
    resources:
        **resources_of("proxy"),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} "
        "python -m salt.cli validate-proxy --model {params.model} --data {input.data} --out {params.out} "
        "{params.args} > {log} 2>&1"
