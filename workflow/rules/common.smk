"""Parse time: the config checked (salt/workflow_checks.py), its plan (salt/workflow_plan.py), and the
mapping from each rule's wildcards to paths and to the package's job arguments (salt/workflow_jobs.py)."""

import sys
from pathlib import Path


# Jobs run `python -m salt.cli ...` from this checkout (also inside --sdm conda environments, where
# salt is not installed): shell rules get the repository on PYTHONPATH, scripts add it to sys.path.
# Without --sdm conda, jobs use the Python that runs Snakemake (its bin/ first on PATH), so an
# un-activated virtualenv works too.
REPO = str(Path(workflow.basedir).parent)
_PREFIX = f"export PYTHONPATH={REPO}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if "conda" not in {str(m).lower() for m in workflow.deployment_settings.deployment_method}:
    _PREFIX += f"export PATH={Path(sys.executable).parent}:$PATH; "
shell.prefix(_PREFIX)
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # parse-time checks import salt from this checkout

# ---------------------------------------------------------------- validation

from salt.workflow_checks import checked_config  # noqa: E402

_checked = checked_config(config, REPO)  # every key, then every path (salt/workflow_checks.py)
config.clear()
config.update(_checked)

# ---------------------------------------------------------------- paths

# Every output of this config lives under results_dir, so two configs with different results_dir
# can run in one checkout (their output sets are disjoint); the MLflow database (tracking.uri) is
# the only thing they share. The layout, the grid, the run configs and the manifest are the
# package's (salt/workflow_plan.py), the jobs' arguments and resources too (salt/workflow_jobs.py):
# this file maps wildcards to them.
from salt import workflow_jobs  # noqa: E402
from salt.workflow_plan import JOB_KEYS, Plan  # noqa: E402

PLAN = Plan(config)
RESULTS = PLAN.results


def R(path):
    """``path`` (may hold {wildcards}) inside this config's results_dir."""
    return f"{RESULTS}/{path}"


RUN_DIR = PLAN.path("run_dir")
RUN_DONE = PLAN.path("run_done")
RUN_CONFIG = PLAN.path("run_config")
TRAIN_BENCHMARK = PLAN.path("train_benchmark")
EVAL_METRICS = PLAN.path("eval_metrics")
EVAL_PROBLEMS = PLAN.path("eval_problems")
DATA_FILE = PLAN.path("data_file")
PARENT_JSON = PLAN.path("parent_json")
PROXY_JSON = PLAN.path("proxy_json")
STUDY_TABLE_MD = PLAN.path("study_table_md")
STUDY_TABLE_CSV = PLAN.path("study_table_csv")
from salt.figures.registry import FIGURE_SPECS, replication_paths, table_paths  # noqa: E402 - figures, table files

wildcard_constraints:
    study="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    task="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="[A-Za-z0-9][A-Za-z0-9_.-]*",
    benchmark="[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    G="[0-9]+",
    seed="[0-9]+",
    warmup="[0-9]+",

JOBS = PLAN.jobs
PLAN.check_run_configs()  # a bad override fails at parse time, naming the job

# ---------------------------------------------------------------- wildcards -> paths and values


def job_of(w):
    """The training job named by a rule's wildcards."""
    return {k: w[k] for k in JOB_KEYS}


def run_dir(w):
    return RUN_DIR.format(**job_of(w))


def run_config_of(w):
    return PLAN.run_config(**job_of(w))


def model_path(model, warmup=0):
    return PLAN.model_path(model, warmup)


def data_file(dataset):
    return PLAN.data_file(dataset)


def model_input(w):
    """The warm-up SFT output when the model is built by the workflow (a training job: its replicate's
    warm-up; the proxy validation: warm-up 0); nothing for hub/local models."""
    if config["models"][w.model]["path"]:
        return []
    wc = dict(w.items())
    warmup = PLAN.warmup_of(wc["study"], wc["seed"]) if "seed" in wc else 0
    return PLAN.path("warmup_metrics", model=w.model, warmup=warmup)


def train_data_inputs(w):
    task = config["tasks"][w.task]
    return [data_file(task["train"])] + ([data_file(task["eval"])] if task["eval"] else [])


def prepare_args(w):
    return workflow_jobs.prepare_args(config, w.dataset)


def sft_args(w):
    return workflow_jobs.sft_args(config, w.model, w.warmup)


def eval_args(w):
    return workflow_jobs.eval_args(config, w.benchmark, w.seed)


def proxy_args(w):
    return workflow_jobs.proxy_args(config)


def train_launcher(wildcards, resources, threads):
    return workflow_jobs.train_launcher(config, resources, threads)


def resources_of(kind):
    return workflow_jobs.resources_of(config, kind)


def threads_of(kind):
    return config["compute"][kind]["threads"]


def eval_data(w):
    return data_file(config["benchmarks"][w.benchmark]["dataset"])


def all_train_done():
    return [RUN_DONE.format(**job) for job in JOBS]


def all_eval_metrics():
    return [
        EVAL_METRICS.format(benchmark=b, **job)
        for job in JOBS for b in config["studies"][job["study"]]["benchmarks"]
    ]


def all_proxy():
    return [PROXY_JSON.format(model=m) for m in PLAN.proxy_models()]


def all_warmup_metrics():
    return [path for ws in PLAN.warmups().values() for path in ws.values()]


def all_parents():
    return [PARENT_JSON.format(study=s) for s in config["studies"]]


onstart:
    # a multi-node job needs SLURM; jobs on cluster nodes must not share one SQLite file
    # (salt/workflow_jobs.py, executor_problem; the URI precedence: salt.tracking.configured_uri)
    _remote = bool(workflow.non_local_exec)
    _problem = workflow_jobs.executor_problem(config, _remote, workflow.executor_plugin.name if _remote else "local")
    if _problem:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(_problem)


CONDA_ENV = f"../../envs/{config['compute']['env']}.yaml"
