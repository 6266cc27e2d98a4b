"""Tokenizer and chat format: the text interface between the sales world and the transformer.

AI-Salesman trains a Qwen2-family model, so we speak Qwen's format:

* a byte-level BPE vocabulary (trained here with the `tokenizers` library for the tiny from-scratch
  model, or loaded from a real Qwen2.5 checkpoint's `tokenizer.json`);
* the ChatML chat template, rendered in exactly one place (`render_chat`);
* the policy's answer format: a private `<think>...</think>` block followed by the spoken reply
  (`format_assistant` writes it, `split_thought` reads it back; the reward and the agent share both);
* how the model writes a call's values (`ChatTokenizer.slots`): as slots (`{price}`, `{monthly_orders}`), which
  the call's record fills before anyone hears the reply (sales.heard), or as the values themselves. It is a
  property of the text the model was trained on, so it travels with the tokenizer, in `slots.json` beside
  `tokenizer.json`; a checkpoint without that file (a real Qwen2.5) writes values as they are.

Left out on purpose: Jinja chat templates and `tokenizer_config.json`. A second copy of the template in
Jinja would be a second source of truth; our code never needs it, and real Qwen checkpoints already
ship their own.
"""

import json
import os
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from files import write_text


ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# ----------------------------------------------------------------------------------------------
# The chat template (ChatML), the one place it is written down.

def render_chat(messages, add_generation_prompt=True):
    """Render [{"role", "content"}, ...] as ChatML text.

    Each message becomes `<|im_start|>{role}\\n{content}<|im_end|>\\n`; with `add_generation_prompt`
    the text ends with an open assistant turn, `<|im_start|>assistant\\n`, which is where the model
    starts speaking. A generated turn ends with `<|im_end|>`, the end-of-turn (EOS) token.
    """
    parts = []
    for i, message in enumerate(messages):
        if "role" not in message or "content" not in message:
            raise ValueError(f"chat message {i} needs 'role' and 'content', got keys {sorted(message)}")
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# The answer format: private thought, then the spoken reply.

def format_assistant(thought, reply):
    """The text a salesperson turn is trained on: `<think>{thought}</think>\\n{reply}`."""
    return f"{THINK_OPEN}{thought}{THINK_CLOSE}\n{reply}"


@dataclass
class ParsedAnswer:
    thought: str      # "" when there is no well-formed thought block
    reply: str        # the spoken part; for a malformed answer, the text with tags removed
    well_formed: bool  # exactly one non-empty thought block at the start, then a non-empty reply


def split_thought(text):
    """Parse a generated answer into (thought, reply, well_formed). Never raises.

    Well formed means: the answer opens with `<think>`, has exactly one `<think>` and one `</think>`,
    the thought between them is non-empty, and a non-empty reply follows. Anything else still yields
    a best-effort reply (tags stripped), so a malformed answer can be scored instead of crashing.
    """
    text = text.replace(IM_END, "").replace(ENDOFTEXT, "").strip()
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if text.startswith(THINK_OPEN) and opens == 1 and closes == 1:
        thought, reply = text[len(THINK_OPEN):].split(THINK_CLOSE)
        thought, reply = thought.strip(), reply.strip()
        return ParsedAnswer(thought, reply, well_formed=bool(thought) and bool(reply))
    if closes >= 1:  # keep whatever follows the last closing tag as the reply
        reply = text.rsplit(THINK_CLOSE, 1)[1]
    else:
        reply = text
    reply = reply.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()
    return ParsedAnswer("", reply, well_formed=False)


# ----------------------------------------------------------------------------------------------
# The tokenizer.

def check_tokenizer_fits(tokenizer, vocab_size, source):
    """Refuse a tokenizer whose ids the model cannot embed (e.g. a tokenizer.json from another model).

    The embedding may be larger than the tokenizer (Qwen2.5 pads 151,665 tokens to 151,936 rows), never
    smaller; a mismatch would otherwise surface as an index error deep inside the embedding.
    """
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"{source}: tokenizer.json has {tokenizer.vocab_size} tokens but the model embeds only "
                         f"{vocab_size}: they do not belong together")


# Qwen2's pre-tokenizer: text is first split by this pattern (contractions, words with at most one leading
# non-letter, a single digit, punctuation runs, line breaks, spaces), then bytes are mapped to printable
# characters. The lone `\p{N}` is the point: every digit is its own piece, so BPE never merges digits, " 648" is
# the same three digit tokens wherever it stands, and copying a number from the prompt is a plain sequence copy.
QWEN2_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                       r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


SLOTS_FILE = "slots.json"


class ChatTokenizer:
    """A byte-level BPE tokenizer that knows the three ChatML special tokens, and whether its model writes values
    as slots (`slots`, see the module docstring)."""

    def __init__(self, tokenizer, source="<memory>", slots=False):
        self.tokenizer = tokenizer
        self.slots = slots
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"{source}: tokenizer lacks the ChatML special tokens {missing}")
        self.endoftext_id = tokenizer.token_to_id(ENDOFTEXT)
        self.im_start_id = tokenizer.token_to_id(IM_START)
        self.eos_id = tokenizer.token_to_id(IM_END)  # ends an assistant turn
        self.pad_id = self.endoftext_id

    @classmethod
    def train(cls, texts, vocab_size, show_progress=False, slots=False):
        """Train a byte-level BPE on an iterable of strings (Qwen2-style: byte fallback never needed,
        since all 256 bytes are in the initial alphabet). slots: the texts write values as slots."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, slots=slots)

    @classmethod
    def load(cls, path):
        """Load `tokenizer.json` from a checkpoint folder (ours or a real Qwen2.5) or a direct file path."""
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: no tokenizer.json here (train one with pretrain.py, or copy it "
                                    "from the checkpoint folder)")
        try:
            tokenizer = Tokenizer.from_file(file)
        except Exception as error:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"{file}: not a readable tokenizer.json ({error})") from None
        slots_file = os.path.join(os.path.dirname(file), SLOTS_FILE)
        slots = False
        if os.path.isfile(slots_file):
            try:
                with open(slots_file, encoding="utf-8") as handle:
                    slots = json.load(handle)["slots"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{slots_file}: unreadable ({error!r})") from None
            if not isinstance(slots, bool):
                raise ValueError(f"{slots_file}: 'slots' must be true or false, got {slots!r}")
        return cls(tokenizer, source=file, slots=slots)

    def save(self, folder):
        """Write `folder/tokenizer.json` and `folder/slots.json` atomically (files.write_text)."""
        write_text(os.path.join(folder, "tokenizer.json"), self.tokenizer.to_str(pretty=True))
        write_text(os.path.join(folder, SLOTS_FILE), json.dumps({"slots": self.slots}) + "\n")

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text):
        """(ids, [(start, end) character span of each token in `text`])."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts):
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens=False):
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_chat(self, messages, add_generation_prompt=True):
        return self.encode(render_chat(messages, add_generation_prompt))
