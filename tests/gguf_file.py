"""A tiny real GGUF file, written on the spot with the `gguf` package (no download).

`build_gguf_file(path)` writes what llama.cpp's converter writes for a Llama model, at toy size: the
byte-level BPE tokenizer of tests/model_folder.py (its `<|im_start|>` chat template, `<|im_end|>` as
<eos>, `<|endoftext|>` as padding) as `tokenizer.ggml.*` and `tokenizer.chat_template` metadata, and a
random Llama decoder (hidden 64, 2 layers) under llama.cpp's tensor names (`token_embd`,
`blk.N.attn_q`, ...), its matrices quantised to Q8_0 so loading it dequantises as a real file's
would. `architecture` other than "llama" writes the same file under that name (a made-up one is
what transformers cannot load).

Tests take it from the `gguf_file` fixture (tests/test_models_gguf.py). Needs the `gguf` package
(`pip install -e ".[gguf]"`).
"""

from __future__ import annotations

import json
from pathlib import Path

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 512


def tokenizer_metadata() -> dict:
    """tests/model_folder.py's tokenizer as a GGUF describes one: tokens by id, their types, the merges."""
    import gguf
    from model_folder import build_tokenizer

    tokenizer = build_tokenizer()
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    special = set(tokenizer.all_special_ids)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return {
        "tokens": tokens,
        "types": [int(t) for t in types],
        "merges": merges,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "chat_template": tokenizer.chat_template,
    }


def build_gguf_file(
    path: str | Path, architecture: str = "llama", seed: int = 0, leave_out: tuple[str, ...] = ()
) -> Path:
    """Write a tiny Llama (or the same under another architecture name) as a GGUF file; returns its path.
    `leave_out`: tensor names not to write (a file that lacks weights its model needs)."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_metadata()
    vocab = len(tok["tokens"])
    head_dim = HIDDEN // HEADS

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-chat-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    writer.add_eos_token_id(tok["eos"])
    writer.add_pad_token_id(tok["pad"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok["chat_template"])

    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    def add_plain(name: str, weights: np.ndarray) -> None:
        if name not in leave_out:
            writer.add_tensor(name, weights)

    def add_quantized(name: str, weights: np.ndarray) -> None:
        q8 = gguf.GGMLQuantizationType.Q8_0
        if name not in leave_out:
            writer.add_tensor(name, gguf.quants.quantize(weights, q8), raw_dtype=q8)

    add_plain("token_embd.weight", matrix(vocab, HIDDEN))  # tied: no output.weight
    add_plain("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for i in range(LAYERS):
        add_plain(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        add_plain(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        add_quantized(f"blk.{i}.attn_q.weight", matrix(HEADS * head_dim, HIDDEN))
        add_quantized(f"blk.{i}.attn_k.weight", matrix(KV_HEADS * head_dim, HIDDEN))
        add_quantized(f"blk.{i}.attn_v.weight", matrix(KV_HEADS * head_dim, HIDDEN))
        add_quantized(f"blk.{i}.attn_output.weight", matrix(HIDDEN, HEADS * head_dim))
        add_quantized(f"blk.{i}.ffn_gate.weight", matrix(FFN, HIDDEN))
        add_quantized(f"blk.{i}.ffn_up.weight", matrix(FFN, HIDDEN))
        add_quantized(f"blk.{i}.ffn_down.weight", matrix(HIDDEN, FFN))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
