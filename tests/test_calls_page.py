"""calls_page.py: the calls page from calls the scripted salesperson plays plus one whose reply holds a script
tag, read back with the standard library's HTML parser (every call, every turn in order, the marks, the
filters, nothing fetched, everything escaped); the audit page from a hand-made audit.jsonl."""
import random
import re
from html import escape
from html.parser import HTMLParser

import pytest

import calls_page
from files import write_jsonl
from sales import OUTCOMES, check_claims, load_world
from simulate import Salesperson, make_persona, run_call


def play(noise, count, prefix):
    """`count` calls of the scripted salesperson with mistake rate `noise`, a product each, in turn."""
    world = load_world()
    products = [p for domain in sorted(world.products) for p in world.products[domain]]
    calls = []
    for k in range(count):
        product = products[(3 * k) % len(products)]
        rng = random.Random(f"page:{prefix}:{k}")
        persona = make_persona(product["domain"], product, rng)
        salesperson = Salesperson(product, persona["visible"], random.Random(f"page-sales:{prefix}:{k}"), noise)
        calls.append(run_call(product, persona, salesperson, rng, call_id=f"{prefix}-{k}"))
    return calls


SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def systems():
    careful, sloppy = play(0.0, 4, "careful"), play(0.6, 6, "sloppy")
    product = careful[0]["product"]
    persona = careful[0]["customer"]
    hostile = run_call(product, persona, lambda view: (f"I'll test {SCRIPT}", f"Hello {SCRIPT} & 'welcome'"),
                       random.Random(0), call_id="hostile<1>", max_turns=2)
    hostile["turns"][0]["outline"] = {"intent": "greet_and_introduce", "line": "Hi, this is <b>Harbor</b>."}
    careful[1]["turns"][2].update(from_outline=True, model_reply=f"Said again {SCRIPT}")    # doga.DogaAgent.say's note
    return {"scripted_noise_0": careful, "scripted_noise_0_6": sloppy + [hostile]}


class Calls(HTMLParser):
    """What a browser would build of calls.html, as far as the tests look: per call its classes and id, per
    turn its classes and text; every href and src; the radio inputs; the text of <style>."""

    def __init__(self, text):
        super().__init__()
        self.calls, self.links, self.inputs, self.style, self.scripts = [], [], [], "", 0
        self.in_style, self.turn = False, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[key] for key in ("href", "src") if key in attrs]
        self.scripts += tag == "script"
        self.in_style = tag == "style"
        if tag == "input":
            self.inputs.append(attrs)
        if tag == "details" and "call" in attrs.get("class", "").split():
            self.calls.append({"classes": attrs["class"].split(), "id": attrs["id"], "turns": []})
        if tag == "li" and "turn" in attrs.get("class", "").split():
            self.turn = {"classes": attrs["class"].split(), "text": ""}
            self.calls[-1]["turns"].append(self.turn)

    def handle_endtag(self, tag):
        self.in_style = False
        if tag == "li":
            self.turn = None

    def handle_data(self, data):
        if self.in_style:
            self.style += data
        if self.turn is not None:
            self.turn["text"] += data


def test_every_call_and_turn_is_on_the_page_in_order_with_its_marks(systems):
    text = calls_page.calls_page(systems, "calls")
    page = Calls(text)
    played = [(i, call) for i, calls in enumerate(systems.values()) for call in calls]
    assert [c["id"] for c in page.calls] == [f"s{i}-{call['id']}" for i, call in played]
    for (i, call), shown in zip(played, page.calls):
        assert {"call", f"s{i}", f"o-{call['outcome']}"} <= set(shown["classes"])
        assert len(shown["turns"]) == len(call["turns"])
        for turn, item in zip(call["turns"], shown["turns"]):
            assert turn["role"] in item["classes"]
            assert turn["text"] in item["text"] and turn["intent"] in item["text"]   # the parser unescapes
            if turn["role"] == "customer":
                continue
            assert turn["thought"] in item["text"] and turn["stage"] in item["text"]
            check = check_claims(turn["text"], call["product"], call["customer"]["visible"])
            assert ("off_stage" in item["classes"]) == (not turn["labels"]["on_stage"])
            assert ("unfaithful" in item["classes"]) == bool(check.unsupported or check.forbidden)
            assert f"{check.supported} supported" in item["text"]
            for claim in check.unsupported + check.forbidden:
                assert claim in item["text"]
            assert (turn["labels"]["rule_broken"] or "rule broken: none") in item["text"]
            assert ("said from the outline" in item["text"]) == bool(turn.get("from_outline"))
            assert turn.get("model_reply", "") in item["text"]
    sloppy = [turn for call in systems["scripted_noise_0_6"] for turn in call["turns"] if turn["role"] == "sales"]
    assert any(not t["labels"]["on_stage"] for t in sloppy) and any(not t["labels"]["faithful"] for t in sloppy)
    assert any("flagged" in c["classes"] for c in page.calls) and not all("flagged" in c["classes"] for c in page.calls)
    assert "DOGA outline: move greet_and_introduce" in page.calls[-1]["turns"][0]["text"]
    assert systems["scripted_noise_0"][1]["turns"][2]["role"] == "sales" and "1 from the outline" in text
    assert "Hi, this is &lt;b&gt;Harbor&lt;/b&gt;." in text          # the outline's line escaped too


def test_text_is_escaped_and_nothing_is_fetched_or_run(systems):
    text = calls_page.calls_page(systems, "calls <of> a test")
    page = Calls(text)
    assert page.scripts == 0 and "<script" not in text.lower()
    assert escape(f"Hello {SCRIPT} & 'welcome'") in text and escape(SCRIPT) in text
    assert "<b>Harbor</b>" not in text and escape("hostile<1>") in text
    assert all(link.startswith("#") for link in page.links)          # in-page anchors only
    assert not re.search(r"(https?:)?//|@import|url\(", page.style)


def test_filters_cover_every_system_and_outcome(systems):
    page = Calls(calls_page.calls_page(systems, "calls"))
    ids = {attrs["id"] for attrs in page.inputs if attrs.get("type") == "radio"}
    assert {"system-all", "system-s0", "system-s1", "outcome-all", "flag-all", "flag-flagged"} <= ids
    assert {f"outcome-o-{outcome}" for outcome in OUTCOMES} <= ids
    for ident, kept in [("system-s1", ".s1"), ("outcome-o-hung_up", ".o-hung_up"), ("flag-flagged", ".flagged")]:
        assert f"#{ident}:checked ~ main .call:not({kept}) {{ display: none; }}" in page.style
    assert "system-all:checked ~ main" not in page.style              # "all" hides nothing


def test_write_calls_page_reads_every_system_folder(systems, tmp_path):
    assert calls_page.write_calls_page(str(tmp_path)) is None        # nothing played: no page
    for name, calls in systems.items():
        write_jsonl(str(tmp_path / "systems" / name / "calls.jsonl"), calls)
    path = calls_page.write_calls_page(str(tmp_path), "Played calls")
    text = open(path, encoding="utf-8").read()
    assert path == str(tmp_path / "calls.html") and text == calls_page.calls_page(systems, "Played calls")
    assert "scripted_noise_0_6 (7)" in text


def audit_lines():
    """Two steps of two groups of three completions, as grpo.write_audit writes them."""
    lines = []
    for step in (0, 1):
        for group in (0, 1):
            for n in range(3):
                total = 0.1 * n + group - step
                line = {"step": step, "prompt_id": f"call-{group}:{2 * n}", "group": group,
                        "completion": f"<think>try {step}.{group}.{n}</think> Price is ${40 + n}",
                        "truncated": n == 2,
                        "rewards": {"total": total, "format": 1.0, "similarity": 0.25 + n / 100,
                                    "faithfulness": -0.5, "manager": 0.5, "bayes": -3.125, "reaction": 0.0},
                        "advantage": n - 1.0, "ratio": {"mean": 1.0 + n / 1000, "min": 0.99, "max": 1.01}}
                if n == 0:
                    line.update(prompt=f"<|im_start|>system\nYou sell {step}/{group}<|im_end|>",
                                target_reply=f"It is $4{group}.")
                lines.append(line)
    return lines


def test_audit_page_shows_every_term_advantage_and_ratio(tmp_path):
    lines = audit_lines()
    write_jsonl(str(tmp_path / "audit.jsonl"), lines)
    text = open(calls_page.write_audit_page(str(tmp_path)), encoding="utf-8").read()
    for term in lines[0]["rewards"]:
        assert f"<th>{term.replace('_', '_<wbr>')}</th>" in text
    for line in lines:
        assert escape(line["completion"]) in text
        row = text[text.index(escape(line["completion"])):].split("</tr>")[0]
        assert all(f"<td>{value:.3f}</td>" in row for value in line["rewards"].values())
        assert f"{line['advantage']:.3f}</b>" in row and f"{line['ratio']['mean']:.4f} [0.9900, 1.0100]" in row
        if "prompt" in line:
            assert escape(line["prompt"]) in text and escape(line["target_reply"]) in text
    assert "<script" not in text and "<think>" not in text and "<|im_start|>" not in text
    assert text.count('<div class="group">') == 4 and 'href="#step-1"' in text
    assert "total reward mean 0.100, std 0.100" in text                 # step 0, group 0: 0, 0.1, 0.2
    only = open(calls_page.write_audit_page(str(tmp_path), steps={1}, out=str(tmp_path / "one.html"))).read()
    assert "Step 1" in only and "Step 0" not in only and only.count('<div class="group">') == 2


def test_audit_page_cli_names_a_missing_log(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no audit log"):
        calls_page.main(["audit", str(tmp_path)])
    write_jsonl(str(tmp_path / "audit.jsonl"), audit_lines())
    calls_page.main(["audit", str(tmp_path), "--steps", "0"])
    assert "audit.html" in capsys.readouterr().out and (tmp_path / "audit.html").exists()
