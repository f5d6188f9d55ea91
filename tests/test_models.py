"""Tokenizer and policies: character tokenizer, tiny model, save/load round trip, folder checks."""

import json
from pathlib import Path

import pytest
import torch

from sspo_cli.models import (
    ModelError,
    build_char_tokenizer,
    build_tiny_model,
    load_policy,
    load_pretrained,
    save_policy,
)
from sspo_cli.recipe import ModelConfig, TinyModelConfig

ALPHABET = "0123456789+-=* "
SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def test_char_tokenizer_is_one_token_per_character_with_bos() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    ids = tokenizer("12+34=")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == 1 + len("12+34=")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12+34="
    assert len(tokenizer) == len(set(ALPHABET)) + 4
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token} == {"<pad>", "<eos>", "<unk>"}


def test_char_tokenizer_keeps_spaces_and_maps_unknown_characters() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    assert tokenizer.decode(tokenizer("1 2", add_special_tokens=False)["input_ids"]) == "1 2"
    assert tokenizer("x", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_prompts_are_left_padded_for_generation() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    batch = tokenizer(["1+2=", "12+34="], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1, 1, 1]


def test_tiny_model_init_is_seeded() -> None:
    tokenizer = build_char_tokenizer(ALPHABET)
    a, b, c = (build_tiny_model(SMALL, tokenizer, seed) for seed in (0, 0, 1))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_model_and_tokenizer_round_trip_through_a_folder(tmp_path: Path) -> None:
    model, tokenizer = load_policy(ModelConfig(tiny=SMALL, device="cpu"), ALPHABET, seed=3)
    save_policy(model, tokenizer, tmp_path)
    loaded, loaded_tok = load_pretrained(ModelConfig(path=str(tmp_path), device="cpu"))
    ids = torch.tensor([tokenizer("37+45=")["input_ids"]])
    assert loaded_tok("37+45=")["input_ids"] == ids[0].tolist()
    assert loaded_tok.padding_side == "left"
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)


def test_missing_folder_names_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model.path: folder .* does not exist"):
        load_pretrained(ModelConfig(path=str(tmp_path / "nope")))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        load_pretrained(ModelConfig(path=str(tmp_path)))


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    model, tokenizer = load_policy(ModelConfig(tiny=SMALL, device="cpu"), ALPHABET, seed=0)
    save_policy(model, tokenizer, tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        load_pretrained(ModelConfig(path=str(tmp_path)))


def test_encoder_model_folder_is_not_a_causal_lm(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=50)
    DistilBertModel(config).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "distilbert"
    with pytest.raises(ModelError, match="not a causal language model"):
        load_pretrained(ModelConfig(path=str(tmp_path)))


def test_bert_encoder_folder_is_refused_although_its_config_maps_to_an_lm_head(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50)
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="BertModel, not a causal language model"):
        load_pretrained(ModelConfig(path=str(tmp_path)))


def test_folder_without_tokenizer_is_refused(tmp_path: Path) -> None:
    model, _ = load_policy(ModelConfig(tiny=SMALL, device="cpu"), ALPHABET, seed=0)
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_pretrained(ModelConfig(path=str(tmp_path)))
