"""Our tokenizer wrapper against transformers' tokenizer for the same folder."""

import os

import pytest

from isheep_jax.model.tokenizer import Tokenizer, TokenizerError

TEXTS = ["hello world! how are you today?", "the quick brown fox", "Zebra 123 \n\n tabs\tand ünicode", ""]


def test_bpe_ids_match_transformers(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == theirs.decode(
            theirs(text)["input_ids"], skip_special_tokens=True
        )
    assert (ours.eos_id, ours.pad_id, ours.bos_id) == (
        theirs.eos_token_id,
        theirs.pad_token_id,
        theirs.bos_token_id,
    )


def test_chat_template_matches_transformers(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.render_prompt("hi", "raw") == "hi"
    assert ours.render_prompt("hi", "llama3").endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_sentencepiece_ids_match_transformers(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(["the quick brown fox jumps over the lazy dog", "hello world", "sort numbers 1 2 3"] * 50)
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=60,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
    )
    folder = tmp_path / "sp"
    folder.mkdir()
    os.replace(tmp_path / "tokenizer.model", folder / "tokenizer.model")
    ours = Tokenizer(str(folder))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in ["hello world", "the lazy dog sorts 3"]:
        assert ours.encode(text) == [1] + sp.encode(text)  # BOS added like Llama-2
        assert ours.encode(text, add_special_tokens=False) == sp.encode(text)
        assert ours.decode(ours.encode(text)) == text


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer(str(tmp_path))


def test_no_chat_template_is_a_clear_error(tiny_tokenizer_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "t"
    shutil.copytree(tiny_tokenizer_dir, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="no chat template"):
        Tokenizer(str(folder)).render_prompt("hi", "chat")
