"""Run configuration: every knob of the pipeline, its default, and why, in one place.

A config file (configs/*.json) has one section per stage:

    data      the simulated corpus: how many calls, the simulation's seed and its share of mistakes
    tokenizer the BPE vocabulary size (tiny model only; a real checkpoint brings its own)
    model     Hugging Face Qwen2 config fields for the tiny from-scratch model
    pretrain  causal-LM training of the base model (and the SFT baseline)
    reward    the weights of the composite reward
    grpo      the GRPO loop; knob names and meanings follow TRL's GRPOConfig
    calls     GRPO over whole calls, rewarded by how the customer decides (calls_grpo.py): the last stage of
              `make train`

The defaults below are the default recipe, the one `make train` runs with no config file: a tiny Qwen2
pretrained from scratch on the CPU, then GRPO directly on it, then GRPO over whole calls. A file overrides
some of them for another size (configs/smoke.json, configs/qwen2.5-0.5b.json); keys missing from it take the
defaults. An unknown key, a wrong type or a value out of range ends with a `ConfigError` that names the file
and the key (a typo must never be silently ignored). A GRPO run records the sections it reads (runs.py), and
`parse_config` reads them back the same way.
"""

import json
import math
from dataclasses import dataclass, field, fields


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    dialogues: int = 2000          # simulated calls; 10% are held out as the test split
    seed: int = 0                  # the simulation's seed: the same seed writes the same calls on any machine
    noise: float = 0.2             # share of the scripted salesperson's turns that are realistic mistakes


@dataclass
class TokenizerConfig:
    vocab_size: int = 2048         # small: the tiny model's embedding should not dominate its parameters


# The tiny from-scratch model (Hugging Face Qwen2Config fields; vocab_size and the special-token ids come
# from the tokenizer): small enough to pretrain and run GRPO on two CPU cores within `make train`, with the
# shape of a real Qwen2 (grouped-query attention, two query heads per key/value head).
TINY_MODEL = {
    "hidden_size": 128,
    "intermediate_size": 384,          # 3 x hidden, SwiGLU's usual ratio
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,   # above the longest sequence trained on (a whole call, or prompt + answer)
    "rope_theta": 10000.0,             # the classic base: contexts are short, no long-range scaling needed
    "tie_word_embeddings": True,       # the embedding is a large share of so small a model: used once, not twice
}


@dataclass
class PretrainConfig:
    # The base needs long pretraining: GRPO on a base pretrained for fewer steps lost customers instead of
    # winning them, and fewer steps at a higher learning rate made a weaker base (docs/log.md, the research arms).
    steps: int = 800
    batch_size: int = 8            # whole calls per step; with half the batch the base learnt the calls worse
    seq_len: int = 1280            # a row is one call from its system prompt on: nearly every call fits whole
    learning_rate: float = 2e-3    # high, as usual for a tiny model trained from scratch
    min_lr_ratio: float = 0.1      # cosine decays to this fraction of the peak
    warmup_steps: int = 20         # short: the rate only has to climb past the random init's first steps
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    # Calls pretrained with DOGA's outline before each salesperson turn (needs a library): the base learns to
    # read outlines and still knows plain prompts.
    outline_share: float = 0.5
    # The base writes a call's values as slots ({price}, {monthly_orders}), said from the call's record before
    # anyone hears them (tokenizer.py, sales.heard): a model this small does not copy a number from its context into
    # a sentence, so it would say numbers learnt by heart. false: it writes the values themselves, as a real
    # checkpoint does (a base without the record, MODEL=..., always does).
    slots: bool = True


@dataclass
class RewardConfig:
    """Weights of the composite reward (docs/design.md, "Rewards"). Defaults and their reasons:

    format 1.0       the answer must be parseable before anything else can be scored;
    similarity 1.0   cosine in [0, 1] of reply and target reply with names and numbers masked: the phrasing of
                     the move, never a shared name;
    faithfulness 1.0 precision x coverage - (1 - precision) over distinct claims, in [-1, 1]; a forbidden
                     promise scores -1. Equal to the move terms: a fluent but false reply is worse than a clumsy
                     true one (weight 2 all but removed unsupported facts, but the agent skipped the diagnosis
                     move and chose the target reply's move less often: the research log, docs/log.md);
    manager 1.0      the Manager's view of the move in [0, 1]: the target reply's move 1, another on-stage move
                     0.5, off-stage or a mistake 0. The customer reacts to the move first, so it weighs as
                     much as the facts;
    bayes 0.1        prior + likelihood are mean log-probs, each some nats below zero, so the sum spans
                     about ten times the range of the other terms: 0.1 puts it on their scale;
    """
    format: float = 1.0
    similarity: float = 1.0
    faithfulness: float = 1.0
    manager: float = 1.0
    bayes: float = 0.1
    bayes_floor: float = -10.0     # per-token mean log-prob floor for each of prior and likelihood


@dataclass
class GRPOConfig:
    # --- TRL GRPOConfig names ---
    num_generations: int = 8       # completions per prompt (one group)
    beta: float = 0.04             # weight of the k3 KL penalty to the frozen ref_model
    epsilon: float = 0.2           # lower clip: ratio >= 1 - epsilon
    epsilon_high: float = 0.28     # upper clip (DAPO's clip-higher); set equal to epsilon for plain PPO
    loss_type: str = "dapo"        # grpo | dr_grpo | dapo: how per-token losses are averaged
    scale_rewards: str = "group"   # group | batch | none: what the advantage is divided by
    num_iterations: int = 1        # optimisation passes over each generated batch
    temperature: float = 1.0
    top_p: float = 1.0
    # Longer prompts are left out of the prompt pool (and counted). As long as a pretraining row, so that the
    # pool holds the calls' later turns too (objections, closing), where customers are won or lost.
    max_prompt_length: int = 1280
    max_completion_length: int = 64  # a thought and a reply of a sentence or two
    mask_truncated_completions: bool = True  # a completion with no EOS gets no gradient
    # Far above the rate for a pretrained LLM (configs/qwen2.5-0.5b.json), as the tiny base's pretraining rate
    # is; three times this rate lost the base's moves (docs/log.md, the research arms).
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 3          # short: GRPO starts from a trained base, not from random weights
    # --- the loop ---
    # On validation customers a run sold more at 150 steps than at 100 or 200 (its reward still rising at 200):
    # past that point GRPO optimises the turn reward at the expense of whole calls (docs/log.md).
    steps: int = 150
    prompts_per_step: int = 4      # groups per step, over all processes together
    turn_filter: str = "good"  # good: train on turns the Manager labelled on-stage and faithful | all
    outline_share: float = 1.0     # training prompts with DOGA's outline (needs a library): train as it infers
    # How often each move is trained on: 0 draws every move equally often; 1 draws prompts as the corpus has them
    # (a greeting ten times as often as a need objection, which the model then said as a common move); in between,
    # a move's share goes as count^balance. Chosen on validation customers, where every move equally often sold
    # more; on test customers, measured after the choice, it sold no more (docs/log.md).
    move_balance: float = 0.0
    save_steps: int = 50           # checkpoint every N steps (0: only the final model): a few per run
    log_completion_steps: int = 10  # print a sample completion every N steps
    eval_prompts: int = 24         # held-out prompts for the before/after summary, num_generations samples each
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda
    dtype: str = "float32"         # float32 | bfloat16


@dataclass
class CallsConfig:
    """GRPO over whole calls (calls_grpo.py): the policy plays calls against simulated customers and learns
    from how each call ends and from what each reply does. A stage on top of the GRPO model: `make train` runs
    it after grpo.py, `make ablations` trains its variants (turn reward only, session reward only, both). The
    clip, KL and loss knobs mean what they mean in GRPOConfig (grpo.grpo_loss reads them)."""
    # A short stage on top of a trained policy; each step plays whole calls. On validation customers 10 steps
    # sold more than the policy it started from, 20 steps no more than 10 did (docs/log.md).
    steps: int = 10
    groups_per_step: int = 4       # groups of calls per step, each its own product, persona and customer seed
    calls_per_group: int = 8       # calls per group: the same customer met by G samples of the policy
    session_weight: float = 1.0    # weight of the session advantage (how the call ended, normalised per group)
    turn_weight: float = 1.0       # weight of the turn advantage (what each reply does, normalised per group)
    max_turns: int = 20            # the Manager ends a call this long (simulate.MAX_TURNS)
    temperature: float = 1.0       # sampling: the G calls of a group differ only by what the policy samples
    top_p: float = 1.0
    # Which move each outline names: the best scripted plan's (plans.BEST_PLAN, the `doga_planned` prompting of the
    # evaluation: the policy learns to follow the plan's outlines) or DOGA's classifier (the paper's). With the
    # classifier's moves the stage sold no more than the policy it started from; with the plan's it sold more on
    # validation customers (docs/log.md).
    moves: str = "plan"
    max_prompt_length: int = 1280  # as GRPOConfig: the DOGA prompt of a late turn must fit
    max_completion_length: int = 64
    beta: float = 0.04             # k3 KL to the frozen ref_model (the model the stage starts from)
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    loss_type: str = "dapo"        # grpo | dr_grpo | dapo, as GRPOConfig; a sequence is one answer
    # GRPOConfig's rate: the stage starts from a GRPO policy of the same tiny model.
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 1
    answers_per_pass: int = 32     # answers per forward + backward of the update, whole calls (bounds its memory)
    save_steps: int = 5            # checkpoint every N steps (0: only the final model)
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda


CHOICES = {
    ("grpo", "loss_type"): ("grpo", "dr_grpo", "dapo"),
    ("calls", "loss_type"): ("grpo", "dr_grpo", "dapo"),
    ("calls", "device"): ("auto", "cpu", "cuda"),
    ("calls", "moves"): ("classifier", "plan"),
    ("grpo", "scale_rewards"): ("group", "batch", "none"),
    ("grpo", "turn_filter"): ("good", "all"),
    ("grpo", "device"): ("auto", "cpu", "cuda"),
    ("grpo", "dtype"): ("float32", "bfloat16"),
}
# Keys that must be > 0, and keys that must lie in [0, 1].
POSITIVE = {"dialogues", "vocab_size", "steps", "batch_size", "seq_len", "learning_rate", "max_grad_norm",
            "num_generations", "num_iterations", "temperature", "max_prompt_length", "max_completion_length",
            "prompts_per_step", "eval_prompts", "groups_per_step", "calls_per_group", "max_turns",
            "answers_per_pass"}
UNIT_INTERVAL = {"min_lr_ratio", "epsilon", "epsilon_high", "top_p", "outline_share", "noise",
                 "move_balance"}
# Every other number must be >= 0, except these, which must be < 0 (a floor on log-probabilities).
NEGATIVE = {"bayes_floor"}
# The tiny model's architecture: Qwen2Config fields (model.py reads them as a Hugging Face config.json).
# vocab_size and the special-token ids come from the tokenizer, so they are not set here.
MODEL_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
              "tie_word_embeddings", "initializer_range"}
# Those that count something: a whole number, never silently truncated (64.5 is not a width).
MODEL_INTEGER_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "max_position_embeddings"}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: dict = field(default_factory=lambda: dict(TINY_MODEL))   # Qwen2Config fields; model.py validates them
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    source: str = "<defaults>"


def _section(path, name, cls, values):
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: section '{name}' must be an object, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    parsed = {}
    for key, value in values.items():
        where = f"{path}: {name}.{key}"
        if key not in known:
            raise ConfigError(f"{where} is not a known key (known: {', '.join(sorted(known))})")
        default = known[key].default
        # bool is a subclass of int in Python: check it first so that `true` is not accepted as a number.
        if isinstance(default, bool) != isinstance(value, bool):
            raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(default)):
            raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {value!r}")
        if (name, key) in CHOICES and value not in CHOICES[(name, key)]:
            raise ConfigError(f"{where} must be one of {CHOICES[(name, key)]}, got {value!r}")
        if key in POSITIVE and value <= 0:
            raise ConfigError(f"{where} must be > 0, got {value!r}")
        if key in UNIT_INTERVAL and not 0 <= value <= 1:
            raise ConfigError(f"{where} must lie in [0, 1], got {value!r}")
        if key in NEGATIVE and value >= 0:
            raise ConfigError(f"{where} must be < 0, got {value!r}")
        if key not in NEGATIVE and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{where} must be >= 0, got {value!r}")
        parsed[key] = value
    return cls(**parsed)


def load_config(path=None):
    """Read and validate a config file; see the module docstring. No path: the defaults, the default recipe."""
    if path is None:
        return Config()
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return parse_config(raw, path)


def parse_config(raw, path):
    """Validate a config's sections (a dict, as a config file holds them); `path` names where they came from
    in errors. Missing sections and keys take the defaults; the model section's keys replace TINY_MODEL's."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a JSON object of sections")
    sections = {"data": DataConfig, "tokenizer": TokenizerConfig, "pretrain": PretrainConfig,
                "reward": RewardConfig, "grpo": GRPOConfig, "calls": CallsConfig}
    unknown = set(raw) - set(sections) - {"model", "comment"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)} (known: model, {', '.join(sections)})")
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{path}: section 'model' must be an object")
    config = Config(source=path, model={**TINY_MODEL, **model})
    for key, value in model.items():
        if key not in MODEL_KEYS:
            raise ConfigError(f"{path}: model.{key} is not a known key (known: {', '.join(sorted(MODEL_KEYS))})")
        if key == "tie_word_embeddings" and not isinstance(value, bool):
            raise ConfigError(f"{path}: model.{key} must be bool, got {value!r}")
        if key != "tie_word_embeddings" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                             or not value > 0):
            raise ConfigError(f"{path}: model.{key} must be a number > 0, got {value!r}")
        if key in MODEL_INTEGER_KEYS and not isinstance(value, int):
            raise ConfigError(f"{path}: model.{key} must be a whole number, got {value!r}")
    for name, cls in sections.items():
        setattr(config, name, _section(path, name, cls, raw.get(name, {})))
    if config.grpo.epsilon_high < config.grpo.epsilon:
        raise ConfigError(f"{path}: grpo.epsilon_high ({config.grpo.epsilon_high}) must be >= grpo.epsilon "
                          f"({config.grpo.epsilon})")
    if config.grpo.num_generations < 2:
        raise ConfigError(f"{path}: grpo.num_generations must be >= 2: a group of one has no spread to learn from")
    if config.calls.epsilon_high < config.calls.epsilon:
        raise ConfigError(f"{path}: calls.epsilon_high ({config.calls.epsilon_high}) must be >= calls.epsilon "
                          f"({config.calls.epsilon})")
    if config.calls.calls_per_group < 2:
        raise ConfigError(f"{path}: calls.calls_per_group must be >= 2: a group of one call has no spread to "
                          "learn from")
    if config.calls.session_weight == 0 and config.calls.turn_weight == 0:
        raise ConfigError(f"{path}: calls.session_weight and calls.turn_weight are both 0: nothing to learn from")
    return config
