"""A small real Hugging Face model folder, built on the spot with no download.

`build_model_folder(path)` writes what `model.path` reads: a byte-level BPE tokenizer trained with
`tokenizers` on the local text below, with a Qwen-style `<|im_start|>` chat template, `<|im_end|>`
as <eos> and `<|endoftext|>` as padding, wrapped in `PreTrainedTokenizerFast`; and a random-init
Qwen2 decoder (hidden 64, 2 layers), both saved with `save_pretrained` (safetensors).

Tests take it from the `model_folder` fixture in conftest.py (built once per session, read-only:
copy it before changing it); other code can call `build_model_folder` directly. Building takes
a few seconds, most of it importing transformers.
"""

from __future__ import annotations

from pathlib import Path

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = (PAD, "<|im_start|>", EOS)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# What the tokenizer learns its merges from: the kind of text the tests' tasks hold.
TRAINING_TEXT = [
    "What is 12 plus 30? The answer is 42.",
    "Solve the problem and put the final answer in \\boxed{7}.",
    "Question: how many apples are left?\nAnswer: #### 5",
    "You are a careful assistant. Think step by step, then answer.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) { } #",
    "The sum of 3 and 4 is 7. The product of 6 and 7 is 42. Done.",
]
VOCAB_SIZE = 400


def build_tokenizer():
    """The folder's tokenizer, in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(TRAINING_TEXT * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=PAD, additional_special_tokens=["<|im_start|>"]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_model_folder(folder: str | Path, seed: int = 0, chat_template: bool = True) -> Path:
    """Write the tokenizer (with its chat template unless `chat_template` is False) and a random tiny Qwen2."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = Path(folder)
    tokenizer = build_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
