"""The Qwen2 / Qwen2.5 decoder-only transformer: the policy and the frozen reference model of AI-Salesman.

AI-Salesman (arXiv 2511.12133) trains a Qwen2.5 base model with GRPO and scores thoughts with the Bayesian
reward R_bayes = log P(Th | c) + log P(A* | c, Th) under a frozen reference copy of the same model. This
module is that model, written out in plain PyTorch:

  * the architecture: token embedding, RMSNorm (computed in float32), rotary position embeddings,
    grouped-query attention with bias on q/k/v only, SwiGLU MLP, tied or untied lm_head;
  * `Qwen2.hidden_states`: the final-normed hidden states without logits, for the fused log-prob kernel
    (kernels/), so the training pass never materialises full-vocabulary logits;
  * `sequence_logprobs`: log p(token | tokens before it) at chosen positions of right-padded sequences
    (`pad_right`), through that kernel: what the GRPO loss and the Bayesian reward are made of;
  * `Qwen2.continuation_hidden_states` / `continuation_logprobs`: the same for many continuations of a
    few prompts, each prompt run once and its keys/values shared by its continuations (GRPO's groups:
    8 completions of one prompt; a played call's answers: each prompt the beginning of the next),
    gradients included;
  * `generate`: KV-cached batched sampling of completions (greedy or temperature + top-p), and
    `generate_completions`, the same for token-id prompts cut at their EOS: it draws the GRPO groups and
    lets DOGA and the evaluation speak; `generate_groups`: many groups of
    samples in one batch, each prompt prefilled once and each group drawing from its own generator;
  * `load_pretrained` / `save_pretrained`: the Hugging Face folder layout (config.json + safetensors),
    so a real Qwen2.5 checkpoint loads and our checkpoints load in other tools. A model we save with its
    tokenizer records that tokenizer's fingerprint in config.json, and `load_with_tokenizer` refuses a
    tokenizer.json other than the one the weights were trained with.

Left out on purpose: sliding-window attention (Qwen2.5 checkpoints ship with it switched off), rotary
scaling variants such as YaRN (only needed beyond the 32k native context), dropout (zero in every Qwen2
release), and multi-file sharding on save (a single safetensors file holds a model of any size we train).
A config that asks for one of these is refused with a clear error instead of being run wrongly.

Why one module: the architecture, its passes (whole sequences, or continuations after a shared prompt),
its generation loop and its checkpoint format change together (a field of config.json shapes the weights,
the KV cache and the file), so a reader checking the model against Qwen2 finds all of it here.
"""
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from files import fingerprint, replace_folder
from kernels import fused_linear_logprobs
from tokenizer import ChatTokenizer, check_tokenizer_fits


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
# The field of our config.json that names the tokenizer the weights were trained with (files.fingerprint of
# its tokenizer.json). Not a Qwen2 field: transformers keeps it as an unused attribute.
TOKENIZER_FIELD = "tokenizer_fingerprint"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the tensor or field."""


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

# Fields a config.json must carry: without them the shapes of the weights are unknown.
REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Fields that count something: a fractional value is refused, never silently truncated by int().
INTEGER_HF_FIELDS = REQUIRED_HF_FIELDS + ("num_key_value_heads", "max_position_embeddings", "head_dim")
# Transformers' default rotary base for Qwen2 when config.json names none; used so that both tools read
# the same file the same way.
HF_DEFAULT_ROPE_THETA = 10000.0


@dataclass
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, hf: dict, source: str = CONFIG_FILE) -> "Qwen2Config":
        """Read a Hugging Face Qwen2 config dict; `source` names the file in error messages."""
        def refuse(field, why):
            raise CheckpointError(f"{source}: field '{field}' {why}")

        for field in REQUIRED_HF_FIELDS:
            if field not in hf:
                refuse(field, "is missing")
        if hf.get("model_type", "qwen2") != "qwen2":
            refuse("model_type", f"is {hf['model_type']!r}; only 'qwen2' (Qwen2 and Qwen2.5) is supported")
        if hf.get("hidden_act", "silu") != "silu":
            refuse("hidden_act", f"is {hf['hidden_act']!r}; Qwen2 uses 'silu'")
        if hf.get("use_sliding_window", False):
            refuse("use_sliding_window", "is true; sliding-window attention is not implemented")
        # Transformers 4.x writes rope_theta (+ rope_scaling); 5.x writes rope_parameters {rope_theta, rope_type}.
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            refuse("rope_parameters" if "rope_parameters" in hf else "rope_scaling",
                   f"asks for rope type {rope_type!r}; only the default rotary embedding is implemented")
        rope_theta = hf.get("rope_theta", rope.get("rope_theta", HF_DEFAULT_ROPE_THETA))
        for field in INTEGER_HF_FIELDS:
            value = hf.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                refuse(field, f"is {value!r}; it must be a whole number")
        head_dim = hf["hidden_size"] // hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, head_dim):
            refuse("head_dim", f"is {hf['head_dim']}; Qwen2 needs hidden_size / num_attention_heads = {head_dim}")
        try:
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                intermediate_size=int(hf["intermediate_size"]),
                num_hidden_layers=int(hf["num_hidden_layers"]),
                num_attention_heads=int(hf["num_attention_heads"]),
                num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
                max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
                rope_theta=float(rope_theta),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                initializer_range=float(hf.get("initializer_range", 0.02)),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
            )
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: {error}") from None

    def to_hf_dict(self) -> dict:
        """The config.json transformers (4.x and 5.x) reads as a Qwen2ForCausalLM."""
        hf = asdict(self)
        hf.update(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            hidden_act="silu",
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            use_sliding_window=False,
            attention_dropout=0.0,
        )
        return hf

    @classmethod
    def from_json(cls, path) -> "Qwen2Config":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config file not found")
        try:
            hf = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(hf, source=str(path))


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, with the statistics taken in float32 or wider whatever the model
    dtype (half precision is upcast; a float64 model keeps float64)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_cos_sin(positions, head_dim: int, theta: float, dtype):
    """Rotary tables for integer positions [B, T] -> cos, sin [B, 1, T, head_dim] (the 1 broadcasts over heads).

    Frequency i is theta^(-2i/head_dim); the two halves of a head share frequencies (rotate_half convention).
    """
    inverse_frequency = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                                      device=positions.device) / head_dim))
    angles = positions[..., None].float() * inverse_frequency          # [B, T, head_dim/2]
    angles = torch.cat((angles, angles), dim=-1)                         # [B, T, head_dim]
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rotary(x, cos, sin):
    """Rotate each (x[j], x[j + D/2]) pair of x [B, heads, T, D] by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class KVCache:
    """Keys and values of every layer, preallocated for the whole generation: [B, kv_heads, capacity, D].

    `length` positions are filled; a forward pass writes its T new positions in place at
    [length, length + T) and the caller advances `length` once the pass (all layers) is done.

    Attention takes any object with this `write` as its cache; the shared-prefix pass (below) passes
    ones that keep autograd history instead of writing into a buffer.
    """

    def __init__(self, config: Qwen2Config, batch_size: int, capacity: int, dtype, device):
        shape = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0

    def write(self, layer: int, keys, values):
        """Store keys/values [B, kv_heads, T, D] of one layer; return all filled ones [B, kv_heads, length + T, D]."""
        end = self.length + keys.shape[2]
        self.keys[layer][:, :, self.length:end] = keys
        self.values[layer][:, :, self.length:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    """Grouped-query self-attention: num_attention_heads query heads share num_key_value_heads k/v heads."""

    def __init__(self, config: Qwen2Config, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        batch, length, _ = x.shape                                                         # x [B, T, H]
        queries = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        values = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        queries, keys = apply_rotary(queries, cos, sin), apply_rotary(keys, cos, sin)   # [B, heads, T, D]
        if cache is not None:
            keys, values = cache.write(self.layer_index, keys, values)                   # [B, kv, S, D]
        # mask None means "plain causal" (or, for a single query, "see every key").
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=mask is None and length > 1,
            enable_gqa=self.num_heads != self.num_kv_heads)                               # [B, heads, T, D]
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen2Config, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Backbone(nn.Module):
    """Embedding, decoder layers, final norm. Attribute names mirror Hugging Face's `model.*` weight names."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, mask, cache=None):
        """input_ids, positions [B, T]; mask bool [B, 1, T, S] or None (causal) -> hidden [B, T, H].

        cache: None, or an object whose write(layer, keys, values) returns the S keys/values to attend to
        (a KVCache, or the shared-prefix pass's own)."""
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


def positions_from_mask(attention_mask):
    """attention_mask [B, T] (1 token, 0 pad) -> positions [B, T]: the count of real tokens before each one.

    A left-padded row thus numbers its tokens 0, 1, ... exactly as it would alone; pads get position 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def padded_causal_mask(key_is_token, query_count: int):
    """key_is_token bool [B, S] -> mask bool [B, 1, T, S] for the last T = query_count positions.

    A query sees earlier-or-same keys that are real tokens. A pad query also sees itself, so that no row of
    the attention is fully masked (which would give NaN that later layers carry through the pad positions).
    """
    key_count = key_is_token.shape[1]
    query_positions = torch.arange(key_count - query_count, key_count, device=key_is_token.device)[:, None]
    key_positions = torch.arange(key_count, device=key_is_token.device)[None, :]
    causal = key_positions <= query_positions                                       # [T, S]
    visible = (causal & key_is_token[:, None, :]) | (key_positions == query_positions)
    return visible[:, None]                                                          # [B, 1, T, S]


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------

class Qwen2(nn.Module):
    """Qwen2 causal language model. `model.*` holds the backbone; `lm_head` exists only when untied."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Backbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._initialise)

    def _initialise(self, module):
        """Fresh weights as Qwen2 was trained from: N(0, initializer_range), zero biases, unit norms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def lm_head_weight(self):
        """The output projection [V, H]; the embedding matrix itself when the config ties them."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def hidden_states(self, input_ids, attention_mask=None):
        """input_ids [B, T], attention_mask [B, T] (1 token, 0 pad) -> final-normed hidden states [B, T, H]."""
        if attention_mask is None or bool(attention_mask.all()):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            return self.model(input_ids, positions, mask=None)
        return self.model(input_ids, positions_from_mask(attention_mask),
                          mask=padded_causal_mask(attention_mask.bool(), input_ids.shape[1]))

    def continuation_hidden_states(self, prompt_ids, prompt_mask, rows, continuation_ids, continuation_mask,
                                   lengths=None):
        """The hidden states that predict each continuation token, with each prompt run once.

        prompt_ids, prompt_mask [P, Lp]: P prompts, left-padded. rows [B]: the prompt each continuation
        extends; lengths [B] (default: the whole prompt): how many of that prompt's first tokens it extends,
        so that a prompt which begins a longer one (a call's earlier turns) needs no row of its own.
        continuation_ids, continuation_mask [B, Lc]: the continuations, right-padded.
        Returns [B, Lc, H]: entry [b, t] is the final hidden state after the first lengths[b] tokens of prompt
        rows[b] followed by continuation_ids[b, :t], the one whose logits give p(continuation_ids[b, t]); for
        t = 0 that is the state of the prompt's lengths[b]-th token. Same positions, keys and values as one
        pass over each prompt + continuation (causal attention: a prompt's first tokens have the same keys
        and values whatever follows them), so the same numbers up to rounding, and the same gradients: a
        prompt's keys/values are indexed once per continuation, and the backward of that indexing sums the
        continuations' gradients into the prompt pass, as the repeated copies' gradients add up in the
        parameters.

        Work: each prompt's tokens once, the continuations' B x Lc attending to Lp + Lc keys, instead of
        B x (Lp + Lc) tokens. Left out: fusing the per-row copy of the prompt's keys/values into the
        attention kernel (on a CPU the copy is cheap next to the attention itself).
        """
        backbone = self.model
        prompt_lengths = prompt_mask.sum(1)                                                 # [P]
        lengths = prompt_lengths[rows] if lengths is None else lengths                      # [B]
        prompts, prompt_states = _prompts_alone(backbone, prompt_ids, prompt_lengths)      # states [P, Lp, H]

        continuation_length = continuation_ids.shape[1]
        offsets = torch.arange(continuation_length, device=continuation_ids.device)
        positions = lengths[:, None] + offsets                                              # [B, Lc]
        # Keys: the first lengths[b] tokens of the prompt row (its pads and any later tokens masked), then the
        # continuation's own, causally; a right-padded continuation's pads come after its tokens, so
        # causality alone hides them from real queries.
        start = prompt_ids.shape[1] - prompt_lengths[rows]                                  # [B]: first real column
        columns = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        in_prefix = (columns >= start[:, None]) & (columns < (start + lengths)[:, None])    # [B, Lp]
        key_is_token = torch.cat((in_prefix, continuation_mask.bool()), dim=1)              # [B, Lp + Lc]
        mask = padded_causal_mask(key_is_token, continuation_length)                      # [B, 1, Lc, Lp + Lc]
        hidden = backbone(continuation_ids, positions, mask, _AfterPrompt(prompts, rows))   # [B, Lc, H]
        # Token t is predicted by the state before it: the prefix's last one for t = 0.
        last_states = prompt_states[rows, start + lengths - 1]                              # [B, H]
        return torch.cat((last_states[:, None], hidden[:, :-1]), dim=1)                     # [B, Lc, H]

    def forward(self, input_ids, attention_mask=None):
        """input_ids [B, T], attention_mask [B, T] -> logits [B, T, V]."""
        return F.linear(self.hidden_states(input_ids, attention_mask), self.lm_head_weight)


class _RecordKeysValues:
    """The cache of a prompt pass that continuations will share: each layer's keys and values, kept with
    their autograd history (a KVCache writes into a buffer, which suits inference only)."""

    def __init__(self):
        self.keys, self.values = [], []           # per layer [prompts, kv_heads, length, D]

    def write(self, layer: int, keys, values):
        self.keys.append(keys)
        self.values.append(values)
        return keys, values

    @classmethod
    def left_padded(cls, records, width: int) -> "_RecordKeysValues":
        """Records of single prompts ([1, kv, L, D] per layer) -> one [P, kv, width, D] per layer, each
        prompt's keys/values left-padded to `width` (the pads are masked out of attention)."""
        def pad(tensor):
            return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))                # [1, kv, width, D]
        stacked = cls()
        for layer in range(len(records[0].keys)):
            stacked.keys.append(torch.cat([pad(record.keys[layer]) for record in records]))
            stacked.values.append(torch.cat([pad(record.values[layer]) for record in records]))
        return stacked


def _prompts_alone(backbone, prompt_ids, prompt_lengths, reuse=None):
    """Run each of the left-padded prompts prompt_ids [P, Lp] alone, without its pads (padded to the longest,
    the spread of prompt lengths in the training pool would spend about a third of the pass on pads).
    Returns their keys/values left-padded back to [P, kv, Lp, D] per layer (a _RecordKeysValues) and their
    final hidden states, left-padded alike [P, Lp, H] (zeros on pads, and on a beginning taken from `reuse`).

    reuse: (PrefillCache, one key per prompt), at inference only: a prompt that begins with its key's last
    prompt runs only the tokens after that beginning, attending to its stored keys/values; every prompt is
    then stored under its key."""
    width = prompt_ids.shape[1]
    cache, keys = reuse or (None, None)
    alone, states = [], []
    for index, (ids, length) in enumerate(zip(prompt_ids, prompt_lengths.tolist())):
        ids = ids[width - length:]                                                            # [L]
        tokens = ids.tolist() if cache else None
        known = cache.beginning(keys[index], tokens) if cache else None
        start = 0 if known is None else known.keys[0].shape[2]
        alone.append(_RecordKeysValues() if known is None else _AfterBeginning(known))
        positions = torch.arange(start, length, device=ids.device)[None]                      # [1, L - start]
        # After a known beginning the new queries are the last of the keys: causal by position, not from the
        # top-left corner as scaled_dot_product_attention's is_causal aligns a non-square mask.
        mask = None if known is None else padded_causal_mask(torch.ones(1, length, dtype=torch.bool,
                                                                        device=ids.device), length - start)
        hidden = backbone(ids[None, start:], positions, mask, alone[-1])                      # [1, L - start, H]
        states.append(F.pad(hidden, (0, 0, width - length + start, 0)))                       # [1, Lp, H]
        if cache:
            cache.store(keys[index], tokens, alone[-1])
    return _RecordKeysValues.left_padded(alone, width), torch.cat(states)


class _AfterBeginning(_RecordKeysValues):
    """The record of a prompt prefilled after a known beginning: each layer's keys/values are the beginning's,
    then the new tokens' ([1, kv, L, D]), as a pass over the whole prompt would have recorded them."""

    def __init__(self, beginning: _RecordKeysValues):
        super().__init__()
        self.beginning = beginning

    def write(self, layer: int, keys, values):
        return super().write(layer, torch.cat((self.beginning.keys[layer], keys), dim=2),
                             torch.cat((self.beginning.values[layer], values), dim=2))


class PrefillCache:
    """The keys and values of each key's last prompt (a key per conversation), so that its next prompt, when it
    begins with the last one, is prefilled from where that one ended. A played call's DOGA prompts grow so: each
    is the one before, then the reply as written, the customer's words and the next outline; prefilling only
    what is new turns a call's prefill work from one pass per turn into about one pass over the call.

    Inference only (generate_completions); the memory is one prompt's keys and values per key, until `keep`
    forgets it. Left out: keeping the generated answer's keys (the next prompt has the reply as written, not the
    answer with its thought)."""

    def __init__(self):
        self.prompts = {}                        # key -> (token ids, _RecordKeysValues: [1, kv, L, D] per layer)

    def beginning(self, key, ids):
        """The record of key's last prompt if it is a beginning of `ids` shorter than it, else None (a prompt
        needs at least one new token: its last state predicts the first generated one)."""
        known, record = self.prompts.get(key, ((), None))
        return record if record is not None and len(known) < len(ids) and ids[:len(known)] == known else None

    def store(self, key, ids, record):
        self.prompts[key] = (ids, record)

    def keep(self, keys):
        """Forget every key but `keys` (the conversations still going on)."""
        self.prompts = {key: self.prompts[key] for key in keys if key in self.prompts}


class _AfterPrompt:
    """The cache of a continuation pass: row b attends to the keys/values of its prompt rows[b], then to its own."""

    def __init__(self, prompts: _RecordKeysValues, rows):
        self.prompts, self.rows = prompts, rows

    def write(self, layer: int, keys, values):
        # [P, kv, Lp, D] indexed by rows -> [B, kv, Lp, D], then the continuation's [B, kv, Lc, D] after it.
        return (torch.cat((self.prompts.keys[layer][self.rows], keys), dim=2),
                torch.cat((self.prompts.values[layer][self.rows], values), dim=2))  # [B, kv, Lp + Lc, D]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Per-token log-probabilities
# ----------------------------------------------------------------------------------------------------------

def pad_right(sequences, pad_id, device=None):
    """List of token lists -> (ids [B, T], attention mask [B, T]) padded on the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_left(sequences, pad_id: int, device=None):
    """List of token lists -> (ids [B, T], attention mask [B, T]) padded on the left, as prompts are for
    generation: every row's last token sits in the last column."""
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def sequence_logprobs(model, input_ids, attention_mask, target_mask, temperature=1.0, return_entropy=False):
    """log p(token_t | tokens_<t) for every position that `target_mask` marks, zeros elsewhere.

    input_ids, attention_mask, target_mask: [B, T]. Returns float32 [B, T]; column 0 is always 0 (the
    first token has no context). Only the marked positions go through the fused kernel, so the
    [tokens x vocabulary] logits are never materialised. With return_entropy, also the entropy of the
    distribution each marked token was drawn from (at `temperature`), float32 [B, T], for logging.
    """
    hidden = model.hidden_states(input_ids, attention_mask)          # [B, T, H]
    predicts = target_mask[:, 1:].bool()                              # [B, T-1]: position t predicts t+1
    chosen_hidden = hidden[:, :-1][predicts]                          # [N, H]
    chosen_targets = input_ids[:, 1:][predicts]                       # [N]

    def at_marked_positions(values):                                  # [N] -> [B, T]
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        out[:, 1:][predicts] = values
        return out

    if not return_entropy:
        return at_marked_positions(fused_linear_logprobs(chosen_hidden, model.lm_head_weight, chosen_targets,
                                                         temperature))
    logprobs, entropy = fused_linear_logprobs(chosen_hidden, model.lm_head_weight, chosen_targets, temperature,
                                              return_entropy=True)
    return at_marked_positions(logprobs), at_marked_positions(entropy)


@dataclass
class Continuations:
    """B token sequences continuing prompts, laid out for the shared-prompt pass: each prompt stored once, and a
    prompt that begins a longer stored one stored only as that one's beginning.

    prompt_ids, prompt_mask [P, Lp]: the stored prompts, left-padded; rows [B]: the stored prompt each
    continuation extends; ids, mask [B, Lc]: the continuations, right-padded (1 on tokens, 0 on pads);
    lengths [B]: how many of its stored prompt's first tokens each continuation extends (default: all).
    """
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    rows: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor = None

    def __post_init__(self):
        if self.lengths is None:
            self.lengths = self.prompt_mask.sum(1)[self.rows]

    @classmethod
    def from_lists(cls, prompts, continuations, pad_id: int, device=None) -> "Continuations":
        """prompts[b] and continuations[b]: token lists of sequence b. A prompt equal to, or the beginning of,
        another one is not stored again (GRPO's group shares one prompt; the answers of a played call each
        continue a prompt that begins the next one's)."""
        stored, rows = [], [0] * len(prompts)
        for b in sorted(range(len(prompts)), key=lambda b: -len(prompts[b])):        # the longest first
            prompt = list(prompts[b])
            rows[b] = next((row for row, longer in enumerate(stored) if longer[:len(prompt)] == prompt), len(stored))
            if rows[b] == len(stored):
                stored.append(prompt)
        prompt_ids, prompt_mask = pad_left(stored, pad_id, device)
        ids, mask = pad_right(continuations, pad_id, device)
        return cls(prompt_ids, prompt_mask, torch.tensor(rows, device=device), ids, mask,
                   torch.tensor([len(prompt) for prompt in prompts], device=device))

    def token_count(self) -> int:
        """Tokens of all B prompt + continuation sequences, each prompt counted once per continuation."""
        return int(self.lengths.sum() + self.mask.sum())


def continuation_logprobs(model: Qwen2, sequences: Continuations, target_mask, temperature: float = 1.0,
                          return_entropy: bool = False):
    """log p(ids[b, t] | prompt rows[b], ids[b, :t]) wherever target_mask [B, Lc] is set, 0 elsewhere.

    Returns float32 [B, Lc], differentiable (and with return_entropy the entropy of each of those
    distributions at `temperature`, placed alike, for logging). Each prompt is run once
    (Qwen2.continuation_hidden_states) and only the marked positions go through the fused kernel, so the
    [tokens x vocabulary] logits are never materialised. The same numbers up to rounding as
    sequence_logprobs over each prompt + continuation (tests/full_sequence.py, which bench/grpo_step.py times
    against), at several times less cost.
    """
    hidden = model.continuation_hidden_states(sequences.prompt_ids, sequences.prompt_mask, sequences.rows,
                                              sequences.ids, sequences.mask, sequences.lengths)  # [B, Lc, H]
    chosen = target_mask.bool()

    def at_marked_positions(values):                                   # [N] -> [B, Lc]
        out = torch.zeros(sequences.ids.shape, dtype=torch.float32, device=sequences.ids.device)
        out[chosen] = values
        return out

    computed = fused_linear_logprobs(hidden[chosen], model.lm_head_weight, sequences.ids[chosen], temperature,
                                     return_entropy=return_entropy)
    if not return_entropy:
        return at_marked_positions(computed)
    return tuple(at_marked_positions(values) for values in computed)


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------

def choose_next_tokens(logits, temperature: float, top_p: float, generator):
    """logits [B, V] -> token ids [B]: argmax at temperature 0, else a sample from the top-p nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # In float32 or wider: half precision is upcast, a float64 model keeps float64.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probabilities = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (always at least the first one).
        sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)
        mass_before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
        sorted_probabilities = sorted_probabilities.masked_fill(mass_before >= top_p, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probabilities)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def check_sampling(name: str, temperature: float, top_p: float):
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"{name}: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def generate(model: Qwen2, input_ids, attention_mask=None, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, eos_token_id=None, generator=None, pad_token_id=None, reuse=None):
    """Continue left-padded prompts input_ids [B, T] -> LongTensor [B, T + n], n <= max_new_tokens.

    Each row stops at its own EOS (eos_token_id: an id or a list of ids); the rest of a finished row is
    pad_token_id (default: the first EOS id); generation ends early once every row has finished.
    temperature 0 is greedy decoding; otherwise tokens are sampled at that temperature from the top-p
    nucleus, drawing from `generator` (a torch.Generator) for reproducible runs. reuse: (PrefillCache, a key
    per row): prefill each prompt after its key's last prompt when it begins with it (PrefillCache).
    """
    check_sampling("generate", temperature, top_p)
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError("generate: prompts must be left-padded (attention_mask[:, -1] must be 1 for every row)")
    with torch.inference_mode():
        completion = _generate_completion(model, input_ids, attention_mask, max_new_tokens, temperature, top_p,
                                          eos_token_id, [generator], pad_token_id, reuse=reuse)
    # Cloned outside inference mode so the ids can feed a training forward pass (e.g. GRPO's log-probs).
    return torch.cat((input_ids, completion), dim=1).clone()


def generate_groups(model: Qwen2, prompts, group_size: int, generators, max_new_tokens: int = 64,
                    temperature: float = 0.0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None):
    """`group_size` continuations of each of P prompts, all in one batch -> LongTensor [P * group_size, n].

    prompts: P lists of token ids, of any lengths; generators: P torch.Generators (or None for greedy),
    one per prompt. Row g * group_size + i is continuation i of prompts[g]: its new tokens only, ended and
    padded as in `generate`. Each prompt is prefilled once, left-padded to the longest; then all samples
    decode together, one cached pass per token, a group's samples sharing its prompt's keys and values
    (see _generate_completion).

    Reproducibility: group g draws from generators[g] over its own rows, with exactly the calls `generate`
    makes for group_size copies of prompts[g] alone, and stops drawing once its rows have all finished.
    Its samples therefore depend on its generator, not on which groups share the batch, as far as the
    probabilities themselves agree: padding and batch shape change the order of floating-point sums, so
    in float32 a draw that falls within rounding of a boundary between two tokens can differ (float64
    makes that vanishingly rare; tests/test_shared_prefix.py checks alone against batched there).
    Left out: paged or ragged caches (every row holds the longest prompt's width; pads are masked).
    """
    check_sampling("generate_groups", temperature, top_p)
    if len(generators) != len(prompts):
        raise ValueError(f"generate_groups: {len(prompts)} prompts but {len(generators)} generators")
    # Prompt pads are masked out of attention, so their id does not matter.
    input_ids, attention_mask = pad_left(prompts, 0, model.lm_head_weight.device)        # [P, Lp]
    with torch.inference_mode():
        completion = _generate_completion(model, input_ids, attention_mask, max_new_tokens, temperature, top_p,
                                          eos_token_id, list(generators), pad_token_id, group_size)
    return completion.clone()


def _generate_completion(model, input_ids, attention_mask, max_new_tokens, temperature, top_p, eos_token_id,
                         generators, pad_token_id, group_size=1, reuse=None):
    """The decoding loop: a prefill pass over each of the P prompts input_ids [P, T], then one cached pass
    per new token for all P x G rows (G = group_size; prompt p's samples are rows p*G ... p*G + G - 1)
    -> [P * G, n]. The rows form len(generators) equal blocks; block i draws from generators[i].

    A prompt's G samples share its row of the cache: each decode pass feeds that row G new tokens, one
    per sample, stored side by side (sample i's token of step s at slot T + s*G + i), and sample i's query
    attends to the prompt and to its own tokens only. So a prompt's keys and values are kept and read
    once per step for its whole group, not once per sample. With G = 1 this is plain batched decoding.
    """
    prompts, prompt_length = input_ids.shape
    G = group_size
    batch = prompts * G
    device = input_ids.device
    eos_ids = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    pad_id = pad_token_id if pad_token_id is not None else (int(eos_ids[0]) if eos_ids is not None else 0)
    weight = model.lm_head_weight                                                      # [V, H]
    cache = KVCache(model.config, prompts, prompt_length + G * max_new_tokens, weight.dtype, device)

    prompt_is_token = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                       else attention_mask.bool())                                     # [P, T]
    # Prefill: each prompt alone, without its pads; its keys/values fill its (left-padded) cache row.
    prompt_lengths = prompt_is_token.sum(1)                                            # [P]
    prefilled, states = _prompts_alone(model.model, input_ids, prompt_lengths, reuse)  # states [P, T, H]
    hidden = states[:, -1]                                                             # [P, H]: last tokens
    for layer, (keys, values) in enumerate(zip(prefilled.keys, prefilled.values)):
        cache.write(layer, keys, values)
    cache.length = prompt_length
    hidden = hidden.repeat_interleave(G, dim=0)                 # [B, H]: a group's first tokens share it
    next_position = prompt_lengths[:, None].expand(-1, G).clone()                     # [P, G]
    # What each sample's query may see in a decode pass: its prompt's real tokens, then its own slots.
    visible = None
    if G > 1 or not bool(prompt_is_token.all()):
        own = torch.arange(G * max_new_tokens, device=device) % G == torch.arange(G, device=device)[:, None]
        visible = torch.cat((prompt_is_token[:, None, :].expand(-1, G, -1),
                             own.expand(prompts, -1, -1)), dim=2)[:, None]             # [P, 1, G, T + G*n]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    completion = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    produced = 0
    while produced < max_new_tokens:
        tokens = choose_in_blocks(F.linear(hidden, weight), finished, temperature, top_p, generators)  # [B]
        if eos_ids is not None:
            tokens = tokens.masked_fill(finished, pad_id)
            finished |= torch.isin(tokens, eos_ids)
        completion[:, produced] = tokens
        produced += 1
        if produced == max_new_tokens or (eos_ids is not None and bool(finished.all())):
            break
        # Decode pass: each prompt row takes its G samples' new tokens [P, G] as G queries.
        step_mask = None if visible is None else visible[..., :cache.length + G]        # [P, 1, G, S]
        hidden = model.model(tokens.view(prompts, G), next_position, step_mask, cache)   # [P, G, H]
        hidden = hidden.reshape(batch, -1)                                               # [B, H]
        cache.length += G
        next_position += 1
    return completion[:, :produced]


def choose_in_blocks(logits, finished, temperature: float, top_p: float, generators):
    """logits [B, V] -> token ids [B]: row block i (B / len(generators) rows) chosen with generators[i].

    A block whose rows have all finished draws nothing (its rows' tokens are then overwritten with pads):
    alone, its generation would have ended there, so its generator is left where that run leaves it.
    """
    block = logits.shape[0] // len(generators)
    tokens = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    for index, generator in enumerate(generators):
        rows = slice(index * block, (index + 1) * block)
        if not bool(finished[rows].all()):
            tokens[rows] = choose_next_tokens(logits[rows], temperature, top_p, generator)
    return tokens


def generate_completions(model: Qwen2, prompts, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                         temperature: float = 0.0, top_p: float = 1.0, generator=None, cache=None, keys=None):
    """Continue prompts given as token-id lists, together in one left-padded batch, each up to its EOS.

    Returns one (completion ids, truncated) per prompt, as cut_at_eos gives them: the generated ids up to
    and including the first EOS, or all max_new_tokens of them with truncated = True when no EOS came.
    DOGA's agents and the evaluation's batches generate through it
    (decoding with skip_special_tokens drops the EOS again); GRPO's groups go through generate_groups
    and the same cut_at_eos. cache, keys: a PrefillCache and a key per prompt (the played calls of
    calls_grpo.py: a call's prompt is prefilled from where its last one ended).
    """
    input_ids, attention_mask = pad_left(prompts, pad_token_id, model.lm_head_weight.device)    # [B, T]
    output = generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, eos_token_id=eos_token_id, generator=generator,
                      pad_token_id=pad_token_id, reuse=None if cache is None else (cache, keys))  # [B, T + n]
    return cut_at_eos(output[:, input_ids.shape[1]:], eos_token_id)


def cut_at_eos(completions, eos_token_id: int):
    """Generated ids [B, n] -> one (ids, truncated) per row: the ids up to and including the first EOS,
    or all n of them with truncated = True when no EOS came."""
    cut = []
    for row in completions.tolist():
        if eos_token_id in row:
            cut.append((row[:row.index(eos_token_id) + 1], False))
        else:
            cut.append((row, True))
    return cut


# ----------------------------------------------------------------------------------------------------------
# Checkpoint IO (Hugging Face folder layout)
# ----------------------------------------------------------------------------------------------------------

def _read_safetensors(file: Path) -> dict:
    """All tensors of one safetensors file; a missing, truncated or corrupt file is a CheckpointError."""
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            return {name: reader.get_tensor(name) for name in reader.keys()}
    except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{file}: cannot read safetensors file ({error}); is it truncated or corrupt?") from None


def _read_weights(folder: Path) -> tuple[dict, dict]:
    """-> (tensors by name, file holding each name) from model.safetensors or a sharded index."""
    index_file = folder / WEIGHTS_INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_file}: not a valid safetensors index ({error!r})") from None
        tensors, source = {}, {}
        for shard_name in sorted(set(weight_map.values())):
            shard = _read_safetensors(folder / shard_name)
            tensors.update(shard)
            source.update({name: folder / shard_name for name in shard})
        for name, shard_name in weight_map.items():
            if source.get(name) != folder / shard_name:
                raise CheckpointError(f"{index_file}: tensor {name} is listed in {shard_name}, which does not hold it")
        return tensors, source
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{folder}: no weights found (expected {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE})")
    tensors = _read_safetensors(file)
    return tensors, {name: file for name in tensors}


def load_pretrained(path, dtype=None, device=None) -> Qwen2:
    """Load a Hugging Face Qwen2/Qwen2.5 folder (config.json + model.safetensors or a sharded index).

    dtype: torch dtype of the parameters (default: the checkpoint's); device: where they live (default CPU).
    Every tensor is checked by name and shape against the config before anything is built.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    config = Qwen2Config.from_json(folder / CONFIG_FILE)
    tensors, source = _read_weights(folder)
    weights_label = folder / (WEIGHTS_INDEX_FILE if (folder / WEIGHTS_INDEX_FILE).is_file() else WEIGHTS_FILE)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some exports keep a copy; tied means the embedding is used

    with torch.device("meta"):  # shapes only: no memory, no random init for weights about to be replaced
        model = Qwen2(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{weights_label}: missing tensor {name}")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{source[name]}: tensor {name} has shape {tuple(tensors[name].shape)}, but "
                                  f"{folder / CONFIG_FILE} implies {shape}")
    for name in tensors:
        if name not in expected:
            raise CheckpointError(f"{source[name]}: unexpected tensor {name} (not part of a Qwen2 model with "
                                  f"this {CONFIG_FILE})")

    dtype = dtype or tensors["model.embed_tokens.weight"].dtype
    device = torch.device(device or "cpu")
    model.load_state_dict({name: t.to(device=device, dtype=dtype) for name, t in tensors.items()},
                          strict=True, assign=True)
    return model.eval()


def load_with_tokenizer(path, dtype=None, device=None):
    """(model, ChatTokenizer) of a checkpoint folder, refused with a clear error when the tokenizer is not
    the one the weights were trained with: its ids do not fit the model's embedding, or config.json records
    another tokenizer.json (one of the same size with other merges would load and then speak garbage). A
    folder whose config.json records none (a downloaded checkpoint) is checked for size alone."""
    model = load_pretrained(path, dtype=dtype, device=device)
    tokenizer = ChatTokenizer.load(path)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, path)
    folder = Path(path)
    recorded = json.loads((folder / CONFIG_FILE).read_text()).get(TOKENIZER_FIELD)
    if recorded is not None and recorded != fingerprint(folder / TOKENIZER_FILE):
        raise CheckpointError(f"{folder / TOKENIZER_FILE}: not the tokenizer these weights were trained with "
                              f"({folder / CONFIG_FILE} records {TOKENIZER_FIELD} {recorded[:19]}..., this file is "
                              f"{fingerprint(folder / TOKENIZER_FILE)[:19]}...); put back the tokenizer.json "
                              "saved with the weights")
    return model, tokenizer


def weights_fingerprint(path) -> str:
    """files.fingerprint of a checkpoint's weights: of model.safetensors, or of the index and every shard
    of a sharded checkpoint (combined into one). What a GRPO run records of the base model it started from."""
    folder = Path(path)
    index_file = folder / WEIGHTS_INDEX_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if not index_file.is_file():
        if not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{folder}: no weights found (expected {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE})")
        return fingerprint(folder / WEIGHTS_FILE)
    try:
        shards = set(json.loads(index_file.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index_file}: not a valid safetensors index ({error!r})") from None
    parts = [f"{name}:{fingerprint(folder / name)}" for name in sorted({WEIGHTS_INDEX_FILE} | shards)]
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _is_weights_or_config(name: str) -> bool:
    return name in (CONFIG_FILE, WEIGHTS_INDEX_FILE) or (name.startswith("model") and name.endswith(".safetensors"))


def save_pretrained(model: Qwen2, path, tokenizer: ChatTokenizer | None = None, leave_out=()) -> None:
    """Write config.json + model.safetensors to the folder `path`, atomically; with `tokenizer`, also its
    tokenizer.json, its fingerprint recorded in config.json (load_with_tokenizer checks it).

    Everything is written to a staging folder beside the target, flushed to disk, and swapped in by
    rename (files.replace_folder): a crash leaves either the old checkpoint or the new one at `path`,
    never a mixture. Other files already in the target folder (a tokenizer.json, a training log) are
    carried over into the new one, except the names in `leave_out`: files that belong to whoever holds
    the folder rather than to the model (a run's lock).
    """
    target = Path(path).resolve()
    with replace_folder(target) as staging:
        staging = Path(staging)
        if target.is_dir():   # first, so that what is written below replaces an older copy
            for entry in target.iterdir():
                if not _is_weights_or_config(entry.name) and entry.name not in leave_out:
                    copy = shutil.copytree if entry.is_dir() else shutil.copy2
                    copy(entry, staging / entry.name)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
        hf_config = model.config.to_hf_dict()
        hf_config["dtype"] = str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch.")
        if tokenizer is not None:
            tokenizer.save(staging)
            hf_config[TOKENIZER_FIELD] = fingerprint(staging / TOKENIZER_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
