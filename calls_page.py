"""Two static pages to audit AI-Salesman by eye: the calls an evaluation played (calls.html) and the groups a
GRPO run sampled (audit.html). Plain HTML written with the standard library: inline CSS, no script, nothing
fetched, so a page opens offline in any browser; every text from a call or a model goes through html.escape,
so a reply that says `<script>` shows as text.

* **calls.html** (`write_calls_page`; report.write_report writes it for `make eval` and `make ablations`):
  every call of <out>/systems/*/calls.jsonl, under the name of its folder, filterable by system, by outcome
  and to the calls with a flagged turn (radio buttons and CSS rules, no JavaScript). A call reads as a
  transcript: the product sheet, the customer's visible profile and the hidden persona the salesperson never
  sees (budget, temperament, needs, objections, patience); per salesperson turn the stage before and after it,
  DOGA's outline when the system was prompted with one (the move and the proven line, which
  doga.DogaPlanner.record_outlines stores on the turn), the thought, the reply as the customer heard it (values
  filled; where DOGA said the outline's line in place of a repeated reply, the model's words struck through),
  the Manager's labels (on-stage, faithful, the rule broken) and the claims the world's checker finds
  in it (sales.check_claims, run here: how many are supported, the unsupported ones, the forbidden promises);
  per customer turn its intent; the outcome. Off-stage turns and unsupported or forbidden claims stand out
  in colour, and each call's summary line counts them.
* **audit.html** (`write_audit_page`; CLI `audit`): the lines of a run's audit.jsonl (`grpo.py --audit`),
  per step and group: the prompt as the policy saw it and the target reply A*, then each completion with
  every reward term, its advantage and its ratio pi / pi_old (mean, min and max over its tokens), and the
  group's mean and standard deviation of the total reward.

Left out, and why: the customer's interest after each turn (simulate.Customer keeps it in its hidden state
and a played call does not record it); an outline for the systems prompted without one (the static baseline,
the scripted salesperson; DOGA's top line says its outline's line verbatim); search and sorting (the
browser's find does the one, the JSON files the other).

CLI:
    python calls_page.py calls reports/default                 (writes reports/default/calls.html)
    python calls_page.py audit runs/default [--steps 0 199]    (writes runs/default/audit.html)
"""

import argparse
import glob
import math
import os
from collections import Counter
from html import escape

from files import read_jsonl, write_text
from sales import OUTCOMES, STAGES, check_claims


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 1150px; margin: 0 auto; padding: 0 16px 40px; }
h1 { font-size: 20px; margin: 16px 0 4px; }
.note { color: #555; margin: 4px 0; }
input.filter { position: absolute; opacity: 0; pointer-events: none; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 6px 0; z-index: 1; }
nav div { margin: 3px 0; }
nav label { display: inline-block; border: 1px solid #bbb; border-radius: 12px; padding: 1px 9px; margin: 2px 1px;
            cursor: pointer; font-size: 13px; }
details.call { border: 1px solid #ccc; border-radius: 6px; margin: 8px 0; }
details.call > summary { padding: 6px 10px; cursor: pointer; background: #f6f6f6; }
.cards { display: flex; gap: 10px; padding: 8px 10px 0; flex-wrap: wrap; }
.card { flex: 1 1 220px; background: #fafafa; border: 1px solid #e3e3e3; border-radius: 4px; padding: 4px 8px;
        font-size: 12.5px; }
.card.wide { flex: 2.2 1 480px; } .card.wide dl { grid-template-columns: max-content 1fr max-content 1fr; }
.card h4 { margin: 2px 0; font-size: 13px; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 10px; margin: 2px 0; }
.card dt { color: #666; } .card dd { margin: 0; }
ol.turns { list-style: none; padding: 4px 10px; margin: 0; }
.turn { border-left: 4px solid #9bc; padding: 4px 10px; margin: 6px 0; }
.turn.customer { border-left-color: #ccc; margin-left: 48px; background: #fbfbfb; }
.turn.off_stage { border-left-color: #e69500; background: #fff8ea; }
.turn.unfaithful { border-left-color: #d33; background: #fff0f0; }
.who { font-size: 12px; color: #555; }
.say { font-size: 15px; margin: 2px 0; }
.thought { color: #666; font-style: italic; font-size: 13px; }
.outline { font-size: 13px; color: #245; background: #eef5fb; border-radius: 3px; padding: 1px 6px; margin: 2px 0; }
.facts { font-size: 12.5px; color: #444; }
.badge { display: inline-block; border-radius: 3px; padding: 0 5px; font-size: 11.5px; font-weight: 600; color: #fff; }
.bad { background: #d33; } .warn { background: #e69500; } .good { background: #2a8a3e; } .muted { background: #888; }
mark.bad { color: #fff; padding: 0 3px; border-radius: 3px; }
.converted { color: #2a8a3e; } .declined { color: #666; } .hung_up { color: #d33; }
.end { padding: 4px 10px 8px; font-weight: 600; }
table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
th, td { border: 1px solid #ddd; padding: 2px 5px; vertical-align: top; text-align: right; }
th { vertical-align: bottom; text-align: center; background: #f6f6f6; }
td.text { text-align: left; white-space: pre-wrap; font-family: ui-monospace, monospace; min-width: 280px; }
.scroll { overflow-x: auto; }
.pos { color: #2a8a3e; } .neg { color: #d33; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 6px; font-size: 12px; }
.group { border: 1px solid #ccc; border-radius: 6px; padding: 4px 10px; margin: 10px 0; }
"""


def page(title, body, style=""):
    """A whole HTML document: the shared inline style, `style` (rules of this page), `body` (already HTML)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}{style}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def definition_list(values):
    """A dict as <dl>: lists joined with ';', every key and value escaped."""
    def text(value):
        return "; ".join(map(str, value)) if isinstance(value, list) else str(value)

    return "<dl>" + "".join(f"<dt>{escape(str(key))}</dt><dd>{escape(text(value))}</dd>"
                            for key, value in values.items()) + "</dl>"


def badge(text, kind):
    return f'<span class="badge {kind}">{escape(text)}</span>'


# ----------------------------------------------------------------------------------------------
# calls.html: played calls as transcripts.

def sales_turn(turn, stage_before, product, visible):
    """(HTML of one salesperson turn, off-stage, unfaithful). The Manager labelled the turn with the same checker
    as runs here, so both say the same; a call recorded under other rules is marked by either."""
    labels = turn["labels"]
    check = check_claims(turn["text"], product, visible)
    unfaithful = bool(check.unsupported or check.forbidden) or not labels["faithful"]
    classes = "turn sales" + ("" if labels["on_stage"] else " off_stage") + (" unfaithful" if unfaithful else "")
    flags = ("" if labels["on_stage"] else " " + badge("off-stage", "warn")) + \
        (" " + badge("unfaithful", "bad") if unfaithful else "") + \
        (" " + badge("said from the outline", "muted") if turn.get("from_outline") else "")
    lines = [f'<div class="who">Salesperson &middot; stage {escape(stage_before)} &rarr; {escape(turn["stage"])} '
             f'&middot; move <b>{escape(turn["intent"])}</b>{flags}</div>']
    outline = turn.get("outline")
    if outline:
        other = "" if outline["intent"] == turn["intent"] else " " + badge("said another move", "muted")
        lines.append(f'<div class="outline">DOGA outline: move <b>{escape(outline["intent"])}</b>{other} &middot; '
                     f'proven line: &ldquo;{escape(outline["line"])}&rdquo;</div>')
    if turn.get("from_outline"):      # doga.DogaAgent.say: the model's reply repeated one said earlier in the call
        lines.append(f'<div class="thought">the model wrote <s>{escape(turn["model_reply"])}</s>, said earlier in '
                     "the call: the outline's next line was said instead</div>")
    lines.append(f'<div class="thought">thought: {escape(turn["thought"]) if turn.get("thought") else "(none)"}</div>')
    lines.append(f'<div class="say">{escape(turn["text"])}</div>')

    def yes_no(ok):
        return badge("yes", "good") if ok else badge("no", "bad")

    rule = labels["rule_broken"]
    lines.append(f'<div class="facts">Manager: on-stage {yes_no(labels["on_stage"])} &middot; faithful '
                 f'{yes_no(labels["faithful"])} &middot; rule broken: {badge(rule, "bad") if rule else "none"}</div>')
    claims = [f"{check.supported} supported"]
    if check.unsupported:
        claims.append("unsupported: " + " ".join(f'<mark class="bad">{escape(c)}</mark>' for c in check.unsupported))
    if check.forbidden:
        claims.append("forbidden: " + " ".join(f'<mark class="bad">{escape(p)}</mark>' for p in check.forbidden))
    lines.append(f'<div class="facts">claims (sales.check_claims): {" &middot; ".join(claims)}</div>')
    return f'<li class="{classes}">' + "\n".join(lines) + "</li>", not labels["on_stage"], unfaithful


def customer_turn(turn):
    return (f'<li class="turn customer"><div class="who">Customer &middot; <b>{escape(turn["intent"])}</b></div>'
            f'<div class="say">{escape(turn["text"])}</div></li>')


def render_call(call, system_index, system, expanded=False):
    """One call as a <details> block (open when `expanded`): a summary line, the product and the customer, the
    turns, the outcome."""
    product, visible = call["product"], call["customer"]["visible"]
    items, off_stage, unfaithful = [], 0, 0
    for i, turn in enumerate(call["turns"]):
        if turn["role"] == "sales":
            stage_before = call["turns"][i - 1]["stage"] if i else STAGES[0]   # every call opens in the first stage
            item, off, bad = sales_turn(turn, stage_before, product, visible)
            items.append(item)
            off_stage, unfaithful = off_stage + off, unfaithful + bad
        else:
            items.append(customer_turn(turn))
    outcome = escape(call["outcome"])
    flagged = " flagged" if off_stage or unfaithful else ""
    from_outline = sum(bool(turn.get("from_outline")) for turn in call["turns"])
    counts = "".join([f" &middot; {badge(f'{off_stage} off-stage', 'warn')}" if off_stage else "",
                      f" &middot; {badge(f'{unfaithful} unfaithful', 'bad')}" if unfaithful else "",
                      f" &middot; {badge(f'{from_outline} from the outline', 'muted')}" if from_outline else ""])
    summary = (f"<b>{escape(call['id'])}</b> &middot; {escape(system)} &middot; {escape(product['name'])} &middot; "
               f"{escape(str(visible.get('name', '')))} &middot; <b class=\"{outcome}\">{outcome}</b> "
               f"&middot; {len(call['turns'])} turns{counts}")
    sheet = {k: v for k, v in product.items() if k not in ("id", "domain")}
    cards = (f'<div class="cards"><div class="card wide"><h4>Product</h4>{definition_list(sheet)}</div>'
             f'<div class="card"><h4>Customer (what the salesperson sees)</h4>{definition_list(visible)}</div>'
             f'<div class="card"><h4>Hidden persona (simulator only)</h4>'
             f'{definition_list(call["customer"].get("hidden", {}))}</div></div>')
    anchor = escape(f"s{system_index}-{call['id']}")
    return (f'<details class="call s{system_index} o-{outcome}{flagged}" id="{anchor}"{" open" if expanded else ""}>'
            f"<summary>{summary}</summary>\n{cards}\n<ol class=\"turns\">\n" + "\n".join(items) + "\n</ol>\n"
            f'<div class="end">Outcome: <span class="{outcome}">{outcome}</span></div></details>')


def filters(group, options):
    """Radio buttons of one filter (group name, [(value, label)]), the first checked, and the CSS that hides
    the calls without the class of the checked value and highlights its label. The inputs must come before
    <nav> and <main> in the page: CSS reaches later siblings only (`~`)."""
    inputs, labels, rules = [], [], []
    for n, (value, label) in enumerate(options):
        ident = f"{group}-{value}"
        inputs.append(f'<input type="radio" class="filter" name="{group}" id="{ident}"{" checked" if n == 0 else ""}>')
        labels.append(f'<label for="{ident}">{escape(label)}</label>')
        rules.append(f'#{ident}:checked ~ nav label[for="{ident}"] {{ background: #234; color: #fff; }}')
        if n:                                                  # the first option is "all": it hides nothing
            rules.append(f"#{ident}:checked ~ main .call:not(.{value}) {{ display: none; }}")
    return "\n".join(inputs), " ".join(labels), "\n".join(rules)


def calls_page(systems, title):
    """The HTML of calls.html for {system name: [played calls]}."""
    outcomes = Counter(call["outcome"] for calls in systems.values() for call in calls)
    total = sum(outcomes.values())
    groups = [("system", [("all", f"all systems ({total})")] +
               [(f"s{i}", f"{name} ({len(calls)})") for i, (name, calls) in enumerate(systems.items())]),
              ("outcome", [("all", "every outcome")] + [(f"o-{o}", f"{o} ({outcomes[o]})") for o in OUTCOMES]),
              ("flag", [("all", "every call"), ("flagged", "calls with an off-stage or unfaithful turn")])]
    inputs, navs, rules = zip(*(filters(group, options) for group, options in groups))
    played = [(i, name, call) for i, (name, calls) in enumerate(systems.items()) for call in calls]
    # the first call open, so the page shows what a call holds before anything is clicked
    calls = [render_call(call, i, name, expanded=n == 0) for n, (i, name, call) in enumerate(played)]
    body = ("\n".join(inputs) + f"\n<h1>{escape(title)}</h1>\n"
            f'<p class="note">{total} played calls. A salesperson turn is marked '
            f'{badge("off-stage", "warn")} when the Manager labels its move off-stage, {badge("unfaithful", "bad")} '
            "when the claim checker finds an unsupported claim or a forbidden promise in it. The customer's "
            "interest is not recorded by the simulator, so it is not shown.</p>\n"
            "<nav>" + "".join(f"<div>{group}: {labels}</div>" for (group, _), labels in zip(groups, navs)) +
            "</nav>\n<main>\n" + "\n".join(calls) + "\n</main>")
    return page(title, body, "\n".join(rules))


def write_calls_page(out_dir, title=None):
    """<out_dir>/calls.html from every <out_dir>/systems/<name>/calls.jsonl (evaluate.py writes them); nothing
    when there is none. Returns the path written or None."""
    paths = sorted(glob.glob(os.path.join(out_dir, "systems", "*", "calls.jsonl")))
    if not paths:
        return None
    systems = {os.path.basename(os.path.dirname(path)): read_jsonl(path) for path in paths}
    path = os.path.join(out_dir, "calls.html")
    write_text(path, calls_page(systems, title or f"Played calls of {out_dir}"))
    return path


# ----------------------------------------------------------------------------------------------
# audit.html: the groups of GRPO steps, every reward term, the advantage and the ratio.

def number(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def audit_group(rows):
    """One group (the audit lines of one prompt in one step) as HTML."""
    first = rows[0]
    totals = [row["rewards"]["total"] for row in rows]
    mean = sum(totals) / len(totals)
    std = math.sqrt(sum((t - mean) ** 2 for t in totals) / (len(totals) - 1)) if len(totals) > 1 else 0.0
    terms = sorted(first["rewards"], key=lambda term: term != "total")      # the total first, then as logged
    header = "".join(f"<th>{escape(term).replace('_', '_<wbr>')}</th>"      # long names break after a '_' only
                     for term in ["#", "completion", "truncated"] + terms + ["advantage", "ratio mean [min, max]"])
    lines = []
    for n, row in enumerate(rows):
        ratio = row.get("ratio")
        ratio_text = "-" if ratio is None else \
            f"{number(ratio['mean'], 4)} [{number(ratio['min'], 4)}, {number(ratio['max'], 4)}]"
        sign = "pos" if row["advantage"] > 0 else "neg" if row["advantage"] < 0 else ""
        cells = [str(n), f'<td class="text">{escape(row["completion"])}</td>', "yes" if row["truncated"] else "no"]
        cells += [number(row["rewards"].get(term)) for term in terms]
        cells += [f'<b class="{sign}">{number(row["advantage"])}</b>', ratio_text]
        lines.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    prompt = first.get("prompt")
    prompt_html = ('<p class="note">prompt not recorded (an audit.jsonl written before prompts were)</p>'
                   if prompt is None else f"<details><summary>prompt ({len(prompt)} characters)</summary>"
                                          f"<pre>{escape(prompt)}</pre></details>")
    target = first.get("target_reply")
    return (f'<div class="group"><h3>group {first["group"]} &middot; turn {escape(first["prompt_id"])} &middot; '
            f"total reward mean {number(mean)}, std {number(std)}</h3>\n{prompt_html}\n"
            + ("" if target is None else f'<p>target reply A*: &ldquo;{escape(target)}&rdquo;</p>\n')
            + f'<div class="scroll"><table><tr>{header}</tr>\n' + "\n".join(lines) + "</table></div></div>")


def audit_page(records, title):
    """The HTML of audit.html for the lines of an audit.jsonl: a section per step, a block per group."""
    steps = {}
    for record in records:
        steps.setdefault(record["step"], {}).setdefault(record["group"], []).append(record)
    index = " ".join(f'<a href="#step-{step}">{step}</a>' for step in steps)
    sections = [f'<section id="step-{step}"><h2>Step {step}</h2>\n' + "\n".join(map(audit_group, groups.values()))
                + "</section>" for step, groups in steps.items()]
    body = (f"<h1>{escape(title)}</h1>\n<p class=\"note\">{len(records)} completions in {len(steps)} steps. "
            "Each completion: every reward term, its advantage (its total centred on the group, scaled as "
            "grpo.scale_rewards says) and its ratio pi / pi_old over its tokens (exactly 1 with one iteration "
            f"per rollout).</p>\n<nav>steps: {index}</nav>\n" + "\n".join(sections))
    return page(title, body, "body { max-width: 1500px; }")        # a row holds every term: room for it


def write_audit_page(run_dir, steps=None, out=None):
    """<run_dir>/audit.html (or `out`) from <run_dir>/audit.jsonl, the steps in `steps` only when given."""
    source = os.path.join(run_dir, "audit.jsonl")
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source}: no audit log (train with `grpo.py --audit`)")
    records = [r for r in read_jsonl(source) if steps is None or r["step"] in steps]
    if not records:
        raise ValueError(f"{source}: no line of step {', '.join(map(str, steps))}")
    path = out or os.path.join(run_dir, "audit.html")
    write_text(path, audit_page(records, f"GRPO audit of {run_dir}"))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Static HTML pages to audit played calls and GRPO steps by eye.")
    commands = parser.add_subparsers(dest="command", required=True)
    calls = commands.add_parser("calls", help="<report>/calls.html from <report>/systems/*/calls.jsonl")
    calls.add_argument("report", help="a report folder of make eval or make ablations")
    audit = commands.add_parser("audit", help="<run>/audit.html from <run>/audit.jsonl (grpo.py --audit)")
    audit.add_argument("run", help="a GRPO run folder")
    audit.add_argument("--steps", type=int, nargs="+", help="only these steps (default: all)")
    audit.add_argument("--out", help="the page to write (default: <run>/audit.html)")
    args = parser.parse_args(argv)
    try:
        if args.command == "calls":
            path = write_calls_page(args.report)
            if path is None:
                raise FileNotFoundError(f"{args.report}/systems/*/calls.jsonl: no played calls (run `make eval`)")
        else:
            path = write_audit_page(args.run, set(args.steps) if args.steps else None, args.out)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
