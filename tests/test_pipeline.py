"""`make data` follows the config; `make train` with the smoke config: the whole pipeline, from simulation
to the held-out summary."""
import json
import os
import subprocess

import torch

from config import DataConfig, load_config
from model import load_pretrained
from reward import BEHAVIOUR_KEYS, REWARD_KEYS


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_train_smoke(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # train as a user would: the fast PyTorch path on CPU
    result = subprocess.run(["make", "-C", ROOT, "train", "CONFIG=configs/smoke.json", f"DATA={data}",
                             f"RUN={run}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = load_config(os.path.join(ROOT, "configs/smoke.json"))

    calls = sum(1 for name in ("train.jsonl", "test.jsonl") for _ in open(data / name))
    assert calls == config.data.dialogues
    for folder in ("base", "final"):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(run / folder))
    assert load_pretrained(str(run / "final")).config.num_hidden_layers == config.model["num_hidden_layers"]
    assert (run / "scripts").is_dir()
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(config.grpo.steps))
    # The smoke run trains: some group has a reward spread, so some step has a gradient, and the final
    # weights are not the base's (tests built on this run would otherwise pass for the wrong reason).
    assert min(r["zero_std_groups"] for r in records) < config.grpo.prompts_per_step
    assert max(r["grad_norm"] for r in records) > 0
    base, final = (load_pretrained(str(run / folder)).state_dict() for folder in ("base", "final"))
    assert any(not torch.equal(base[name], final[name]) for name in base)
    # Then the whole-call stage, from the GRPO model, with the plan's outlines.
    calls = [json.loads(line) for line in open(run / "calls" / "metrics.jsonl")]
    assert [r["step"] for r in calls] == list(range(config.calls.steps))
    assert load_config(None).calls.moves == "plan" and json.load(open(run / "calls" / "final" / "run.json"))[
        "config"]["calls"]["moves"] == "plan"
    summary = json.load(open(run / "summary.json"))
    assert summary["prompts"] == config.grpo.eval_prompts
    assert set(summary["base"]) == set(summary["grpo"]) == set(REWARD_KEYS + BEHAVIOUR_KEYS)
    assert "held-out reward" in result.stdout


def make_data(config, data):
    result = subprocess.run(["make", "-C", ROOT, "data", f"CONFIG={config}", f"DATA={data}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return sum(1 for name in ("train.jsonl", "test.jsonl") for _ in open(data / name))


def test_make_data_simulates_again_when_the_config_asks_for_another_corpus(tmp_path):
    config, data = tmp_path / "config.json", tmp_path / "data"
    config.write_text(json.dumps({"data": {"dialogues": 6}}))
    assert make_data(config, data) == 6
    made = (data / "train.jsonl").stat().st_mtime_ns
    assert make_data(config, data) == 6 and (data / "train.jsonl").stat().st_mtime_ns == made   # up to date
    config.write_text(json.dumps({"data": {"dialogues": 8}}))
    assert make_data(config, data) == 8
    made = (data / "train.jsonl").stat().st_mtime_ns
    config.write_text(json.dumps({"data": {"dialogues": 8, "noise": 0.5}}))
    assert make_data(config, data) == 8 and (data / "train.jsonl").stat().st_mtime_ns != made
    assert json.load(open(data / "recipe.json"))["noise"] == 0.5
    config.write_text(json.dumps({"grpo": {"steps": 3}}))         # no data section: config.py's defaults
    assert make_data(config, data) == DataConfig().dialogues
