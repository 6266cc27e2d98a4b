"""ablations.py: the plan is validated (a misspelt key is named) and every arm's config is the base config
with the plan's overrides. The arms themselves train with the code tests/test_grpo_train.py and
tests/test_evaluate.py cover."""
import json

import pytest

import ablations
import evaluate
from config import ConfigError, load_config


def test_ablation_plan_and_arm_configs(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"base_config": "configs/smoke.json", "holdout_domain": "home_broadband",
                                     "overrides": {"grpo": {"steps": 3}}, "sft": {"steps": 5},
                                     "eval": {"turns_per_stage": 2}}))
    plan = ablations.load_plan(str(plan_path))
    no_bayes = ablations.arm_config(plan, str(tmp_path), "no_bayes", {"reward": {"bayes": 0.0}})
    sft = ablations.arm_config(plan, str(tmp_path), "sft", {"pretrain": plan["sft"]})
    smoke = load_config("configs/smoke.json")
    assert no_bayes.reward.bayes == 0.0 and no_bayes.grpo.steps == 3
    assert no_bayes.grpo.num_generations == smoke.grpo.num_generations and no_bayes.model == smoke.model
    assert sft.pretrain.steps == 5 and sft.reward.bayes == smoke.reward.bayes
    settings = ablations.eval_settings(plan)
    assert settings.turns_per_stage == 2 and settings.customers == "validation"
    shipped = ablations.load_plan("configs/ablations.json")       # the default recipe, config.py's defaults
    common = ablations.arm_config(shipped, str(tmp_path), "common")
    assert common.grpo.save_steps == 0 and common.pretrain == load_config().pretrain
    assert common.model == load_config().model
    arms = {name: ablations.arm_config(shipped, str(tmp_path), name, {"calls": overrides})
            for name, overrides in shipped["calls"].items()}      # whole-call GRPO: turn, session, both; moves
    assert {name: (cfg.calls.turn_weight, cfg.calls.session_weight, cfg.calls.moves) for name, cfg in arms.items()} == {
        "calls_turn": (1.0, 0.0, "plan"), "calls_session": (0.0, 1.0, "plan"), "calls_both": (1.0, 1.0, "plan"),
        "calls_classifier": (1.0, 1.0, "classifier")}
    # each whole-call arm is measured with the prompting it trains with
    assert {name: evaluate.stage_prompting(cfg) for name, cfg in arms.items()} == {
        "calls_turn": "doga_planned", "calls_session": "doga_planned", "calls_both": "doga_planned",
        "calls_classifier": "doga"}

    plan_path.write_text(json.dumps({"base_config": "configs/smoke.json", "holdout_domain": "x",
                                     "eval": {"turns_per_stag": 2}}))
    with pytest.raises(ConfigError, match="turns_per_stag"):
        ablations.load_plan(str(plan_path))
    # Research arms are measured on validation customers; the plan may not spend the test customers on them.
    plan_path.write_text(json.dumps({"base_config": "configs/smoke.json", "holdout_domain": "x",
                                     "eval": {"customers": "test"}}))
    with pytest.raises(ConfigError, match="validation"):
        ablations.load_plan(str(plan_path))
    plan_path.write_text(json.dumps({"holdout_domain": "x", "calls": {"calls_turn": 0}}))
    with pytest.raises(ConfigError, match="'calls' must map"):
        ablations.load_plan(str(plan_path))


def test_an_arm_of_another_recipe_is_trained_again_in_a_clean_folder(tmp_path):
    arm = tmp_path / "grpo"
    (arm / "final").mkdir(parents=True)
    (arm / "metrics.jsonl").write_text('{"step": 0}\n')               # an unfinished run of another recipe
    seen = []

    def train():
        seen.append(sorted(p.name for p in arm.iterdir()) if arm.exists() else None)
        (arm / "final").mkdir(parents=True)
        (arm / "final" / "config.json").write_text("{}")
    assert ablations.train_once(str(arm / "final"), {"lr": 1}, train, str(arm)) == str(arm / "final")
    assert seen == [None]                                           # trained into an empty place
    ablations.train_once(str(arm / "final"), {"lr": 1}, lambda: seen.append("again"), str(arm))
    assert seen == [None]                                           # the same recipe: reused
