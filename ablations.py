"""The paper's ablations, trained and evaluated: `make ablations` (AI-Salesman, arXiv 2511.12133).

The plan (configs/ablations.json, `load_plan`) names overrides for every trained arm of the default recipe
(config.py's defaults, or a `base_config` file), the SFT stage's pretraining overrides, a domain to hold
out and the evaluation settings. The arms:

* base (pretrain.py), SFT (pretrain.py --sft on the base), SFT then GRPO, direct GRPO, GRPO without
  the Bayesian reward (reward.bayes = 0), GRPO trained on static prompts only (grpo.outline_share = 0,
  where direct GRPO trains as DOGA prompts), each measured with static and with DOGA prompting;
* direct GRPO with DOGA whose predicted intents are flipped at 20% (`doga_noisy`);
* not the paper's: GRPO drawing its prompts as the corpus has them (grpo.move_balance = 1, `grpo_corpus_mix`),
  where direct GRPO draws every move equally often;
* not the paper's: a base that writes the call's values themselves instead of slots (pretrain.slots = false, its
  own tokenizer and base), then direct GRPO on it (`grpo_raw`): what slots change;
* a domain held out of training: base and GRPO trained on the other domains, and both it and the
  all-domain GRPO model measured on that domain's test calls and products;
* ours, not the paper's: DOGA with the best scripted plan's moves (`doga_planned`) on the direct-GRPO model;
* ours, not the paper's: GRPO over whole calls (calls_grpo.py) from the direct-GRPO model, one arm per variant
  of the plan's `calls` (each a `calls` config section: turn reward only, session reward only, both, and the
  outlines' moves from DOGA's classifier instead of the plan), each measured with the prompting it trains with.

Every system is measured by evaluate.evaluate_system on the same turns and customers, under the same
reward (the common config's weights, the frozen base as the Bayesian reference), and report.py writes
the report. The arms are research choices, so they are measured on *validation* customers and turns
(evaluate.EvalSettings.customers): `make eval`'s test customers stay ones no choice was made on.

Each arm is trained once per recipe (`train_once`: config sections, starting model and data), so a rerun of
`make ablations` resumes arm by arm; the default run's base and GRPO model are reused when they were made
exactly as an arm would be (`default_base_matches`, `default_grpo_matches`).

Left out, and why: several seeds per arm and paired significance tests (a CPU budget of about one hour
for all arms; the report's 95% intervals say how far one run can be trusted).

CLI:
    python ablations.py --plan configs/ablations.json --data data --default-run runs/default \
        --work runs/ablations --out reports/ablations [--judge DIR]
"""

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict

import calls_grpo
import grpo
import pretrain
from config import ConfigError, load_config
from corpus import load_corpus, split_calls, write_corpus
from doga import ScriptLibrary
from evaluate import EvalSettings, evaluate_system, make_eval_setup, stage_prompting
from files import read_jsonl, write_json
from report import write_report
from runs import RUN_RECORD, RunLock, identity_differences, run_identity
from tokenizer import ChatTokenizer


# ----------------------------------------------------------------------------------------------
# `make ablations`: train every arm of the paper's comparisons, then evaluate them all.

def load_plan(path):
    """configs/ablations.json: base_config (optional: a config file; none, config.py's defaults), overrides
    (config sections for every trained arm), sft (pretrain overrides of the SFT stage), holdout_domain, eval
    (EvalSettings fields), calls (optional: arm name -> `calls` section overrides, one whole-call arm each)."""
    try:
        with open(path) as handle:
            plan = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable ablation plan ({error})") from None
    known = {"comment", "base_config", "overrides", "sft", "holdout_domain", "eval", "calls"}
    if set(plan) - known:
        raise ConfigError(f"{path}: unknown key(s) {sorted(set(plan) - known)} (known: {sorted(known)})")
    if not isinstance(plan.get("holdout_domain"), str):
        raise ConfigError(f"{path}: 'holdout_domain' must be a string")
    if not isinstance(plan.get("base_config", ""), str):
        raise ConfigError(f"{path}: 'base_config' must be a string")
    calls = plan.get("calls", {})
    if not isinstance(calls, dict) or not all(isinstance(v, dict) for v in calls.values()):
        raise ConfigError(f"{path}: 'calls' must map each arm's name to its calls-section overrides")
    fields = set(EvalSettings.__dataclass_fields__)
    if set(plan.get("eval", {})) - fields:
        raise ConfigError(f"{path}: eval.{sorted(set(plan['eval']) - fields)[0]} is not a known key "
                          f"(known: {sorted(fields)})")
    if plan.get("eval", {}).get("customers", "validation") != "validation":
        raise ConfigError(f"{path}: eval.customers must be 'validation': research arms are chosen between, and "
                          "the test customers are kept for make eval's headline")
    return plan


def eval_settings(plan):
    """The plan's evaluation settings, on validation customers (research arms are choices: load_plan refuses
    a plan that would measure them on the test customers)."""
    return EvalSettings(**{"customers": "validation", **plan.get("eval", {})})


def arm_config(plan, work_dir, name, extra=None):
    """The base config (config.py's defaults when the plan names none) with the plan's overrides and this
    arm's `extra` sections, written to <work>/configs/<name>.json and validated by config.load_config (which
    names a bad key)."""
    raw = {}
    if "base_config" in plan:
        with open(plan["base_config"]) as handle:
            raw = json.load(handle)
    for overrides in (plan.get("overrides", {}), extra or {}):
        for section, values in overrides.items():
            raw[section] = {**raw.get(section, {}), **values}
    path = os.path.join(work_dir, "configs", f"{name}.json")
    write_json(path, raw, indent=1)
    return load_config(path)


def train_once(model_dir, recipe, train, folder=None):
    """Run train() unless model_dir already holds a model made by the same recipe (a JSON dict of
    config sections, starting model and data), so that a rerun of make ablations resumes by arm.

    Otherwise the arm's `folder` (its run folder; default model_dir) is removed first when it exists:
    it holds an arm made by another recipe or left unfinished, and pretrain.py and grpo.py refuse to
    train into a folder that holds a run. It is this module's own work folder, and the run lock (held
    while removing) makes sure no running arm is in it.
    """
    stamp = os.path.join(model_dir, "recipe.json")
    if os.path.exists(stamp) and os.path.exists(os.path.join(model_dir, "config.json")):
        with open(stamp) as handle:
            if json.load(handle) == recipe:
                print(f"{model_dir}: already trained by this recipe, reused")
                return model_dir
    folder = folder or model_dir
    if os.path.exists(folder):
        print(f"{folder}: made by another recipe or unfinished, trained again from scratch")
        with RunLock(folder):
            shutil.rmtree(folder)
    train()
    write_json(stamp, recipe, indent=1)
    return model_dir


def default_base_matches(base_dir, config):
    """runs/default/base is reused when it was pretrained as this config says: the same architecture, values
    written the same way (slots or not) and a pretraining log of the same number of steps (its data is the same
    DATA folder, as the Makefile passes)."""
    try:
        with open(os.path.join(base_dir, "config.json")) as handle:
            saved = json.load(handle)
        slots = ChatTokenizer.load(base_dir).slots
    except (OSError, ValueError, json.JSONDecodeError):
        return False
    return (all(saved.get(key) == value for key, value in config.model.items()) and slots == config.pretrain.slots
            and len(read_jsonl(os.path.join(base_dir, "metrics.jsonl"))) == config.pretrain.steps)


def default_grpo_matches(run_dir, config, base, data_dir, library_dir):
    """runs/default's GRPO model is the direct-GRPO arm when its run record (runs.RUN_RECORD) names the same
    config (its number of steps included), base model, corpus and library, and the run finished (grpo.py
    writes final/ after its last step only)."""
    try:
        with open(os.path.join(run_dir, RUN_RECORD)) as handle:
            recorded = json.load(handle)
        same = not identity_differences(recorded, run_identity(config, base, data_dir, library_dir))
        return (same and recorded["config"]["grpo"]["steps"] == config.grpo.steps
                and os.path.exists(os.path.join(run_dir, "final", "model.safetensors")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False


def run_ablations(plan_path, data_dir, default_run, work_dir, out_dir, judge_dir=None):
    started = time.time()
    plan = load_plan(plan_path)
    settings = eval_settings(plan)
    config = arm_config(plan, work_dir, "common")
    sft_config = arm_config(plan, work_dir, "sft", {"pretrain": plan.get("sft", {})})
    no_bayes_config = arm_config(plan, work_dir, "grpo_no_bayes", {"reward": {"bayes": 0.0}})
    static_config = arm_config(plan, work_dir, "grpo_static", {"grpo": {"outline_share": 0.0}})
    mix_config = arm_config(plan, work_dir, "grpo_corpus_mix", {"grpo": {"move_balance": 1.0}})
    raw_config = arm_config(plan, work_dir, "raw", {"pretrain": {"slots": False}})
    train_file = os.path.join(data_dir, "train.jsonl")
    train_calls = load_corpus(train_file)
    test_calls = load_corpus(os.path.join(data_dir, "test.jsonl"))
    data_id = {"train": os.path.abspath(train_file), "bytes": os.path.getsize(train_file)}

    def recipe(cfg, init, *sections, data=data_id, library=None):
        return {"init": init, "data": data, "library": library,
                **{s: asdict(getattr(cfg, s)) if s != "model" else cfg.model for s in sections}}

    # The held-out domain: its calls leave the training split (split_calls puts them all in "test").
    domain = plan["holdout_domain"]
    holdout_data = os.path.join(work_dir, "holdout", "data")
    holdout_train, _ = split_calls(train_calls, test_fraction=0.0, holdout_domain=domain)
    write_corpus(os.path.join(holdout_data, "train.jsonl"), holdout_train)
    write_corpus(os.path.join(holdout_data, "test.jsonl"), [c for c in test_calls if c["domain"] == domain])
    holdout_id = {"train": os.path.abspath(holdout_data), "calls": len(holdout_train), "without": domain}

    # Script libraries (DOGA) from the training calls each model saw.
    library_dir = os.path.join(default_run, "scripts")
    if not os.path.isdir(library_dir):
        library_dir = os.path.join(work_dir, "scripts")
        ScriptLibrary.build(train_calls).save(library_dir)
    holdout_library_dir = os.path.join(work_dir, "holdout", "scripts")
    ScriptLibrary.build(holdout_train).save(holdout_library_dir)

    # Models. Every trained arm's checkpoints live under work_dir (gitignored runs/). Pretraining and GRPO
    # prompt with the outlines of the library built from the calls they train on, as `make train` does.
    pretrain_sections = ("tokenizer", "model", "pretrain")
    if default_base_matches(os.path.join(default_run, "base"), config):
        base = os.path.join(default_run, "base")
        print(f"base: reusing {base}")
    else:
        base = os.path.join(work_dir, "base")
        train_once(base, recipe(config, None, *pretrain_sections, library=library_dir),
                   lambda: pretrain.train(config, data_dir, base, library_dir=library_dir))
    models = {"base": base}
    models["sft"] = train_once(os.path.join(work_dir, "sft"), recipe(sft_config, base, "pretrain"),
                               lambda: pretrain.train(sft_config, data_dir, os.path.join(work_dir, "sft"),
                                                      sft=True, init=base))
    for name, cfg, init in (("grpo", config, base), ("sft_grpo", config, models["sft"]),
                            ("grpo_no_bayes", no_bayes_config, base), ("grpo_static", static_config, base),
                            ("grpo_corpus_mix", mix_config, base)):
        if name == "grpo" and default_grpo_matches(default_run, config, base, data_dir, library_dir):
            models[name] = os.path.join(default_run, "final")
            print(f"grpo: reusing {models[name]}")
            continue
        out = os.path.join(work_dir, name)
        models[name] = train_once(os.path.join(out, "final"), recipe(cfg, init, "grpo", "reward", library=library_dir),
                                  lambda cfg=cfg, init=init, out=out: grpo.train(cfg, init, data_dir, out,
                                                                                 library_dir=library_dir), out)
    raw_base = os.path.join(work_dir, "raw", "base")
    train_once(raw_base, recipe(raw_config, None, *pretrain_sections, library=library_dir),
               lambda: pretrain.train(raw_config, data_dir, raw_base, library_dir=library_dir))
    raw_out = os.path.join(work_dir, "raw", "grpo")
    models["grpo_raw"] = train_once(os.path.join(raw_out, "final"),
                                    recipe(config, raw_base, "grpo", "reward", library=library_dir),
                                    lambda: grpo.train(config, raw_base, data_dir, raw_out, library_dir=library_dir),
                                    raw_out)
    calls_configs = {name: arm_config(plan, work_dir, name, {"calls": overrides})
                     for name, overrides in plan.get("calls", {}).items()}
    for name, cfg in calls_configs.items():       # whole-call GRPO from the direct-GRPO policy
        out = os.path.join(work_dir, name)
        models[name] = train_once(os.path.join(out, "final"),
                                  recipe(cfg, models["grpo"], "calls", "reward", library=library_dir),
                                  lambda cfg=cfg, out=out: calls_grpo.train(cfg, models["grpo"], data_dir, out,
                                                                            library_dir), out)
    holdout_base = os.path.join(work_dir, "holdout", "base")
    train_once(holdout_base, recipe(config, None, *pretrain_sections, data=holdout_id, library=holdout_library_dir),
               lambda: pretrain.train(config, holdout_data, holdout_base, library_dir=holdout_library_dir))
    holdout_out = os.path.join(work_dir, "holdout", "grpo")
    models["holdout_grpo"] = train_once(os.path.join(holdout_out, "final"),
                                        recipe(config, holdout_base, "grpo", "reward", data=holdout_id,
                                               library=holdout_library_dir),
                                        lambda: grpo.train(config, holdout_base, holdout_data, holdout_out,
                                                           library_dir=holdout_library_dir),
                                        holdout_out)
    trained_at = time.time()

    # Evaluation: every system under the same reward (the common config's weights, bayes included).
    library, holdout_library = ScriptLibrary.load(library_dir), ScriptLibrary.load(holdout_library_dir)
    setup = make_eval_setup(config, settings, train_calls, test_calls, base, judge_dir=judge_dir)
    systems = {}
    for model_name in ("base", "sft", "sft_grpo", "grpo", "grpo_no_bayes", "grpo_static", "grpo_corpus_mix",
                       "grpo_raw"):
        for prompting in ("static", "doga"):
            name = f"{model_name}/{prompting}"
            systems[name] = evaluate_system(name, models[model_name], library, prompting, setup, out_dir)
    for name, calls_config in calls_configs.items():
        prompting = stage_prompting(calls_config)                          # the prompting it trains with
        systems[f"{name}/{prompting}"] = evaluate_system(f"{name}/{prompting}", models[name], library, prompting,
                                                         setup, out_dir)
    systems["grpo/doga_planned"] = evaluate_system("grpo/doga_planned", models["grpo"], library, "doga_planned",
                                                   setup, out_dir)
    systems["grpo/doga_noisy"] = evaluate_system("grpo/doga_noisy", models["grpo"], library, "doga_noisy",
                                                 setup, out_dir)
    domain_setup = make_eval_setup(config, settings, train_calls, test_calls, base, domain=domain, judge_dir=judge_dir)
    for model_name, model_library in (("grpo", library), ("holdout_grpo", holdout_library)):
        for prompting in ("static", "doga"):
            name = f"{model_name}@{domain}/{prompting}"
            systems[name] = evaluate_system(name, models[model_name], model_library, prompting, domain_setup, out_dir)
            systems[name]["eval_domain"] = domain

    grpo_runs = {name: os.path.dirname(models[name])
                 for name in ("grpo", "sft_grpo", "grpo_no_bayes", "grpo_static", "grpo_corpus_mix", "grpo_raw",
                              "holdout_grpo")}
    curves = {"grpo": {name: read_jsonl(os.path.join(run, "metrics.jsonl")) for name, run in grpo_runs.items()},
              "pretrain": {"base": read_jsonl(os.path.join(base, "metrics.jsonl")),
                           "sft": read_jsonl(os.path.join(models["sft"], "metrics.jsonl")),
                           "raw base": read_jsonl(os.path.join(raw_base, "metrics.jsonl")),
                           "holdout base": read_jsonl(os.path.join(holdout_base, "metrics.jsonl"))}}
    meta = {"plan": plan_path, "plan_contents": plan, "data": data_dir, "work": work_dir, "models": models,
            **asdict(settings), "turns": len(setup.turns), "holdout_turns": len(domain_setup.turns),
            "judge": judge_dir, "training_seconds": round(trained_at - started, 1),
            "wall_seconds": round(time.time() - started, 1)}
    write_report(out_dir, "AI-Salesman ablations", systems, curves, meta)
    return systems

# ----------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and evaluate every arm of the paper's ablations.")
    parser.add_argument("--plan", default="configs/ablations.json")
    parser.add_argument("--data", default="data")
    parser.add_argument("--default-run", default="runs/default", help="its base/ and scripts/ are reused "
                                                                      "when they match the plan")
    parser.add_argument("--work", default="runs/ablations", help="trained arms (checkpoints) go here")
    parser.add_argument("--out", default="reports/ablations")
    parser.add_argument("--judge", default=None, help="local instruct checkpoint folder grading replies 1-10")
    args = parser.parse_args(argv)
    try:
        run_ablations(args.plan, args.data, args.default_run, args.work, args.out, args.judge)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
