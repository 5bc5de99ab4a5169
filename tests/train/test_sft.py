"""Warm-up SFT on a tiny budget: runs, learns, saves a loadable HF model dir, is deterministic."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from salt.train import sft

TINY = {
    "seed": 1,
    "data": {"train_problems": 120, "test_problems": 24},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 4},
    "eval": {"samples": 2},
    "tracking": {"enabled": False},
}


def test_loss_masks_prompt_and_padding():
    from salt.tasks.toy import generate_problems
    from salt.train.toy_model import train_toy_tokenizer

    tok = train_toy_tokenizer(None)
    rows = generate_problems(3, "train", seed=0)
    examples = sft.encode_examples(rows, tok)
    for (ids, n_prompt), row in zip(examples, rows):
        assert tok.decode(ids[:n_prompt], skip_special_tokens=True) == row["prompt"]
        assert tok.decode(ids[n_prompt:-1]) == row["answer"] and ids[-1] == tok.eos_token_id
    batch = sft.collate(examples, tok.pad_token_id)
    for i, (ids, n_prompt) in enumerate(examples):
        labels = batch["labels"][i]
        assert (labels[:n_prompt] == -100).all() and (labels[len(ids):] == -100).all()
        assert labels[n_prompt:len(ids)].tolist() == ids[n_prompt:]
        assert batch["attention_mask"][i].sum() == len(ids)
    # brute force: the masked mean equals the mean of per-token cross-entropies on the targets
    from salt.train.toy_model import build_toy_model

    model = build_toy_model(tok, "tiny", seed=0)
    loss = sft.target_loss(model, batch)
    terms = []
    for i, (ids, n_prompt) in enumerate(examples):
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
        for t in range(n_prompt, len(ids)):
            terms.append(-torch.log_softmax(logits[t - 1], -1)[ids[t]])
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-5)


def test_sft_runs_saves_loadable_model_and_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m1 = sft.run_sft(TINY, tmp_path / "a")
    m2 = sft.run_sft(TINY, tmp_path / "b")
    for key in ("eval/pass@1_greedy", "eval/pass@1_t1", "sft/final_loss"):
        assert m1[key] == m2[key]
    assert 0.0 <= m1["eval/pass@1_greedy"] <= 1.0 and m1["test_problems"] == 24
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["eval/pass@1_t1"] == m1["eval/pass@1_t1"]
    resolved = yaml.safe_load((tmp_path / "a" / "sft_config.resolved.yaml").read_text())
    assert resolved["train"]["steps"] == 12 and resolved["train"]["lr"] == sft.DEFAULTS["train"]["lr"]

    final = tmp_path / "a" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    other = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final")
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), name
    assert not (tmp_path / "a" / "final.tmp").exists()
    # it learned something: the loss on the training format fell well below uniform guessing
    assert m1["sft/final_loss"] < 0.8 * torch.log(torch.tensor(float(len(tok)))).item()
    ids = tok("3+4=", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > ids.shape[1]


def test_sft_fine_tunes_an_existing_model_path_and_logs_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sft.run_sft({**TINY, "train": {**TINY["train"], "steps": 2}}, tmp_path / "base")
    cfg = {
        "model": {"path": str(tmp_path / "base" / "final")},
        "data": {"train_problems": 60, "test_problems": 12},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1},
        "eval": {"samples": 1},
        "tracking": {"enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "sft-test"},
    }
    metrics = sft.run_sft(cfg, tmp_path / "tuned")
    from salt import tracking

    run = tracking.attach_to_run(tmp_path / "tuned")
    data = run.client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["train.steps"] == "3"
    assert data.data.metrics["eval/pass_at_1_greedy"] == metrics["eval/pass@1_greedy"]
    assert sorted(m.step for m in run.client.get_metric_history(run.run_id, "sft/loss")) == [1, 2, 3]


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="train.stepz"):
        sft.resolve_config({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="train.steps"):
        sft.resolve_config({"train": {"steps": 0}})
    with pytest.raises(ValueError, match="model.path"):
        sft.resolve_config({"model": {"path": str(tmp_path / "missing")}})


def test_cli_with_config_file_and_set(tmp_path, capsys):
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "steps": 40}}))
    code = sft.cli_main(["--out", str(tmp_path / "o"), "--config", str(cfg_file), "--set", "train.steps=2",
                         "--set", "data.test_problems=6"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sft/steps"] == 2 and printed["test_problems"] == 6
    assert (tmp_path / "o" / "final" / "config.json").is_file()


def test_example_config_matches_defaults():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "config" / "examples" / "toy_sft.yaml"
    assert sft.resolve_config(yaml.safe_load(example.read_text())) == sft.resolve_config({})


def test_mixture_replaces_the_default_and_bad_ones_fail():
    cfg = sft.resolve_config({"data": {"mixture": {"correct": 1}}})
    assert cfg["data"]["mixture"] == {"correct": 1}
    assert sft.resolve_config({})["data"]["mixture"] == {"correct": 2, "plus_one": 1, "swap": 1, "sign": 1}
    with pytest.raises(ValueError, match="data.mixture.*unknown solver"):
        sft.resolve_config({"data": {"mixture": {"carry": 1}}})
