"""A tiny random instruction model in mlx-lm's format, to run `moshi-mlx assistant` anywhere.

The folder holds what an mlx-community Qwen2 repo holds: `config.json` (model_type qwen2),
`model.safetensors` in mlx-lm's names, and a real byte-level BPE tokenizer trained offline with
the `tokenizers` package (`tokenizer.json`, `tokenizer_config.json` with Qwen's ChatML
`chat_template`, `<|im_end|>` the end of a turn). `mlx_lm.load`, `mlx_lm.generate` and
`mlx_lm.server` take it as they take a real model. The weights are random: it writes gibberish
made of the tokenizer's words, which is all a test needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

# Qwen2's architecture at a tiny width (grouped KV, biased q/k/v, tied embeddings)
TINY_LLM = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
VOCAB_SIZE = 400
# printable ASCII as byte-level BPE spells it (space is "Ġ", a new line "Ċ")
ALPHABET = [chr(b) for b in range(33, 127)] + ["Ġ", "Ċ"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5's ChatML template (system, user and assistant turns; the generation prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "hello there how are you today",
    "i am fine thank you and you",
    "what is the weather like in paris",
    "it is sunny and warm with a light breeze",
    "tell me a story about a cat and a dog",
    "once upon a time a small cat met a friendly dog in the garden",
    "the quick brown fox jumps over the lazy dog",
    "good morning good evening good night",
    "can you help me with my homework please",
    "of course let us start with the first question",
]


def write_tiny_llm_tokenizer(folder: Path) -> None:
    """Train a byte-level BPE tokenizer on `CORPUS` and save it as a Hugging Face fast
    tokenizer with Qwen's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TINY_LLM["max_position_embeddings"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_tiny_llm(
    folder: str | Path, seed: int = 0, scale: float = 0.3, widths: dict | None = None
) -> Path:
    """Write a tiny random Qwen2 instruction model in mlx-lm's layout into `folder`.

    Args:
        folder: created if needed.
        seed: seed of the random weights.
        scale: standard deviation of the weights (large enough that greedy decoding wanders
            over the vocabulary instead of repeating one token).
        widths: Qwen2 config keys replacing the tiny ones (`hidden_size`, `num_hidden_layers`,
            ...: a real model's widths for a benchmark; the tokenizer stays the tiny one).

    Returns:
        The folder.
    """
    from mlx_lm.models.qwen2 import Model, ModelArgs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_llm_tokenizer(folder)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = {
        **TINY_LLM,
        **(widths or {}),
        "vocab_size": tokenizer.get_vocab_size(),
        "bos_token_id": None,
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "torch_dtype": "float32",
    }
    model = Model(ModelArgs.from_dict(config))
    params = sorted(tree_flatten(model.parameters()))
    keys = mx.random.split(mx.random.key(seed), len(params))
    weights = {}
    for key, (name, value) in zip(keys, params, strict=True):
        noise = mx.random.normal(value.shape, key=key)
        weights[name] = 1 + 0.1 * noise if name.endswith("norm.weight") else scale * noise
    # the special tokens' rows near zero: greedy decoding writes words, not `<|im_start|>`
    embed = "model.embed_tokens.weight"
    weights[embed][: len(SPECIAL_TOKENS)] *= 0.01
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
