"""The best scripted plan: how far a salesperson without a model can get with the simulated customer, a
reference row of the evaluation of AI-Salesman (arXiv 2511.12133; ours, not the paper's).

A **plan** (`Plan`) is a salesperson's script that reads only what a salesperson can know: the moves it has
made and the customer's words, as the intents the customer's utterances carry. It never reads the customer's
hidden persona (budget, needs, temperament, patience), its interest or its random stream. It has two parts:

* `moves`: a fixed sequence of moves, said in order; when they are said, it asks for the commitment, again and
  again, until the call ends;
* `answers`: rules that answer the customer's words at once, before the next planned move (`ANSWERS`): an
  objection with the move that handles it, a question with the move that answers it, a busy customer's
  brush-off with the call's purpose. A plan without answers is a *fixed* plan; with them, an *adaptive* one.

A planned move the stage machine does not allow after the moves made so far is skipped (an answer can move
the stage past it), and an accepted or declined offer is answered with the next steps or a goodbye. Each move
is said as the noise-0 scripted salesperson says it (simulate.Salesperson): the world's template for that
intent, filled with the call's true values.

`beam_search` chooses a plan: from the empty plan, every plan of the beam grows by one more move (each move
at most `max_repeats` times, only moves the stage machine allows there), and the `width` best of the grown
plans, by conversions on the customers it is given, form the next beam; the best plan met is returned. With a
beam as wide as the family it scores every plan of the family. `search_answers` then drops every answer rule
that does not earn a conversion. evaluate.py runs the search on validation customers
(`python evaluate.py --search-plans`) and plays the chosen plan, `BEST_PLAN`, on the customers of a report.

The chosen plan also steers a model: DOGA with planned moves (doga.DogaPlanner(moves=BEST_PLAN), ours) puts the
move the plan asks for in its outline, found by `next_move` from the call as played, where the model may not have
said what it was asked for.

Left out on purpose: the search does not run inside `make eval` (it plays a few hundred plans on hundreds of
customers, minutes of CPU); its choice is written here as `BEST_PLAN`. Plans that read anything richer than the
customer's last words (how often an objection came back, how long the call has run) are not in the family.
See docs/design.md, "Evaluation".
"""

import random
from dataclasses import dataclass

from tqdm import tqdm

from sales import is_legal_move, load_world, stage_move
from simulate import MAX_TURNS, Salesperson, run_call


OBJECTIONS = tuple(load_world().personas["objection_types"])
COMMIT = "ask_for_commitment"

# An answer rule: its name -> the reply move to each customer intent it answers. "objections" answers a raised
# objection with the move that handles it, and a repeated one with the move for the objection raised last.
ANSWERS = {
    "objections": {f"raise_{kind}_objection": f"handle_{kind}_objection" for kind in OBJECTIONS},
    "ask_price": {"ask_price": "explain_pricing"},
    "ask_details": {"ask_details": "explain_features"},
    "ask_how_to_start": {"ask_how_to_start": "explain_signup_steps"},
    "ask_activation": {"ask_activation": "explain_activation"},
    "busy_brush_off": {"busy_brush_off": "state_purpose"},
}
# The call is decided after these: any reply ends it, so every plan says the polite one.
DECIDED = {"accept": "confirm_next_steps", "decline": "polite_goodbye"}
# What a plan may plan: every good move but the replies to a decided call.
PLANNABLE = ("greet_and_introduce", "state_purpose", "ask_business_situation", "diagnose_with_numbers",
             "present_product", "explain_features", "explain_pricing", "handle_price_objection",
             "handle_trust_objection", "handle_timing_objection", "handle_need_objection", "explain_signup_steps",
             "explain_activation", COMMIT)
# A call holds MAX_TURNS turns, half of them the salesperson's: a longer plan never gets to its end.
MAX_PLAN_LENGTH = MAX_TURNS // 2 - 1


@dataclass(frozen=True)
class Plan:
    moves: tuple = ()        # planned moves, in order; then the commitment asked until the call ends
    answers: tuple = ()      # names of ANSWERS rules the plan follows

    def __post_init__(self):
        unknown = [m for m in self.moves if m not in PLANNABLE] + [a for a in self.answers if a not in ANSWERS]
        if unknown:
            raise ValueError(f"plan: unknown moves or answer rules {unknown}")

    def answer(self, heard):
        """The reply move to the customer's words so far (`heard`: their intents, in order), or None."""
        last = heard[-1] if heard else None
        if last in DECIDED:
            return DECIDED[last]
        if last == "repeat_objection" and "objections" in self.answers:
            last = next((h for h in reversed(heard) if h.startswith("raise_")), None)
        return next((ANSWERS[rule][last] for rule in self.answers if last in ANSWERS[rule]), None)

    def describe(self):
        """The plan in words, as the report prints it."""
        answers = "; ".join(f"{heard} -> {move}" for rule in self.answers for heard, move in ANSWERS[rule].items())
        return (" -> ".join(self.moves + (f"{COMMIT} until the call ends",))
                + (f". Answers at once: {answers}" if answers else ". Answers nothing"))


class PlanSalesperson(Salesperson):
    """salesperson_fn for simulate.run_call that follows `plan`, saying each move as the noise-0 scripted
    Salesperson does. It keeps its own moves and stage (the stage machine applied to them) and reads nothing
    of the call but the customer's intents."""

    def __init__(self, plan, product, visible, rng):
        super().__init__(product, visible, rng, noise=0.0)
        self.plan, self.next_planned, self.stage = plan, 0, "opening"

    def next_intent(self, turns):
        heard = [turn["intent"] for turn in turns if turn["role"] == "customer"]
        move = self.plan.answer(heard)
        if move is None or not is_legal_move(move, self.stage):
            move = COMMIT
            while self.next_planned < len(self.plan.moves):
                self.next_planned += 1
                if is_legal_move(self.plan.moves[self.next_planned - 1], self.stage):
                    move = self.plan.moves[self.next_planned - 1]
                    break
        _, self.stage = stage_move(move, self.stage)
        return move


def next_move(plan, turns):
    """The move `plan` asks for after `turns`, a call played by someone else (DOGA's planner with planned moves: a
    model speaks, and may not say the move it is asked for). It replays PlanSalesperson's choices over the call, with
    one difference: a planned move the reply did not make (the Manager's on-stage intent of that turn) is asked for
    again, rather than counted as said. On a call PlanSalesperson played itself it asks for the moves it made.
    Reads the sales turns' Manager labels and the customer turns' intents, as simulate.run_call writes them."""
    heard, stage, planned = [], "opening", 0
    for index in range(len(turns) + 1):
        if index < len(turns) and turns[index]["role"] != "sales":
            heard.append(turns[index]["intent"])
            continue
        move, asked = plan.answer(heard), None
        if move is None or not is_legal_move(move, stage):
            move = COMMIT
            while planned < len(plan.moves):
                planned += 1
                if is_legal_move(plan.moves[planned - 1], stage):
                    move, asked = plan.moves[planned - 1], planned - 1
                    break
        if index == len(turns):
            return move
        turn = turns[index]
        if asked is not None and not (turn["labels"]["on_stage"] and turn["intent"] == move):
            planned = asked                                 # not said: ask for it again next turn
        stage = turn["stage"]


def salesperson(plan, call_id, product, visible):
    """The PlanSalesperson of one call: it sees the customer's visible profile only, and draws its templates
    from a random stream of its own, keyed by the call as the scripted reference rows' (never the customer's)."""
    return PlanSalesperson(plan, product, visible, random.Random(f"eval-sales:{call_id}"))


def play(plan, jobs):
    """Play `plan` against every job (call id, product, persona, rng) of evaluate.closed_loop_jobs -> the calls."""
    return [run_call(product, persona, salesperson(plan, call_id, product, persona["visible"]), rng, call_id=call_id)
            for call_id, product, persona, rng in jobs]


def conversions(plan, make_jobs):
    """How many of the customers of make_jobs() (fresh jobs: a played call advances its rng) `plan` converts."""
    return sum(call["outcome"] == "converted" for call in play(plan, make_jobs()))


# ----------------------------------------------------------------------------------------------
# The search.

def planned_stage(moves):
    """The stage after `moves`, each moving the call as the Manager would (all on-stage)."""
    stage = "opening"
    for move in moves:
        _, stage = stage_move(move, stage)
    return stage


def grown(moves, candidates=PLANNABLE, max_repeats=2):
    """`moves` with one more move at the end, for each candidate the stage machine allows after them that is
    not yet said max_repeats times."""
    stage = planned_stage(moves)
    return [moves + (move,) for move in candidates
            if is_legal_move(move, stage) and moves.count(move) < max_repeats]


def _rank(scored):
    """Best first: more conversions, then fewer moves, then the moves' names (a deterministic order)."""
    return sorted(scored, key=lambda item: (-item[0], len(item[1].moves), item[1].moves))


def beam_search(score, answers=(), width=4, max_repeats=2, max_length=MAX_PLAN_LENGTH, candidates=PLANNABLE,
                progress=False):
    """The best plan with these `answers` that the beam meets, and its score: score(plan) -> a number, higher
    is better. Every plan of the beam grows by one move (`grown`); the `width` best grown plans (`_rank`) form
    the next beam, up to plans of max_length moves. Returns (score, plan)."""
    best = [(score(Plan((), answers)), Plan((), answers))]
    beam = [()]
    for length in range(1, max_length + 1):
        plans = [Plan(moves, answers) for moves in sorted({m for b in beam for m in grown(b, candidates, max_repeats)})]
        if not plans:
            break
        ranked = _rank([(score(plan), plan) for plan in tqdm(plans, desc=f"plans of {length} moves", unit="plan",
                                                             disable=not progress, leave=False)])
        beam = [plan.moves for _, plan in ranked[:width]]
        best = _rank(best + ranked[:1])[:1]
    return best[0]


def search_answers(score, plan, scored=None):
    """Drop each answer rule of `plan` in turn, keeping the drop when the plan converts at least as many without
    it (fewer rules read more easily). Returns (score, plan)."""
    scored = score(plan) if scored is None else scored
    for rule in plan.answers:
        fewer = Plan(plan.moves, tuple(a for a in plan.answers if a != rule))
        if (value := score(fewer)) >= scored:
            plan, scored = fewer, value
    return scored, plan


def search_plans(make_jobs, width=4, max_repeats=2):
    """The best fixed plan and the best adaptive plan on the customers of make_jobs() -> {"fixed": (conversions,
    plan), "adaptive": (conversions, plan)}. The adaptive search starts with every answer rule on."""
    def score(plan):
        return conversions(plan, make_jobs)
    fixed = beam_search(score, (), width, max_repeats, progress=True)
    scored, plan = beam_search(score, tuple(ANSWERS), width, max_repeats, progress=True)
    return {"fixed": fixed, "adaptive": search_answers(score, plan, scored)}


# The plan `search_plans` chose on the validation customers (python evaluate.py --search-plans
# --calls-per-product 32; docs/log.md, 2026-12-07): the plan the report's `best scripted plan` row plays.
BEST_PLAN = Plan(("diagnose_with_numbers", "present_product", "present_product", "explain_signup_steps",
                  "explain_activation"), ("objections", "ask_price", "ask_details", "ask_how_to_start"))
