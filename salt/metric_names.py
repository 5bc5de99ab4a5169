"""Every metric name salt logs, defined once.

The trainer (``metrics.jsonl`` and MLflow), the SFT warm-up, ``salt evaluate`` (``metrics.json``
and MLflow) write these names; aggregation, claims and figures read them. Nothing else spells a
metric name. Names are namespaced by what they measure:

- ``train/``   the update: the loss's metrics (prefixed by the trainer), the batch trained on
- ``reward/``  the rewards of the batch trained on
- ``data/``    prompts drawn per step (DAPO dynamic sampling draws more than it keeps)
- ``salt/``    SALT's decomposition of the Gram (:func:`salt.algo.decomposition.decompose`)
- ``geom/``    Gram geometry within and across prompt groups (:func:`salt.algo.gram_metrics.group_geometry`)
- ``time/``    seconds per stage of one step (the trainer's named timers)
- ``eval/``    held-out accuracy: the trainer's periodic greedy check, the warm-up's toy test,
               ``salt evaluate``'s benchmark metrics
- ``sft/``     the warm-up's loss and timing

A step of ``metrics.jsonl`` also carries :data:`STEP` (1-based).
"""

from __future__ import annotations

import re

STEP = "step"  # 1-based index of the policy iteration a metrics line belongs to

# ------------------------------------------------------------------------------------ train/
TRAIN = "train/"


def train(loss_key: str) -> str:
    """The trainer's name for a key of the loss's metrics dict (``compute_policy_loss``)."""
    return TRAIN + loss_key


# the keys salt.algo.losses.compute_policy_loss returns (and the trainer's "loss"); logged as train(key)
LOSS = "loss"  # total loss (policy gradient + KL - entropy bonus), weighted by each micro-batch's share
PG_LOSS = "pg_loss"  # policy-gradient part of the loss
KL = "kl"  # masked token mean of the KL estimate to the reference (only with algorithm.loss.beta > 0)
ENTROPY = "entropy"  # masked token mean of the policy entropy (when the forward computes it)
CLIP_FRAC = "clip_frac"  # fraction of tokens clipped (low + high)
CLIP_FRAC_LOW = "clip_frac_low"  # fraction of tokens clipped at 1 - eps_low
CLIP_FRAC_HIGH = "clip_frac_high"  # fraction of tokens clipped at 1 + eps_high
DUAL_CLIP_FRAC = "dual_clip_frac"  # fraction of tokens hit by the dual clip (negative advantages)
APPROX_KL = "approx_kl"  # masked mean of ratio - 1 - log ratio (k3 to the sampling policy)
RATIO_MEAN = "ratio_mean"  # masked mean importance ratio pi / pi_old
RATIO_MAX = "ratio_max"  # largest importance ratio (reduced with max over micro-batches and ranks)
LOSS_KEYS = (LOSS, PG_LOSS, KL, ENTROPY, CLIP_FRAC, CLIP_FRAC_LOW, CLIP_FRAC_HIGH, DUAL_CLIP_FRAC,
             APPROX_KL, RATIO_MEAN, RATIO_MAX)
LOSS_WEIGHTED_KEYS = (LOSS, PG_LOSS)  # averaged by loss-normaliser share; the others by token count

TRAIN_LOSS = train(LOSS)
TRAIN_PG_LOSS = train(PG_LOSS)
TRAIN_KL = train(KL)
TRAIN_ENTROPY = train(ENTROPY)
TRAIN_CLIP_FRAC = train(CLIP_FRAC)
TRAIN_CLIP_FRAC_LOW = train(CLIP_FRAC_LOW)
TRAIN_CLIP_FRAC_HIGH = train(CLIP_FRAC_HIGH)
TRAIN_DUAL_CLIP_FRAC = train(DUAL_CLIP_FRAC)
TRAIN_APPROX_KL = train(APPROX_KL)
TRAIN_RATIO_MEAN = train(RATIO_MEAN)
TRAIN_RATIO_MAX = train(RATIO_MAX)

TRAIN_UPDATE_NORM = "train/update_norm"  # gradient norm of the update before clipping
TRAIN_LR = "train/lr"  # learning rate after the step's scheduler step
TRAIN_ACCURACY = "train/accuracy"  # fraction of the trained-on rollouts that are correct (score >= 1)
TRAIN_ACCURACY_GENERATED = "train/accuracy_generated"  # same over every rollout generated this step
TRAIN_RESPONSE_LENGTH = "train/response_length"  # mean completion length (tokens) of the batch
TRAIN_RESPONSE_LENGTH_MAX = "train/response_length_max"  # longest completion of the batch
TRAIN_TRUNCATED_FRAC = "train/truncated_frac"  # fraction of completions cut at max_new_tokens
TRAIN_ADVANTAGE_ABS_MEAN = "train/advantage_abs_mean"  # mean |A| of the batch
TRAIN_ROLLOUTS = "train/rollouts"  # cumulative rollouts that entered the loss
TRAIN_ROLLOUTS_GENERATED = "train/rollouts_generated"  # cumulative rollouts sampled (PODS / DAPO: more)
TRAIN_GROUP_SIZE_MEAN = "train/group_size_mean"  # rollouts per prompt in the batch trained on

# ------------------------------------------------------------------------------------ reward/
REWARD = "reward/"
REWARD_MEAN = "reward/mean"  # mean reward of the batch trained on
REWARD_STD = "reward/std"  # standard deviation of those rewards

# ------------------------------------------------------------------------------------ data/
DATA = "data/"
DATA_GEN_BATCHES = "data/gen_batches"  # generation batches drawn this step (DAPO: until enough kept)
DATA_PROMPTS = "data/prompts"  # prompts in the batch trained on
DATA_PROMPTS_GENERATED = "data/prompts_generated"  # prompts drawn this step

# ------------------------------------------------------------------------------------ salt/
SALT = "salt/"
SALT_PARTICIPATION_RATIO = "salt/participation_ratio"  # PR of the Gram K: tr(K)^2 / ||K||_F^2
SALT_N_EFF = "salt/n_eff"  # effective sample size of the advantages A on K
SALT_ALPHA = "salt/alpha"  # weight of the shared channel
SALT_K = "salt/k"  # subspace size k
SALT_EIG_MAX = "salt/eig_max"  # largest eigenvalue of K
SALT_EIG_MIN = "salt/eig_min"  # smallest eigenvalue of K
SALT_EIG_RATIO = "salt/eig_ratio"  # eig_max / eig_min
SALT_MAIN_CONTRIB_RATIO = "salt/main_contrib_ratio"  # share of A_final from the shared channel
SALT_EXP_CONTRIB_RATIO = "salt/exp_contrib_ratio"  # 1 - main_contrib_ratio (exploration channel)
SALT_POSITIVE_ADV_RATIO = "salt/positive_adv_ratio"  # fraction of rollouts with A > 0
SALT_SHARED_ENERGY_RATIO = "salt/shared_energy_ratio"  # share of A's energy in the top-k subspace
SALT_RESIDUAL_ENERGY_RATIO = "salt/residual_energy_ratio"  # 1 - shared_energy_ratio
SALT_RESIDUAL_BOUND = "salt/residual_bound"  # bound on the residual's update energy
SALT_N_EFF_FINAL = "salt/n_eff_final"  # effective sample size of A_final (the coefficients the loss used)
SALT_PR_FINAL = "salt/pr_final"  # participation ratio of the Gram of the final coefficients
SALT_FALLBACK = "salt/fallback"  # 1 when the Gram was degenerate and SALT fell back to A
SALT_METRICS = (  # every key decompose() returns, in its order
    SALT_PARTICIPATION_RATIO, SALT_N_EFF, SALT_ALPHA, SALT_K, SALT_EIG_MAX, SALT_EIG_MIN, SALT_EIG_RATIO,
    SALT_MAIN_CONTRIB_RATIO, SALT_EXP_CONTRIB_RATIO, SALT_POSITIVE_ADV_RATIO, SALT_SHARED_ENERGY_RATIO,
    SALT_RESIDUAL_ENERGY_RATIO, SALT_RESIDUAL_BOUND, SALT_N_EFF_FINAL, SALT_PR_FINAL, SALT_FALLBACK,
)

# ------------------------------------------------------------------------------------ geom/
GEOM = "geom/"
GEOM_R_IN = "geom/r_in"  # mean positive cosine between rollouts of the same prompt
GEOM_N_EFF_IN = "geom/n_eff_in"  # mean effective sample size within a prompt group
GEOM_PR_IN = "geom/pr_in"  # mean participation ratio of a group's sub-Gram
GEOM_R_OUT = "geom/r_out"  # mean positive cosine between prompt-mean features
GEOM_N_EFF_OUT = "geom/n_eff_out"  # effective sample size of the prompt-mean signed updates
GEOM_METRICS = (GEOM_R_IN, GEOM_N_EFF_IN, GEOM_PR_IN, GEOM_R_OUT, GEOM_N_EFF_OUT)  # group_geometry()'s keys
GEOM_GRAM_ERR_BOUND = "geom/gram_err_bound"  # the Gram backend's relative Frobenius error bound (none for sketch; for sparse, also when auto picks it, a probabilistic estimate: info["err_kind"])

# ------------------------------------------------------------------------------------ time/
TIME = "time/"


def time_of(stage: str) -> str:
    """Seconds spent in one named stage of a step (summed over its calls in the step)."""
    return TIME + stage


TIME_STAGES = ("generate", "reward", "old_logprobs", "forward", "backward", "gram", "decompose",
               "optimizer", "eval")  # the trainer's timer names
TIME_STEP = time_of("step")  # seconds of the whole step

# ------------------------------------------------------------------------------------ eval/
EVAL = "eval/"
EVAL_ACCURACY = "eval/accuracy"  # trainer: greedy accuracy on data.eval every train.eval_every steps

# salt evaluate: the keys of an evaluation's metrics.json (per benchmark); MLflow gets eval_benchmark(b, key)
N_PROBLEMS = "n_problems"  # problems evaluated
N_SAMPLES = "n"  # samples per problem
AVG_AT_N = "avg@n"  # mean over problems of the fraction of correct samples
MAJ_AT_N = "maj@n"  # majority-vote accuracy over the n samples
MEAN_RESPONSE_LENGTH = "mean_response_length"  # mean completion length (tokens)
TRUNCATION_RATE = "truncation_rate"  # fraction of completions cut at max_new_tokens
EVAL_ACCURACY_KEY = "accuracy"  # plain accuracy (a metrics.json may carry it instead of pass@1)


def pass_at(k: int) -> str:
    """Unbiased pass@k estimate, mean over problems (a metrics.json key)."""
    return f"pass@{int(k)}"


def eval_benchmark(benchmark: str, key: str) -> str:
    """MLflow name of an evaluation metric: ``eval/<benchmark>/<key>``."""
    return f"{EVAL}{benchmark}/{key}"


BENCHMARK_METRIC = re.compile(r"^(pass|avg|maj)@(\d+|n)$|^accuracy$")  # metrics.json keys the results table collects
PAIRED_METRIC = re.compile(r"^pass@\d+$|^avg@n$")  # those with per-problem scores in problems.jsonl

# SFT warm-up's toy test (salt/train/sft.py, metrics.json of the warm-up and MLflow)
EVAL_PASS1_GREEDY = "eval/pass@1_greedy"  # greedy accuracy on the toy test split
EVAL_STOP_RATE_GREEDY = "eval/stop_rate_greedy"  # fraction of greedy completions that stopped on their own


def eval_pass_at_t1(k: int) -> str:
    """pass@k at temperature 1 on the toy test split (k = 1, 2, 4, ... up to the samples drawn)."""
    return f"{EVAL}pass@{int(k)}_t1"


def eval_pass1_greedy_level(level: int) -> str:
    """Greedy accuracy on the toy test problems of one difficulty level."""
    return f"{EVAL_PASS1_GREEDY}_level{int(level)}"


def eval_pass1_t1_level(level: int) -> str:
    """pass@1 at temperature 1 on the toy test problems of one difficulty level."""
    return f"{eval_pass_at_t1(1)}_level{int(level)}"


# ------------------------------------------------------------------------------------ sft/
SFT = "sft/"
SFT_LOSS = "sft/loss"  # mean loss over the last log_every steps
SFT_GRAD_NORM = "sft/grad_norm"  # gradient norm before clipping
SFT_LR = "sft/lr"  # learning rate
SFT_FINAL_LOSS = "sft/final_loss"  # loss of the last step
SFT_TRAIN_SECONDS = "sft/train_seconds"  # seconds of the training loop
SFT_TOTAL_SECONDS = "sft/total_seconds"  # seconds including the test evaluation
SFT_STEPS = "sft/steps"  # optimizer steps taken

# ------------------------------------------------------------------------------------ collections
STEP_PREFIXES = (SALT, GEOM, TRAIN, REWARD, DATA, TIME, EVAL)  # metrics.jsonl namespaces (runs.csv: means over steps)
CUMULATIVE = (TRAIN_ROLLOUTS, TRAIN_ROLLOUTS_GENERATED)  # running totals: a run's value is its last step's
FINAL_WINDOW_METRIC = TRAIN_ACCURACY  # the run's "final reward": mean over its last logged steps
CURVES = (TRAIN_ACCURACY, TRAIN_ACCURACY_GENERATED, REWARD_MEAN, EVAL_ACCURACY)  # per-step curves figures draw


def run_mean(metric: str) -> str:
    """Aggregation's name (a runs.csv column) for a run's mean over its steps of ``metric``."""
    return "mean:" + metric
