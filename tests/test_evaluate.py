"""Evaluation: intervals against hand-computed and table values, each metric on hand-made cases, the
batched closed loop against plain sequential calls, the judge's unparsable path, and a whole report
(report.py) from a tiny smoke-config run built here.

Log-probs run on the kernels' PyTorch engine here (KERNELS_BACKEND=torch): interpreting the Triton kernels
would make the small training run of the report test several times slower, and tests/test_kernels.py
checks that both engines agree."""
import json
import math
import random

import numpy as np
import pytest

import ablations
import calls_grpo
import evaluate
import grpo
import pretrain
import report
from bounds import dot_bound
from config import RewardConfig, load_config
from corpus import write_corpus
from doga import ScriptLibrary
from files import read_jsonl
from model import save_pretrained
from plans import BEST_PLAN
from retrieval import HashedTfidfEmbedder
from reward import CompositeReward
from sales import STAGES, load_world
from simulate import Salesperson, run_call, simulate_call
from tiny import tiny_chat_model
from tokenizer import format_assistant


@pytest.fixture(scope="module", autouse=True)
def torch_kernels():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNELS_BACKEND", "torch")
        yield


# ----------------------------------------------------------------------------------------------
# Confidence intervals.

def test_wilson_interval_solves_the_score_test_quadratic():
    # By hand: the Wilson bounds are the p with (p_hat - p)^2 = z^2 p (1 - p) / n, i.e. the roots of
    # (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0.
    z = 1.959963984540054
    for successes, n in ((8, 10), (1, 20), (37, 50)):
        p_hat = successes / n
        a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
        root = math.sqrt(b * b - 4 * a * c)
        expected = ((-b - root) / (2 * a), (-b + root) / (2 * a))
        assert evaluate.wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)
    assert evaluate.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)   # published example
    assert evaluate.wilson_interval(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)))   # x = 0: [0, z^2/(n+z^2)]
    assert evaluate.rate(3, 4)["value"] == 0.75 and evaluate.rate(3, 4)["method"] == "wilson"


def test_student_t_quantiles_match_the_table():
    for df, table in ((1, 12.7062), (4, 2.7764), (9, 2.2622), (30, 2.0423)):   # t(0.975, df), printed tables
        assert evaluate.student_t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)


def test_mean_interval_by_hand():
    # [1..5]: mean 3, s = sqrt(10 / 4), half width = t(0.975, 4) * s / sqrt(5) = 2.776445 * 0.707107
    result = evaluate.mean_with_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert result["value"] == 3.0
    assert (result["low"], result["high"]) == pytest.approx((3 - half, 3 + half), abs=1e-5)
    single = evaluate.mean_with_interval([7])
    assert single["value"] == 7 and single["low"] is None                   # no interval from one value


# ----------------------------------------------------------------------------------------------
# Turn level on hand-made answers.

@pytest.fixture(scope="module")
def scorer():
    calls = [simulate_call(i, seed=11, noise=0.0) for i in range(16)]
    tokenizer, model = tiny_chat_model(calls)
    embedder = HashedTfidfEmbedder().fit([t["text"] for c in calls for t in c["turns"]])
    reward_fn = CompositeReward(RewardConfig(), model, tokenizer, embedder)
    return calls, tokenizer, model, reward_fn


def test_reference_answers_score_similarity_one_and_intent_appropriate(scorer):
    calls, _, _, reward_fn = scorer
    selected = evaluate.select_turns(calls, per_stage=2, seed=0)
    assert {s.stage for _, s in selected} <= set(STAGES) and len(selected) >= 8
    assert all(s.labels["on_stage"] and s.labels["faithful"] for _, s in selected)
    answers = [(format_assistant("Say what a good salesperson says.", s.target_reply), False) for _, s in selected]
    records = evaluate.score_turns(selected, answers, reward_fn)
    for record, (_, sample) in zip(records, selected):
        # the float32 sum of squares of a unit vector: within gamma_m of 1 (tests/test_reward.py says why)
        nonzero = np.count_nonzero(reward_fn.embedder.encode([sample.target_reply])[0])
        assert abs(record["similarity"] - 1) <= dot_bound(nonzero + 3)
        assert record["intent_appropriate"] and record["reply_intent"] == sample.intent
        assert record["format"] == 1.0 and record["faithfulness"] == 1.0
        assert record["reply_words"] == len(sample.target_reply.split())
    summary = evaluate.aggregate_turns(records)
    assert summary["overall"]["intent_appropriateness"]["value"] == 1.0
    assert summary["overall"]["n"] == len(records)
    for stage in STAGES:
        rows = [r for r in records if r["stage"] == stage]
        assert summary["capabilities"][stage]["n"] == len(rows)
        if rows:
            assert summary["capabilities"][stage]["total"] == pytest.approx(sum(r["total"] for r in rows) / len(rows))


def test_wrong_price_malformed_and_truncated_answers(scorer):
    calls, _, _, reward_fn = scorer
    priced = next((c, s) for c, s in evaluate.select_turns(calls, per_stage=50, seed=0)
                  if f"${s.product['price']}" in s.target_reply)
    call, sample = priced
    wrong = sample.target_reply.replace(f"${sample.product['price']}", f"${sample.product['price'] + 13}")
    answers = [(format_assistant("Quote it.", wrong), False),                   # a wrong price
               ("no thought block, just talk", False),                           # malformed
               (format_assistant("Quote it.", sample.target_reply), True),          # cut at the length limit
               (format_assistant("Greet.", "Good morning, lovely weather today."), False),   # another intent
               (format_assistant("Quote it.", sample.target_reply), False)]         # the reference itself
    records = evaluate.score_turns([priced] * 5, answers, reward_fn)
    # Faithfulness is in [-1, 1]; the wrong price costs against the reference's own facts.
    assert -1.0 <= records[0]["faithfulness"] < records[4]["faithfulness"] and records[0]["format"] == 1.0
    assert records[1]["format"] == 0.0 and records[1]["total"] < records[0]["total"]
    assert records[2]["format"] == 0.0 and records[2]["truncated"]
    assert not records[3]["intent_appropriate"]
    summary = evaluate.aggregate_turns(records)["overall"]
    assert summary["intent_appropriateness"]["value"] == pytest.approx(
        sum(r["intent_appropriate"] for r in records) / 5)
    assert summary["truncated"] == 0.2


# ----------------------------------------------------------------------------------------------
# Closed loop.

def test_batched_calls_equal_sequential_calls():
    """Threads only batch the replies: each call is what run_call gives when played alone."""
    products = [p for ps in load_world().products.values() for p in ps][:3]
    jobs = evaluate.closed_loop_jobs(products, 2, seed=4)
    salespeople = {call_id: Salesperson(product, persona["visible"], random.Random(call_id))
                   for call_id, product, persona, _ in jobs}
    batched = evaluate.play_calls(lambda views: [salespeople[v["id"]](v) for v in views], jobs)

    again = evaluate.closed_loop_jobs(products, 2, seed=4)                     # fresh rngs, same seeds
    sequential = [run_call(product, persona, Salesperson(product, persona["visible"], random.Random(call_id)), rng,
                           call_id=call_id) for call_id, product, persona, rng in again]
    assert batched == sequential
    assert [c["customer"] for c in batched] == [p for _, _, p, _ in again]      # same personas for every system


def test_wrong_price_counts_a_violation_every_turn():
    products = [p for ps in load_world().products.values() for p in ps][:2]
    jobs = evaluate.closed_loop_jobs(products, 3, seed=0)

    def wrong_price(views):
        return [("", f"It costs just $987654 a month, {v['customer']['visible']['name']}.") for v in views]
    calls = evaluate.play_calls(wrong_price, jobs)
    metrics = evaluate.closed_loop_metrics(calls)
    sales_turns = [sum(t["role"] == "sales" for t in c["turns"]) for c in calls]
    assert metrics["calls"] == 6
    assert metrics["violations_per_call"]["value"] == pytest.approx(sum(sales_turns) / 6)
    assert metrics["violations_per_call"]["value"] >= 1
    assert metrics["turns"]["value"] == pytest.approx(sum(len(c["turns"]) for c in calls) / 6)
    hung_up = sum(c["outcome"] == "hung_up" for c in calls)
    assert metrics["hang_up"]["value"] == hung_up / 6 and metrics["conversion"]["value"] == 0.0


def test_closed_loop_metrics_on_hand_made_calls():
    product = load_world().products["restaurant_marketing"][0]                 # Starter Boost, $49 per month
    visible = {"name": "Ana Silva", "monthly_orders": 320}

    def call(outcome, texts):
        turns = [{"role": "sales", "text": text, "labels": {"faithful": "$" not in text or "$49" in text,
                                                            "on_stage": True}} for text in texts]
        return {"outcome": outcome, "product": product, "customer": {"visible": visible},
                "turns": turns + [{"role": "customer"}]}
    right, wrong = "It is $49 per month.", "It is $59 per month, or $69, or $59."
    calls = [call("converted", [right, right]), call("hung_up", [wrong]), call("declined", [wrong, wrong, right]),
             call("converted", ["With 320 orders a month you can grow."])]
    calls[3]["turns"][0]["from_outline"] = True
    metrics = evaluate.closed_loop_metrics(calls)
    assert metrics["conversion"]["value"] == 0.5
    assert (metrics["conversion"]["low"], metrics["conversion"]["high"]) == evaluate.wilson_interval(2, 4)
    assert metrics["hang_up"]["value"] == 0.25
    assert metrics["violations_per_call"]["value"] == 0.75                    # (0 + 1 + 2 + 0) / 4
    assert metrics["unsupported_facts_per_call"]["value"] == 1.5              # (0 + 2 + 4 + 0) / 4: distinct per turn
    assert metrics["turns"]["value"] == 2.75                                   # (3 + 2 + 4 + 2) / 4
    assert metrics["repeated_reply"]["value"] == 0.5                           # the first and the third call
    assert metrics["from_outline_per_call"]["value"] == 0.25


# ----------------------------------------------------------------------------------------------
# The judge.

def test_parse_judge_score():
    assert evaluate.parse_judge_score("Score: 7") == 7
    assert evaluate.parse_judge_score("The reply is fine. score = 10.") == 10
    assert evaluate.parse_judge_score("I'd give it 4/10 because") == 4
    assert evaluate.parse_judge_score(" 9. ") == 9
    for text in ("Score: 0", "Score: 11", "no idea", "", "Score: 7.5", "12/10"):
        assert evaluate.parse_judge_score(text) is None, text


def test_judge_retries_then_counts_missing(tmp_path, scorer, monkeypatch):
    calls, tokenizer, model, _ = scorer
    save_pretrained(model, str(tmp_path))
    tokenizer.save(str(tmp_path))
    samples = [s for _, s in evaluate.select_turns(calls, per_stage=1, seed=0)][:3]
    judge = evaluate.Judge(str(tmp_path), retries=2, max_new_tokens=6)
    scores, attempts = judge.score(samples, ["Hello there."] * 3)              # a random model: gibberish
    assert scores == [None] * 3 and attempts == [3] * 3

    answers = iter([[("hmm", False), ("Score: 6", False), ("??", False)],     # first try: one parses
                    [("Score: 8", False), ("still nothing", False)],          # retry: the first parses
                    [("nope", False)]])                                        # last retry: missing
    monkeypatch.setattr(evaluate, "generate_batch", lambda *args, **kwargs: next(answers))
    scores, attempts = judge.score(samples, ["a", "b", "c"])
    assert scores == [8, 6, None] and attempts == [2, 1, 3]
    records = [{"stage": s.stage, "intent_appropriate": True, "reply_words": 1, "target_words": 2,
                "truncated": False, "judge": j,
                **{k: 0.0 for k in evaluate.REWARD_KEYS}} for s, j in zip(samples, scores)]
    overall = evaluate.aggregate_turns(records)["overall"]
    assert overall["judge"] == 7.0 and overall["judge_missing"] == 1


# ----------------------------------------------------------------------------------------------
# A whole report from a tiny run of the smoke config.

def test_report_from_a_smoke_run(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    calls = [simulate_call(i, seed=2) for i in range(60)]
    write_corpus(str(data / "train.jsonl"), calls[:50])
    write_corpus(str(data / "test.jsonl"), calls[50:])
    raw = json.load(open("configs/smoke.json"))
    raw["pretrain"].update(steps=6, batch_size=4, seq_len=128)
    raw["grpo"].update(steps=2, max_completion_length=8, save_steps=0, log_completion_steps=0, eval_prompts=1)
    raw["calls"].update(steps=1, max_turns=2, max_completion_length=8, save_steps=0)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = load_config(str(tmp_path / "config.json"))
    pretrain.train(config, str(data), str(run / "base"))
    grpo.train(config, str(run / "base"), str(data), str(run))
    ScriptLibrary.build(calls[:50], progress=False).save(str(run / "scripts"))
    calls_grpo.train(config, str(run / "final"), str(data), str(run / "calls"), str(run / "scripts"))
    # make ablations reuses this run as its direct-GRPO arm only when it was made exactly as the arm would be.
    assert ablations.default_grpo_matches(str(run), config, str(run / "base"), str(data), None)
    assert not ablations.default_grpo_matches(str(run), config, str(run / "base"), str(data), str(run / "scripts"))
    other = load_config(str(tmp_path / "config.json"))
    other.reward.bayes = 0.0
    assert not ablations.default_grpo_matches(str(run), other, str(run / "base"), str(data), None)

    settings = evaluate.EvalSettings(turns_per_stage=1, calls_per_product=1, batch_size=32)
    out = tmp_path / "report"
    evaluate.evaluate_run(str(tmp_path / "config.json"), str(run), str(data), str(out), settings)

    report = json.load(open(out / "report.json"))
    assert set(report["systems"]) == {f"{model}/{prompting}" for model in ("base", "grpo")
                                      for prompting in ("static", "doga", "doga_planned")} | {"calls/doga_planned"}
    for name, system in report["systems"].items():
        assert set(system["capabilities"]) == set(STAGES)
        for summary in list(system["capabilities"].values()) + [system["overall"]]:
            if summary["n"]:
                assert 0 <= summary["intent_appropriateness"]["value"] <= 1
                expected = evaluate.REWARD_KEYS + ("reply_words", "target_words", "truncated")
                assert all(key in summary for key in expected)
        loop = system["closed_loop"]
        assert loop["calls"] == 12                                              # 12 products x 1
        for key in ("conversion", "hang_up"):
            assert loop[key]["method"] == "wilson" and loop[key]["low"] <= loop[key]["value"] <= loop[key]["high"]
        for key in ("turns", "violations_per_call", "off_stage_per_call"):
            assert loop[key]["method"] == "student_t" and loop[key]["low"] <= loop[key]["value"] <= loop[key]["high"]
        folder = out / "systems" / name.replace("/", "__")
        assert len((folder / "turns.jsonl").read_text().splitlines()) == system["overall"]["n"]
        assert len((folder / "calls.jsonl").read_text().splitlines()) == 12
        # make eval measures the test customers: turns of the test half of the held-out calls, test personas
        test_half = {call["id"] for call in evaluate.held_out_half(calls[50:], "test")}
        assert {turn["call_id"] for turn in read_jsonl(str(folder / "turns.jsonl"))} <= test_half
        assert [c["customer"] for c in read_jsonl(str(folder / "calls.jsonl"))] == \
            [persona for _, _, persona, _ in evaluate.closed_loop_jobs(
                [p for _, ps in sorted(load_world().products.items()) for p in ps], 1, 0, "test")]
    assert report["meta"]["customers"] == "test"
    assert {c["verdict"] for c in report["claims"] if c["systems"].startswith("grpo/doga vs sft")} == {"not measured"}
    # References are marked as such, in the JSON, the tables and the verdicts.
    assert {system["kind"] for system in report["systems"].values()} == {"system"}
    assert len(report["references"]) == 5 and {r["kind"] for r in report["references"].values()} == {"reference"}
    assert not [c for c in report["claims"] if "scripted" in c["systems"]]

    markdown = (out / "report.md").read_text()
    assert "| system | opening | business_analysis |" in markdown and "| grpo/doga |" in markdown
    assert "Customers: **test**" in markdown
    rows = [line.split(" | ")[0][2:] for line in markdown.splitlines() if line.startswith("| ")]
    assert rows.count("grpo/doga") == 4                                          # every table
    for name in report["references"]:
        assert name not in rows and rows.count(f"reference: {name}") == 1      # the closed loop's table
    # The best scripted plan's row prints the plan it follows.
    plan = report["references"]["best scripted plan"]["plan"]
    assert plan == BEST_PLAN.describe() and f"* reference: best scripted plan: {plan}" in markdown
    assert "DOGA beats static prompting" in markdown and "training_and_capabilities.png" in markdown
    assert (out / "training_and_capabilities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # calls.html: every played call; a DOGA system's turns keep the outline they were prompted with
    assert (out / "calls.html").read_text().count('<details class="call') == 12 * (len(report["systems"]) + 5)
    for name, prompted in (("grpo__doga", True), ("grpo__doga_planned", True), ("grpo__static", False)):
        turns = [t for c in read_jsonl(str(out / "systems" / name / "calls.jsonl")) for t in c["turns"]]
        assert all(("outline" in t) == prompted for t in turns if t["role"] == "sales")
    # A whole-call stage trained from another GRPO model than the run's (an earlier make train) is refused.
    record_path = run / "calls" / "final" / "run.json"
    record = json.loads(record_path.read_text())
    record["base_model"]["fingerprint"] = "0" * 64
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="another model"):
        evaluate.whole_call_stage(str(run))


def test_verdicts_are_for_systems_only():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def entry(kind, conversion):
        summary = {"n": 4, "intent_appropriateness": {"value": 0.5, "low": 0.2, "high": 0.8}, "total": 1.0}
        return {"kind": kind, "capabilities": {stage: summary for stage in STAGES}, "overall": summary,
                "closed_loop": {"conversion": {"value": conversion, "low": conversion - 0.1,
                                               "high": conversion + 0.1}}}
    systems = {"grpo/doga": entry("system", 0.5), "grpo/static": entry("system", 0.2),
               "base/doga": entry("reference", 0.1)}
    verdicts = {row["systems"]: row["verdict"] for row in report.claims_table(systems)}
    assert verdicts["grpo/doga vs grpo/static"] == "agrees"
    # base/doga is measured but marked a reference here: no claim about it gets a verdict.
    assert verdicts["grpo/doga vs base/doga"] == "not measured"
    assert not [claim for claim in verdicts if claim.startswith("base/")]
    # A whole-call arm is measured with DOGA only: compared with the GRPO model it starts from, never with a
    # static prompting nobody ran.
    verdicts = {row["systems"]: row["verdict"] for row in
                report.claims_table({**systems, "calls_both/doga": entry("system", 0.8)})}
    assert verdicts["calls_both/doga vs grpo/doga"] == "agrees"
    assert "calls_both/doga vs calls_both/static" not in verdicts

    figure, axes = plt.subplots()
    report.capability_bars(axes, systems)
    _, labels = axes.get_legend_handles_labels()
    plt.close(figure)
    assert labels == ["grpo/doga", "grpo/static", "reference: base/doga"]           # systems first
    with pytest.raises(ValueError, match="kind"):
        report.write_report("unused", "t", {"grpo/doga": {k: v for k, v in systems["grpo/doga"].items()
                                                          if k != "kind"}}, {}, {})


def test_claim_verdict_judges_conversion_by_its_intervals():
    def system(conversion, low, high, capability=0.5):
        return {"overall": {"intent_appropriateness": {"value": capability, "low": 0.4, "high": 0.6}, "total": 1.0},
                "closed_loop": {"conversion": {"value": conversion, "low": low, "high": high}}}
    # Conversion decides, whatever the capability score says.
    assert report.claim_verdict(system(0.6, 0.5, 0.7, 0.1), system(0.3, 0.2, 0.4, 0.9), "higher")[1] == "agrees"
    assert report.claim_verdict(system(0.5, 0.4, 0.6), system(0.4, 0.3, 0.5), "higher")[1] == \
        "agrees in direction, within noise"
    assert report.claim_verdict(system(0.2, 0.1, 0.3), system(0.6, 0.5, 0.7), "higher")[1] == "disagrees"
    assert report.claim_verdict(system(0.2, 0.1, 0.3), system(0.6, 0.5, 0.7), "close")[1] == "disagrees"
    assert report.claim_verdict(system(0.5, 0.4, 0.6), system(0.6, 0.5, 0.7), "close")[1] == "agrees"
    measured = report.claim_verdict(system(0.6, 0.5, 0.7), system(0.3, 0.2, 0.4), "higher")[0]
    assert measured.startswith("conversion 60% [50%, 70%] vs 30% [20%, 40%] (+30%)")


def test_the_seed_table_is_the_mean_over_seeds():
    def entry(conversion, unsupported, ia):
        return {"kind": "system", "closed_loop": {"conversion": {"value": conversion},
                                                  "unsupported_facts_per_call": {"value": unsupported}},
                "overall": {"intent_appropriateness": {"value": ia}}}
    systems = {"grpo/doga": entry(0.5, 0.0, 0.9), "grpo-seed1/doga": entry(0.75, 0.3, 0.8),
               "grpo-seed2/doga": entry(0.625, 0.0, 0.7), "grpo/static": entry(0.1, 0.0, 0.5),
               "base/doga": entry(0.9, 0.0, 0.9), "calls/doga_planned": entry(0.25, 0.0, 0.5),
               "calls-seed1/doga_planned": entry(1.0, 0.1, 0.6), "calls_both/doga_planned": entry(0.0, 0.0, 0.0)}
    table = report.seed_table(systems)
    # static has one seed; the base is no seeded model; calls_both is an arm, not a seed of calls
    assert set(table) == {"grpo/doga", "calls/doga_planned"}
    row = table["grpo/doga"]
    assert row["mean"] == pytest.approx((0.5 + 0.75 + 0.625) / 3) and (row["low"], row["high"]) == (0.5, 0.75)
    assert row["unsupported"] == pytest.approx(0.1) and row["ia"] == pytest.approx(0.8)
    assert list(row["seeds"]) == ["grpo/doga", "grpo-seed1/doga", "grpo-seed2/doga"]
    row = table["calls/doga_planned"]
    assert row["mean"] == pytest.approx(0.625) and (row["low"], row["high"]) == (0.25, 1.0)
    assert list(row["seeds"]) == ["calls/doga_planned", "calls-seed1/doga_planned"]
