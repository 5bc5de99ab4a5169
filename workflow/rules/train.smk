rule mlflow_parent:
    """Create (or find again) the MLflow parent run of a study, once, before its training jobs."""
    output:
        json=PARENT_JSON,
    log:
        R("logs/mlflow_parent/{study}.log"),
    benchmark:
        R("benchmarks/mlflow_parent/{study}.tsv")
    params:
        tracking=config["tracking"],
        study=lambda w: {"name": w.study, "kind": config["studies"][w.study]["kind"]},
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/mlflow_parent.py"


rule make_run_config:
    """Write the plain run config of one job: base <- overrides <- wildcards (+ the parent run id)."""
    input:
        parent=PARENT_JSON,
    output:
        yaml=RUN_CONFIG,
    log:
        R("logs/make_run_config/{study}/{model}/{task}/{method}/G{G}/seed{seed}.log"),
    benchmark:
        R("benchmarks/make_run_config/{study}/{model}/{task}/{method}/G{G}/seed{seed}.tsv")
    params:
        run=run_config_of,
    threads: threads_of("light")
    resources:
        **resources_of("light"),
    conda:
        CONDA_ENV
    script:
        "../scripts/make_run_config.py"


rule train:
    """One RL training run. Only DONE is declared, so an interrupted run keeps its checkpoints and resumes."""
    input:
        config=RUN_CONFIG,
        data=train_data_inputs,
        model=model_input,
    output:
        done=RUN_DONE,
    log:
        R("logs/train/{study}/{model}/{task}/{method}/G{G}/seed{seed}.log"),
    benchmark:
        TRAIN_BENCHMARK  # the manifest's `benchmark`: aggregate reads the wall time from it
    params:
        out=run_dir,
        launcher=train_launcher,
    threads: threads_of("train")
    resources:
        **resources_of("train"),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
        "{params.launcher} --config {input.config} --out {params.out} >> {log} 2>&1"
