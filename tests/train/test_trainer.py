"""The training loop on a tiny policy: forward layout, determinism, every stage, MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from salt.train.config import ConfigError, from_dict
from salt.utils import read_jsonl


def build_policy(out_dir: Path) -> Path:
    """A tiny toy Qwen2 taught in 30 Adam steps to answer '1' or '2' at random, + matching rows.

    With answers alternating '1'/'2', rewards are ~50% correct: every group has signal.
    Returns the model dir (tokenizer saved alongside); rows are at ``out_dir / "rows.jsonl"``.
    """
    from salt.train.toy_model import build_toy_model, train_toy_tokenizer

    model_dir = out_dir / "policy"
    if (model_dir / "config.json").is_file():
        return model_dir
    tok = train_toy_tokenizer(model_dir)
    model = build_toy_model(tok, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    prompts = [f"{i % 7}+{i % 5}=" for i in range(32)]
    for _ in range(30):
        targets = ["12"[int(x)] for x in torch.randint(0, 2, (32,), generator=gen)]
        seqs = [tok(p)["input_ids"] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                for p, t in zip(prompts, targets)]
        L = max(map(len, seqs))
        x = torch.tensor([s + [tok.pad_token_id] * (L - len(s)) for s in seqs])  # (32, L)
        labels = x.clone()
        labels[x == tok.pad_token_id] = -100
        for row, p in zip(labels, prompts):
            row[: len(tok(p)["input_ids"])] = -100
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
    rows = [{"id": f"t{i}", "task": "toy", "prompt": f"{i % 7}+{i % 5}=", "answer": "12"[i % 2]} for i in range(40)]
    (out_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir


def run_config(policy: Path, **sections) -> dict:
    """A small run config dict (tracking off) with nested overrides."""
    from salt.utils import deep_merge

    base = {
        "seed": 3,
        "model": {"path": str(policy)},
        "data": {"train": str(policy.parent / "rows.jsonl")},
        "rollout": {"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 4},
        "algorithm": {"salt": {"enabled": True}},
        "train": {"steps": 3, "lr": 1e-3, "checkpoint_every": 0, "log_samples_every": 2, "progress": False},
        "tracking": {"enabled": False},
    }
    return deep_merge(base, sections)


@pytest.fixture(scope="session")
def policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("policy"))


def _train(cfg_dict: dict, out: Path) -> list[dict]:
    from salt.train.trainer import train

    train(from_dict(cfg_dict), out)
    return read_jsonl(out / "metrics.jsonl")


def _strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _tensor_batch(policy: Path, n_prompts: int = 4, n: int = 4, seed: int = 0):
    """(model, the backend's RolloutOutput, a real rollout batch of the tiny policy, padded with random
    advantages, its TensorBatch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from salt.rollout import make_backend
    from salt.train.batch import RolloutBatch, to_tensors

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    out = make_backend({"backend": "hf"}, model, tok).generate(
        [f"{i}+{i}=" for i in range(n_prompts)], n, 4, 1.0, 1.0, seed=seed)
    scores = torch.zeros(len(out.texts))
    batch = RolloutBatch(
        rows=[{} for _ in range(n_prompts)], prompts=[""] * n_prompts, prompt_ids=out.prompt_ids,
        group_ids=torch.tensor(out.group_ids), completion_ids=out.completion_ids,
        finish_reasons=out.finish_reasons, texts=out.texts, scores=scores, rewards=scores,
        advantages=torch.randn(len(out.texts), generator=torch.Generator().manual_seed(seed)),
    )
    return model, out, batch, to_tensors(batch, tok.pad_token_id)


def test_lm_head_input_is_last_hidden_state_and_logprobs_match_sampling(policy):
    from salt.train.forward import policy_forward

    model, out, _, tb = _tensor_batch(policy)
    model.eval()
    with torch.no_grad():
        fwd = policy_forward(model, tb, temperature=1.0)
        T = tb.tokens.shape[1]
        plain = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                      output_hidden_states=True, use_cache=False)
        # the returned hidden states are the model's last (post-norm) hidden states of the response
        assert torch.allclose(fwd.hidden, plain.hidden_states[-1][:, -(T + 1):-1], atol=1e-6)
        # the chunked head's log-probs are the full logits' on every response token, 0 elsewhere
        full = torch.log_softmax(plain.logits[:, -(T + 1):-1].float(), -1).gather(-1, tb.tokens[..., None])[..., 0]
        assert torch.allclose(fwd.logp, full * (tb.mask != 0), atol=1e-6)
    # the recomputed log-probs of the sampled tokens equal the sampler's on every response token
    for i, lps in enumerate(out.logprobs):
        assert len(lps) == int(tb.mask[i].sum())
        assert torch.allclose(fwd.logp[i, : len(lps)], torch.tensor(lps), atol=1e-4)


def test_same_config_and_seed_give_identical_metrics(policy, tmp_path):
    cfg = run_config(policy)
    a = _train(cfg, tmp_path / "a")
    b = _train(cfg, tmp_path / "b")
    assert len(a) == 3 and [r["step"] for r in a] == [1, 2, 3]
    assert _strip_time(a) == _strip_time(b)
    c = _train(run_config(policy, seed=4), tmp_path / "c")
    assert _strip_time(a) != _strip_time(c)


def test_outputs_and_every_parameter_changes(policy, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    rows = _train(run_config(policy), out)
    for name in ("config.resolved.yaml", "DONE", "final/config.json", "final/tokenizer.json", "samples/step_0002.jsonl"):
        assert (out / name).is_file(), name
    samples = read_jsonl(out / "samples" / "step_0002.jsonl")
    assert len(samples) == 16 and {"prompt", "completion", "reward", "advantage"} <= set(samples[0])
    keys = set(rows[0])
    for k in ("reward/mean", "train/accuracy", "train/response_length", "train/clip_frac", "train/approx_kl",
              "train/entropy", "train/update_norm", "train/rollouts", "salt/alpha", "salt/n_eff",
              "salt/participation_ratio", "geom/r_in", "geom/n_eff_out", "time/generate", "time/reward",
              "time/forward", "time/gram", "time/decompose", "time/backward", "time/optimizer", "time/step"):
        assert k in keys, k
    assert rows[-1]["train/rollouts"] == 3 * 16
    before = AutoModelForCausalLM.from_pretrained(policy).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    # a finished run is not trained again
    from salt.train.trainer import train

    summary = train(from_dict(run_config(policy)), out)
    assert summary["steps"] == 3 and len(read_jsonl(out / "metrics.jsonl")) == 3


def test_baseline_logs_the_same_diagnostics_and_salt_changes_the_update(policy, tmp_path):
    salt_rows = _train(run_config(policy), tmp_path / "salt")
    base_rows = _train(run_config(policy, algorithm={"salt": {"enabled": False}}), tmp_path / "base")
    assert set(salt_rows[0]) == set(base_rows[0])
    # step 1 sees identical rollouts and the same Gram; only the coefficients differ
    assert salt_rows[0]["reward/mean"] == base_rows[0]["reward/mean"]
    assert salt_rows[0]["salt/participation_ratio"] == pytest.approx(base_rows[0]["salt/participation_ratio"], rel=1e-6)
    assert salt_rows[0]["train/update_norm"] != base_rows[0]["train/update_norm"]


def test_diagnostics_every_thins_the_gram_of_a_baseline_without_changing_its_training(policy, tmp_path):
    """algorithm.salt.diagnostics_every = 3 on a 7-step run without SALT: the Gram metrics exist on
    steps 1, 4, 7 and on the dump step 5 only, equal to those of the every-step run on those steps,
    and every other number of every step is identical (the Gram of a baseline feeds metrics only)."""
    every = run_config(policy, algorithm={"salt": {"enabled": False}}, train={"steps": 7, "dump_gram_steps": [5]})
    thin = run_config(policy, algorithm={"salt": {"enabled": False, "diagnostics_every": 3}},
                      train={"steps": 7, "dump_gram_steps": [5]})
    full_rows = _strip_time(_train(every, tmp_path / "every"))
    thin_rows = _strip_time(_train(thin, tmp_path / "thin"))
    geo = {k for k in full_rows[0] if k.startswith(("salt/", "geom/"))}
    assert geo and "salt/participation_ratio" in geo
    for full, row in zip(full_rows, thin_rows, strict=True):
        has = {k for k in row if k.startswith(("salt/", "geom/"))}
        assert has == (geo if row["step"] in (1, 4, 5, 7) else set()), row["step"]
        assert row == {k: v for k, v in full.items() if k in row}, row["step"]
    assert (tmp_path / "thin" / "gram_step_0005.npz").is_file()
    with pytest.raises(Exception, match="diagnostics_every"):
        from_dict(run_config(policy, algorithm={"salt": {"diagnostics_every": 0}})).validate(check_paths=False)


def test_micro_batching_and_scope_do_not_change_a_global_update(policy):
    """Gradient accumulation over micro-batches equals the one-shot update (global scope)."""
    from salt.train.update import UpdateSettings, make_optimizer, update_minibatch

    results = []
    for micro in (16, 5):
        model, _, _, tb = _tensor_batch(policy)
        cfg = from_dict(run_config(policy, train={"micro_batch_size": micro, "optimizer": "sgd", "lr": 1.0}))
        tb.old_logp = tb.mask * 0 - 1.0
        opt, sched = make_optimizer(model, cfg, 1)
        m = update_minibatch(model, opt, sched, tb, UpdateSettings.from_config(cfg), seed=0)
        results.append((m, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (m1, p1), (m2, p2) = results
    assert torch.allclose(p1, p2, atol=1e-5)
    assert m1["salt/alpha"] == pytest.approx(m2["salt/alpha"], abs=1e-6)
    assert m1["train/update_norm"] == pytest.approx(m2["train/update_norm"], rel=1e-5)


@pytest.mark.parametrize("micro", [64, 5])
def test_on_policy_update_without_old_logprobs_equals_the_recomputed_one(policy, micro):
    """old_logp None (one epoch, one mini-batch: Trainer.update skips the no-grad forward) gives
    exactly the update made with old log-probs recomputed by compute_logprobs (brute force)."""
    from salt.train.forward import compute_logprobs
    from salt.train.update import UpdateSettings, make_optimizer, update_minibatch

    results = []
    for recompute in (True, False):
        model, _, _, tb = _tensor_batch(policy)
        cfg = from_dict(run_config(policy, train={"micro_batch_size": micro, "lr": 1e-3},
                                   algorithm={"salt": {"enabled": True}}))
        if recompute:
            with torch.no_grad():
                tb.old_logp = compute_logprobs(model, tb, 1.0, micro)
        opt, sched = make_optimizer(model, cfg, 1)
        m = update_minibatch(model, opt, sched, tb, UpdateSettings.from_config(cfg), seed=0)
        results.append((m, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (m1, p1), (m2, p2) = results
    assert torch.equal(p1, p2)
    assert m2["train/clip_frac"] == 0.0 and m2["train/ratio_max"] == 1.0
    assert m1["train/loss"] == m2["train/loss"] and m1["salt/alpha"] == m2["salt/alpha"]


@pytest.mark.parametrize(
    "sections",
    [
        {"algorithm": {"loss": {"name": "dapo"}, "dynamic_sampling": {"enabled": True, "max_gen_batches": 3},
                       "overlong": {"enabled": True, "buffer": 2}}},
        {"algorithm": {"selection": {"rule": "max_variance", "n": 8}, "focal": {"enabled": True, "gamma": 1.0}}},
        {"algorithm": {"vip": {"enabled": True, "budget": 16, "lower": 2, "upper": 8}, "loss": {"name": "cispo"}}},
        {"algorithm": {"loss": {"name": "gspo"}, "salt": {"scope": "micro", "gram": "sketch", "sketch_dim": 16}},
         "train": {"micro_batch_size": 8, "mini_batch_prompts": 2, "ppo_epochs": 2}},
        {"algorithm": {"loss": {"name": "dr_grpo", "beta": 0.1}, "advantage": "dr_grpo"}},
    ],
    ids=["dapo-dynamic-overlong", "pods-focal", "vip-cispo", "gspo-micro-minibatches", "drgrpo-kl"],
)
def test_methods_run_by_config_alone(policy, tmp_path, sections):
    from salt.utils import deep_merge

    rows = _train(run_config(policy, **deep_merge({"train": {"steps": 2}}, sections)), tmp_path / "run")
    assert len(rows) == 2
    for r in rows:
        assert all(math.isfinite(v) for v in r.values())
        assert r["train/group_size_mean"] > 0
    if "selection" in sections.get("algorithm", {}):
        assert rows[-1]["train/rollouts"] == 2 * 16 and rows[-1]["train/rollouts_generated"] == 2 * 32
    if "vip" in sections.get("algorithm", {}):
        assert rows[-1]["train/rollouts_generated"] == 2 * 16
    if "dynamic_sampling" in sections.get("algorithm", {}):
        assert all(1 <= r["data/gen_batches"] <= 3 for r in rows)
    if sections.get("algorithm", {}).get("loss", {}).get("beta"):
        assert "train/kl" in rows[0]


def test_mlflow_run_has_params_metrics_tags_and_artifacts(policy, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    _train(run_config(policy, train={"steps": 2}, tracking={"enabled": True, "uri": uri, "experiment": "t"}), out)
    info = json.loads((out / "run.json").read_text())
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["rollout.group_size"] == "4"
    assert run.data.tags["method"] == "grpo+salt" and run.data.tags["G"] == "4" and run.data.tags["seed"] == "3"
    assert "git_commit" in run.data.tags
    hist = client.get_metric_history(run.info.run_id, "salt/alpha")
    assert sorted(m.step for m in hist) == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.resolved.yaml", "samples"} <= arts
    assert run.info.status == "FINISHED"


def test_tracking_log_every_thins_mlflow_but_not_metrics_jsonl(policy, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    rows = _train(run_config(policy, train={"steps": 5},
                             tracking={"enabled": True, "uri": uri, "experiment": "t", "log_every": 2}), out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    client = mlflow.tracking.MlflowClient(uri)
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    hist = client.get_metric_history(run_id, "reward/mean")
    assert sorted(m.step for m in hist) == [2, 4, 5]  # every 2nd step and the last
    assert {m.step: m.value for m in hist}[4] == rows[3]["reward/mean"]
    with pytest.raises(ValueError, match="tracking.log_every"):
        from_dict(run_config(policy, tracking={"log_every": 0})).validate(check_paths=False)


def test_a_missing_model_stops_the_job_naming_the_key_and_the_fix(tmp_path, capsys):
    """The warm-up SFT is the workflow's job (rule warmup_sft): an RL job never builds its model."""
    import yaml

    from salt.train.trainer import cli_main, train

    model_path = tmp_path / "models" / "toy" / "final"
    cfg = run_config(model_path, data={"train": "toy:train", "toy_rows": 30})
    with pytest.raises(ConfigError, match=r"model.path = .*final' does not exist; build the model first "
                                          r"\(`salt sft --out DIR`, or the workflow's warmup_sft rule\)"):
        train(from_dict(cfg), tmp_path / "run")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "salt train: config error: model.path" in err and "salt sft" in err
    assert not model_path.parent.exists() and not (tmp_path / "run").exists()


def _check_gram_file(path: Path, B: int) -> dict:
    import numpy as np

    from salt.algo.advantages import compute_advantages

    from salt import gram_dump

    d = gram_dump.read(path)  # the one reader of the format (salt/gram_dump.py)
    assert set(d) == {"gram", "advantages", "advantages_final", "group_ids", "rewards"}
    assert d["gram"].shape == (B, B) and d["gram"].dtype == np.float64
    for k in ("advantages", "advantages_final", "group_ids", "rewards"):
        assert d[k].shape == (B,), k
    K = d["gram"]
    np.testing.assert_allclose(K, K.T, rtol=0, atol=1e-12 * np.abs(K).max())
    eig = np.linalg.eigvalsh(K)
    # PSD up to the rounding of the float32 forward it is computed from, and not all zero
    assert eig.min() >= -B * np.finfo(np.float32).eps * eig.max() and eig.max() > 0
    # the advantages are the group-relative ones of the dumped rewards (whole groups in the Gram)
    adv = compute_advantages(torch.tensor(d["rewards"]), torch.tensor(d["group_ids"]), "grpo", 1e-6)
    np.testing.assert_allclose(d["advantages"], adv.double().numpy(), rtol=1e-5, atol=1e-6)
    return d


def test_gram_dump_writes_the_first_minibatch_gram_without_changing_the_run(policy, tmp_path):
    import numpy as np

    dump = {"dump_gram_steps": [1, 2], "mini_batch_prompts": 2}
    salt_rows = _train(run_config(policy, train=dump), tmp_path / "salt")
    base_rows = _train(run_config(policy, train=dump, algorithm={"salt": {"enabled": False}}), tmp_path / "base")
    plain_rows = _train(run_config(policy, train={"mini_batch_prompts": 2}), tmp_path / "plain")
    assert _strip_time(salt_rows) == _strip_time(plain_rows)  # the dump consumes no RNG
    assert not list((tmp_path / "plain").glob("gram_step_*"))
    for run in ("salt", "base"):
        assert sorted(p.name for p in (tmp_path / run).glob("gram_step_*")) == ["gram_step_0001.npz", "gram_step_0002.npz"]
        assert not list((tmp_path / run).glob(".gram_step_*"))  # no temp file left
    B = 2 * 4  # mini_batch_prompts x group_size
    s1 = _check_gram_file(tmp_path / "salt" / "gram_step_0001.npz", B)
    b1 = _check_gram_file(tmp_path / "base" / "gram_step_0001.npz", B)
    b2 = _check_gram_file(tmp_path / "base" / "gram_step_0002.npz", B)
    _check_gram_file(tmp_path / "salt" / "gram_step_0002.npz", B)
    # the first mini-batch holds groups 0 and 1, each with its group_size rollouts
    assert sorted(np.unique(s1["group_ids"]).tolist()) == [0, 1] and np.bincount(s1["group_ids"]).tolist() == [4, 4]
    # step 1: the same rollouts and Gram; the baseline trains on A, SALT on its own coefficients
    np.testing.assert_allclose(s1["gram"], b1["gram"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(s1["advantages"], b1["advantages"])
    np.testing.assert_array_equal(b1["advantages_final"], b1["advantages"])
    np.testing.assert_array_equal(b2["advantages_final"], b2["advantages"])
    assert np.abs(b1["advantages"]).max() > 0
    assert not np.allclose(s1["advantages_final"], s1["advantages"], rtol=1e-3, atol=1e-6)
    # step 2's dump is the first mini-batch (groups 0 and 1) of the batch logged in samples/
    samples = [r for r in read_jsonl(tmp_path / "base" / "samples" / "step_0002.jsonl") if r["group"] in (0, 1)]
    np.testing.assert_allclose(b2["rewards"], [r["reward"] for r in samples])
    np.testing.assert_allclose(b2["advantages"], [r["advantage"] for r in samples], rtol=1e-6, atol=1e-7)
    assert b2["group_ids"].tolist() == [r["group"] for r in samples]


def test_gram_dump_micro_scope_and_nothing_without_the_gram(policy, tmp_path):
    import numpy as np

    micro = run_config(policy, train={"dump_gram_steps": [2], "micro_batch_size": 4},
                       algorithm={"salt": {"scope": "micro"}})
    _train(micro, tmp_path / "micro")
    assert [p.name for p in (tmp_path / "micro").glob("gram_step_*")] == ["gram_step_0002.npz"]
    d = _check_gram_file(tmp_path / "micro" / "gram_step_0002.npz", 4)  # the first micro-batch only
    assert np.unique(d["group_ids"]).tolist() == [0]
    off = run_config(policy, train={"dump_gram_steps": [1, 2]},
                     algorithm={"salt": {"enabled": False, "diagnostics": False}})
    rows = _train(off, tmp_path / "off")
    assert not list((tmp_path / "off").glob("gram_step_*"))
    assert not any(k.startswith(("salt/", "geom/")) for k in rows[0])


def _fake_scores(informative: set[str]):
    """A score_batch stand-in: rows in ``informative`` get rewards 0,1,0,1,... (non-constant in
    every group, whose rollouts are consecutive), all others 0 (an all-equal group)."""
    from types import SimpleNamespace

    def score_batch(rows, completions, **kw):
        return [SimpleNamespace(reward=float(i % 2) if r["id"] in informative else 0.0)
                for i, r in enumerate(rows)]

    return score_batch


def _expected_dynamic_sampling(rows: list[dict], seed: int, informative: set[str], P: int, n_draw: int,
                               max_rounds: int) -> tuple[int, list[str]]:
    """Brute force: replay the prompt stream round by round; (rounds, ids trained on)."""
    from salt.train.rollouts import PromptSampler

    sampler = PromptSampler(rows, seed)
    kept: list[str] = []
    rounds = 0
    while rounds < max_rounds and len(kept) < P:
        kept += [r["id"] for r in sampler.take(n_draw) if r["id"] in informative]
        rounds += 1
    return rounds, kept[:P]


@pytest.mark.parametrize("factor, max_rounds", [(3.0, 4), (1.0, 4), (3.0, 1), (2.5, 3)])
def test_dynamic_sampling_gen_batch_factor_fills_the_batch_with_informative_groups(policy, tmp_path, monkeypatch,
                                                                                    factor, max_rounds):
    import salt.tasks.rewards
    from salt.train.rollouts import load_rows
    from salt.train.stepping import step_seed
    from salt.train.trainer import Trainer

    P = 4
    cfg = from_dict(run_config(policy, algorithm={"dynamic_sampling": {
        "enabled": True, "gen_batch_factor": factor, "max_gen_batches": max_rounds}})).validate()
    rows = load_rows(cfg.data.train, cfg)
    informative = {r["id"] for i, r in enumerate(rows) if i % 5 == 0}  # 8 of 40 prompts
    monkeypatch.setattr(salt.tasks.rewards, "score_batch", _fake_scores(informative))
    n_draw = math.ceil(factor * P)
    rounds, ids = _expected_dynamic_sampling(rows, cfg.seed, informative, P, n_draw, max_rounds)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    batch, m = trainer.collect(step_seed(cfg.seed, 0))
    assert m["data/gen_batches"] == rounds
    assert m["data/prompts_generated"] == rounds * n_draw
    assert trainer.rollouts.generated == rounds * n_draw * 4
    assert [r["id"] for r in batch.rows] == ids  # the first informative groups, in draw order
    assert m["data/prompts"] == len(ids) == len(batch.rows)
    assert batch.group_ids.tolist() == [g for g in range(len(ids)) for _ in range(4)]
    for g in range(len(ids)):  # every trained group is informative
        assert batch.rewards[batch.group_ids == g].unique().numel() == 2
    if factor == 3.0 and max_rounds == 4:  # enough informative prompts exist: exactly P groups
        assert len(ids) == P and rounds >= 2
    if factor == 1.0:  # the same stream one P at a time runs out of rounds first
        assert len(ids) < P and rounds == max_rounds
    # a full step trains on that batch and logs the same counts
    out = trainer.step(1)
    assert out["data/prompts_generated"] == out["data/gen_batches"] * n_draw
    assert out["train/group_size_mean"] == 4.0 and math.isfinite(out["train/loss"])
