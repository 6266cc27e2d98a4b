"""The evaluation report of AI-Salesman (arXiv 2511.12133): the paper's claims beside what we measured.

evaluate.py (`make eval`) and ablations.py (`make ablations`) measure systems; this module writes what
they measured to <out>/:

* report.md: the capability score (intent appropriateness) and the mean total reward per capability,
  the judge's scores when one ran, the turn-level terms, the closed loop with its 95% intervals, the
  paper's claims beside what we measured, the plot, and the provenance of the run;
* report.json: {"systems": {"<model>/<prompting>": {"kind", "capabilities", "overall", "closed_loop", ...}},
  "references": {"<name>": {"kind", "closed_loop", "plan" (a scripted plan's, in words)}}, "claims": [...],
  "seeds": {...}, "meta": {...}}, the numbers behind every table (`seeds`: GRPO over several training seeds,
  when make seeds ran);
* training_and_capabilities.png: GRPO reward and pretraining loss per step, capability score per system;
* calls.html: every call the systems played (<out>/systems/*/calls.jsonl), each turn annotated, to audit by
  eye (calls_page.py).

Every entry has a `kind` (KINDS): a *system* (a model with a prompting, what one could deploy) or a *reference*
(a salesperson without a trained model, evaluate.reference_rows). References are labelled as such in the closed-loop
table, the only one they appear in, and never get a verdict, so a reader never takes one for a system.

The claims (`paper_claims`): each comparison the paper reports, stated qualitatively (no number is
copied), with its direction, between systems only; the verdict is the sign of the difference in closed-loop
conversion against that direction, "within noise" when the two 95% intervals overlap.

Left out on purpose: significance tests between systems (one seed per arm; the intervals say how far a
run can be trusted) and interactive plots (a PNG reads anywhere). matplotlib, a dependency of the
evaluation only, is imported where the plot is drawn.
"""

import io
import json
import os

import numpy as np

from calls_page import write_calls_page
from files import write_bytes, write_json, write_text
from sales import STAGES


KINDS = ("system", "reference")
SEEDED = ("grpo", "calls")      # models make seeds trains again with other seeds (grpo.py, then calls_grpo.py)


# ----------------------------------------------------------------------------------------------
# The paper's claims, and what we measured for each.

def paper_claims(systems):
    """(claim, the system it is about, the system it is compared with, the direction the paper reports):
    "higher": the first should score higher; "close": the first should not fall clearly below the second."""
    models = sorted({name.split("/")[0] for name in systems})
    # Whole-call models are measured with the prompting they train with only (make eval, ablations.py).
    calls_arms = [m for m in models if m.startswith("calls")]
    claims = [("DOGA beats static prompting", f"{m}/doga", f"{m}/static", "higher") for m in models
              if m not in calls_arms]
    claims += [("GRPO improves on the base model (implied by the paper's main result)", "grpo/doga", "base/doga",
                "higher"),
               ("Direct GRPO beats SFT then GRPO", "grpo/doga", "sft_grpo/doga", "higher"),
               ("Direct GRPO beats SFT alone (implied by the paper's main result)", "grpo/doga", "sft/doga", "higher"),
               ("Removing the Bayesian reward hurts", "grpo/doga", "grpo_no_bayes/doga", "higher"),
               ("Intent-label noise degrades DOGA", "grpo/doga", "grpo/doga_noisy", "higher"),
               ("Not the paper's: GRPO on DOGA's prompts beats GRPO on static prompts, with DOGA", "grpo/doga",
                "grpo_static/doga", "higher"),
               ("Not the paper's: GRPO on every move equally often beats GRPO on the corpus's mix of moves, with DOGA",
                "grpo/doga", "grpo_corpus_mix/doga", "higher")]
    claims += [(f"Not the paper's: GRPO over whole calls ({model}) improves on the GRPO model it starts from, with "
                f"the prompting it trains with", name, f"grpo/{prompting}", "higher")
               for name in systems for model, _, prompting in [name.partition("/")]
               if model in calls_arms and "-seed" not in model]
    claims += [("Not the paper's: DOGA with the best scripted plan's moves beats DOGA's classified moves",
                f"{m}/doga_planned", f"{m}/doga", "higher") for m in models
               if f"{m}/doga_planned" in systems and f"{m}/doga" in systems]
    claims += [("Transfers to a domain held out of training", name, name.replace("holdout_grpo", "grpo"), "close")
               for name in systems if name.startswith("holdout_grpo")]
    return claims


def claim_verdict(first, second, direction):
    """Measured conversion (the closed loop, the headline), capability score (intent appropriateness) and total
    reward of both systems, and a verdict on conversion: the sign against the paper's direction, 'within
    noise' when the two 95% intervals overlap."""
    a, b = first["overall"]["intent_appropriateness"], second["overall"]["intent_appropriateness"]
    ca, cb = first["closed_loop"]["conversion"], second["closed_loop"]["conversion"]
    difference = ca["value"] - cb["value"]
    overlap = ca["low"] <= cb["high"] and cb["low"] <= ca["high"]
    if direction == "close":
        verdict = "agrees" if overlap or difference >= 0 else "disagrees"
    elif difference == 0:
        verdict = "no difference"
    elif difference > 0:
        verdict = "agrees in direction, within noise" if overlap else "agrees"
    else:
        verdict = "disagrees in direction, within noise" if overlap else "disagrees"
    measured = (f"conversion {ca['value']:.0%} [{ca['low']:.0%}, {ca['high']:.0%}] vs {cb['value']:.0%} "
                f"[{cb['low']:.0%}, {cb['high']:.0%}] ({difference:+.0%}); capability {a['value']:.0%} vs "
                f"{b['value']:.0%}; total reward {first['overall']['total']:.3f} vs {second['overall']['total']:.3f}")
    return measured, verdict


def claims_table(systems):
    """The paper's claims with what we measured; a claim about a reference is not measured."""
    systems = {name: result for name, result in systems.items() if result["kind"] == "system"}
    rows = []
    for claim, first, second, direction in paper_claims(systems):
        if first in systems and second in systems:
            measured, verdict = claim_verdict(systems[first], systems[second], direction)
        else:
            measured, verdict = "not run here (make ablations runs it)", "not measured"
        rows.append({"claim": claim, "systems": f"{first} vs {second}", "measured": measured, "verdict": verdict})
    return rows


# ----------------------------------------------------------------------------------------------
# The report: markdown, JSON and a plot.

def plot(path, curves, systems):
    """Three panels: GRPO reward per step, pretraining/SFT loss per step, capability score per system."""
    import matplotlib  # an evaluation dependency only (requirements-test.txt), so imported here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rewards, losses, scores) = plt.subplots(1, 3, figsize=(18, 5))
    for label, rows in curves.get("grpo", {}).items():
        rewards.plot([r["step"] for r in rows], [r["reward_mean"] for r in rows], label=label)
    rewards.set(title="GRPO: mean reward per step (each run's own weights)", xlabel="step", ylabel="reward")
    for label, rows in curves.get("pretrain", {}).items():
        losses.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    losses.set(title="Pretraining / SFT loss", xlabel="step", ylabel="cross-entropy")
    capability_bars(scores, systems)
    for axes in (rewards, losses, scores):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())


def capability_bars(axes, systems):
    """Capability score per capability, one bar per system."""
    columns = list(STAGES) + ["overall"]
    width = 0.8 / max(1, len(systems))
    for k, (name, result) in enumerate(in_report_order(systems)):
        values = [result["capabilities"][s].get("intent_appropriateness", {}).get("value") or 0.0 for s in STAGES]
        values.append(result["overall"]["intent_appropriateness"]["value"])
        axes.bar(np.arange(len(columns)) + k * width, values, width, label=row_name(name, result))
    axes.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, [c.replace("_", "\n") for c in columns], fontsize=7)
    axes.set(title="Capability score (intent appropriateness)", ylim=(0, 1))


def in_report_order(entries):
    """(name, entry) of systems first, then references, each in the order they came."""
    return sorted(entries.items(), key=lambda item: KINDS.index(item[1]["kind"]))


def row_name(name, entry):
    """A row's name in the tables and the legend: a reference says what it is."""
    return name if entry["kind"] == "system" else f"{entry['kind']}: {name}"


def _percent(entry):
    return "-" if not entry or entry.get("value") is None else f"{entry['value']:.0%}"


def _interval(entry, fmt):
    if entry.get("value") is None:
        return "-"
    if entry.get("low") is None:
        return format(entry["value"], fmt)
    return f"{format(entry['value'], fmt)} [{format(entry['low'], fmt)}, {format(entry['high'], fmt)}]"


def capability_table(systems, cell):
    header = ["system"] + list(STAGES) + ["overall", "conversion"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in in_report_order(systems):
        cells = [cell(result["capabilities"][s]) for s in STAGES] + [cell(result["overall"])]
        cells.append(_percent(result["closed_loop"]["conversion"]))
        lines.append(f"| {row_name(name, result)} | " + " | ".join(cells) + " |")
    return lines


def seed_table(systems):
    """Trained models over seeds: {"<model>/<prompting>": {"seeds": {name: conversion}, "mean", "low", "high",
    "unsupported", "ia"}} for every GRPO or whole-call model (SEEDED) measured with a prompting on more than one
    seed (`grpo/<p>` is make train's seed, `grpo-seed<N>/<p>` the others: make seeds; `calls/<p>` likewise). The
    mean over seeds is the figure to quote; low and high are the worst and best seed."""
    table = {}
    for name, result in systems.items():
        model, _, prompting = name.partition("/")
        family, _, seed = model.partition("-seed")
        if family in SEEDED and (seed == "" or seed.isdigit()):
            table.setdefault(f"{family}/{prompting}", {})[name] = result
    rows = {}
    for prompting, runs in table.items():
        if len(runs) < 2:
            continue
        conversion = [r["closed_loop"]["conversion"]["value"] for r in runs.values()]
        rows[prompting] = {"seeds": {name: r["closed_loop"]["conversion"]["value"] for name, r in runs.items()},
                           "mean": float(np.mean(conversion)), "low": min(conversion), "high": max(conversion),
                           "unsupported": float(np.mean([r["closed_loop"]["unsupported_facts_per_call"]["value"]
                                                         for r in runs.values()])),
                           "ia": float(np.mean([r["overall"]["intent_appropriateness"]["value"]
                                                for r in runs.values()]))}
    return rows


def write_report(out_dir, title, systems, curves, meta, references=None):
    """reports/<run>/report.md, report.json and training_and_capabilities.png. `references`: closed-loop rows
    of salespeople without a trained model (evaluate.reference_rows), listed under the systems."""
    references = references or {}
    for entries, kinds in ((systems, ("system",)), (references, ("reference",))):
        for name, entry in entries.items():
            if entry.get("kind") not in kinds:
                raise ValueError(f"report entry {name!r}: kind {entry.get('kind')!r}, expected one of {kinds}")
    claims = claims_table(systems)
    seeds = seed_table(systems)
    write_json(os.path.join(out_dir, "report.json"),
               {"systems": systems, "references": references, "claims": claims, "seeds": seeds, "meta": meta},
               indent=1)
    plot(os.path.join(out_dir, "training_and_capabilities.png"), curves, systems)

    def mean(key, fmt=".3f"):
        return lambda summary: "-" if summary.get("n", 0) == 0 else format(summary[key], fmt)

    some = next(iter(systems.values()))
    lines = [f"# {title}", "",
             f"{meta['turns']} held-out turns ({meta['turns_per_stage']} per capability at most, good reference "
             f"turns only); closed loop: {meta['calls_per_product']} calls per product ({some['closed_loop']['calls']} "
             f"per system on all domains). Greedy decoding; one seed ({meta['seed']}). "
             "Bayesian reward terms are under the frozen base model for every system.", "",
             f"Customers: **{meta['customers']}**. The closed loop plays the {meta['customers']} customers and "
             f"the held-out turns come from the {meta['customers']} half of the held-out calls (recipes and "
             "research arms are chosen on validation customers; test customers, on which no choice was made, give "
             "the headline). No evaluation customer shares a name, a business name or a profile with a training "
             "call.", "",
             "**Not every row is a system.** A row labelled *reference:* (closed loop only) is a salesperson "
             "without a trained model; it gets no verdict, and report.json marks every entry with its `kind` "
             "(system, reference).", "",
             "## Capability score: intent appropriateness",
             "Share of held-out turns where the reply does what the reference salesperson did "
             "(sales.classify_sales_intent of the reply = the reference intent). Conversion: closed loop.", ""]
    lines += capability_table(systems, lambda s: _percent(s.get("intent_appropriateness")))
    lines += ["", "## Mean total reward (the training reward's weights)", ""]
    lines += capability_table(systems, mean("total"))
    if any("judge" in result["overall"] for result in systems.values()):
        lines += ["", "## Judge score (1-10, missing = unparsable after retries)", ""]
        lines += capability_table(systems, lambda s: "-" if "judge_missing" not in s else
                                  f"{'-' if s['judge'] is None else format(s['judge'], '.1f')} "
                                  f"({s['judge_missing']} missing)")
    lines += ["", "## Turn level, overall", "",
              "| system | intent appropriateness | total reward | format | similarity | faithfulness | manager | "
              "bayes (prior + likelihood) | words (target) | truncated |", "|" + "---|" * 10]
    for name, result in in_report_order(systems):
        o = result["overall"]
        lines.append(f"| {row_name(name, result)} | {_interval(o['intent_appropriateness'], '.2f')} | "
                     f"{_interval(o['total_reward'], '.3f')} | {o['format']:.2f} | {o['similarity']:.3f} | "
                     f"{o['faithfulness']:.3f} | {o['manager']:.3f} | {o['bayes']:.2f} "
                     f"({o['bayes_prior']:.2f} + {o['bayes_likelihood']:.2f}) | "
                     f"{o['reply_words']:.1f} ({o['target_words']:.1f}) | {o['truncated']:.0%} |")
    lines += ["", "## Closed loop against simulated customers",
              "Rates with Wilson 95% intervals; per-call means with Student-t 95% intervals. The rows labelled "
              "*reference:* play the same customers without a trained model; they are not systems (see the top of "
              "this report).", "",
              "| system | calls | conversion | hang-up | turns per call | unfaithful turns per call | "
              "unsupported facts per call | off-stage turns per call | calls with a reply said twice | "
              "replies said from the outline per call |", "|" + "---|" * 10]
    for name, result in in_report_order({**systems, **references}):
        c = result["closed_loop"]
        lines.append(f"| {row_name(name, result)} | {c['calls']} | {_interval(c['conversion'], '.2f')} | "
                     f"{_interval(c['hang_up'], '.2f')} | {_interval(c['turns'], '.1f')} | "
                     f"{_interval(c['violations_per_call'], '.2f')} | "
                     f"{_interval(c['unsupported_facts_per_call'], '.2f')} | "
                     f"{_interval(c['off_stage_per_call'], '.2f')} | "
                     f"{_interval(c['repeated_reply'], '.2f') if 'repeated_reply' in c else '-'} | "
                     f"{_interval(c['from_outline_per_call'], '.2f') if 'from_outline_per_call' in c else '-'} |")
    planned = [(name, entry["plan"]) for name, entry in references.items() if entry.get("plan")]
    if planned:
        lines += ["", "The plan each scripted-plan reference follows (plans.py; chosen on validation customers):", ""]
        lines += [f"* reference: {name}: {plan}" for name, plan in planned]
    if seeds:
        lines += ["", "## Trained models over seeds",
                  "The same recipe trained with several GRPO seeds on the same base (make seeds). Quote the mean: "
                  "one run's interval is over customers, the spread between seeds is over training runs.", "",
                  "| model / prompting | seeds | conversion per seed | mean conversion | spread (worst, best) | "
                  "unsupported facts / call (mean) | intent appropriateness (mean) |", "|" + "---|" * 7]
        for prompting, row in seeds.items():
            per_seed = ", ".join(f"{value:.0%}" for value in row["seeds"].values())
            lines.append(f"| {prompting} | {len(row['seeds'])} | {per_seed} | **{row['mean']:.1%}** | "
                         f"{row['low']:.0%} to {row['high']:.0%} | {row['unsupported']:.2f} | {row['ia']:.2f} |")
    lines += ["", "## The paper's claims beside what we measured",
              "The paper's findings are stated qualitatively (no numbers copied). Verdict: the sign of the "
              "difference in closed-loop conversion (the headline) against the paper's direction; 'within "
              "noise' when the two 95% intervals overlap. Systems only: references get none.", "",
              "| claim (paper) | systems | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['systems']} | {c['measured']} | {c['verdict']} |" for c in claims]
    lines += ["", "## Training curves and capability scores", "", "![training curves and capability scores]"
              "(training_and_capabilities.png)", "", "## Provenance", "", "```", json.dumps(meta, indent=1), "```", ""]
    write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))
    page = write_calls_page(out_dir, f"Played calls: {title}")
    print(f"\nwrote {out_dir}/report.md, report.json, training_and_capabilities.png"
          + (f", {os.path.basename(page)}" if page else ""))
