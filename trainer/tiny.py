"""Tiny, randomly initialised models of the real architectures, built locally with no download.

They exist for tests and for the demo's SFT leg (no real causal LM can be fetched in a sandbox).
Every model made here carries `"mirror_demo": "random-init"` in its config.json and a README that
says so, so its results are never mistaken for a real model's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable

from common.modelfacts import mark_random_init

RANDOM_INIT_NOTE = "RANDOM-INITIALISED demo model: its outputs and metrics say nothing about a real model."

# Qwen2.5's chat template, trimmed of tool calling (the tiny model never calls tools).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_DEFAULT_CORPUS = (
    "credit report dispute eligible not eligible conditionally insufficient information account "
    "collection charge-off balance bureau equifax experian transunion status paid open closed "
    "unknown inquiry late payment medical student loan auto mortgage revolving installment "
    "what does mean how to remove a hard inquiry metro 2 format utilization score summary "
    "analysis recommended action next steps request validation letter the is of and for with"
)


def _words(corpus: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in corpus:
        for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower()):
            seen.setdefault(w, None)
    return list(seen)


def _mark(model_dir: Path, kind: str) -> None:
    cfg_path = model_dir / "config.json"
    cfg = mark_random_init(json.loads(cfg_path.read_text()))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (model_dir / "README.md").write_text(
        f"---\nlicense: apache-2.0\ntags: [random-init, demo]\n---\n# Tiny {kind}\n\n{RANDOM_INIT_NOTE}\n"
    )


def wordpiece_tokenizer(out_dir: Path, corpus: Iterable[str] = (_DEFAULT_CORPUS,)):
    """A BERT-style uncased WordPiece tokenizer whose vocab is the corpus's words plus characters."""
    from transformers import BertTokenizerFast  # deferred: a Hugging Face import waits for offline (and takes seconds)

    out_dir.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [w for w in _words(corpus) if w not in vocab]
    vocab += [c for c in chars if c.lower() not in vocab and c.lower() == c]
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained reads vocab.txt in transformers 4 and 5 alike (5 ignores a vocab_file argument)
    tok = BertTokenizerFast.from_pretrained(str(out_dir), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(out_dir)
    return tok


def tiny_bert(out_dir: str | Path, *, corpus: Iterable[str] = (_DEFAULT_CORPUS,), seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A DistilBERT-shaped encoder (base model, no head), as a sequence classifier's starting point."""
    import torch  # deferred: seconds to import; only the work that needs it pays
    from transformers import DistilBertConfig, DistilBertModel  # deferred: a Hugging Face import waits for offline (and takes seconds)

    out = Path(out_dir)
    tok = wordpiece_tokenizer(out, corpus)
    torch.manual_seed(seed)
    cfg = DistilBertConfig(
        vocab_size=len(tok), dim=hidden, hidden_dim=hidden * 2, n_layers=layers, n_heads=2, max_position_embeddings=512
    )
    DistilBertModel(cfg).save_pretrained(out, safe_serialization=True)
    _mark(out, "DistilBERT")
    return out


def tiny_sentence_transformer(out_dir: str | Path, *, corpus: Iterable[str] = (_DEFAULT_CORPUS,), seed: int = 0, hidden: int = 32) -> Path:
    """A BERT encoder + mean pooling + normalize, saved in sentence-transformers layout."""
    import torch  # deferred: seconds to import; only the work that needs it pays
    from sentence_transformers import SentenceTransformer  # deferred: a Hugging Face import waits for offline (and takes seconds)
    from transformers import BertConfig, BertModel  # deferred: a Hugging Face import waits for offline (and takes seconds)

    try:  # sentence-transformers >= 6 moved the modules; the old `models` path warns there
        from sentence_transformers.sentence_transformer import modules as models  # deferred: a Hugging Face import waits for offline (and takes seconds)
    except ImportError:
        from sentence_transformers import models  # deferred: a Hugging Face import waits for offline (and takes seconds)

    out = Path(out_dir)
    base = out.parent / (out.name + ".base")
    tok = wordpiece_tokenizer(base, corpus)
    torch.manual_seed(seed)
    BertModel(
        BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512)
    ).save_pretrained(base, safe_serialization=True)
    word = models.Transformer(str(base), max_seq_length=128)
    # 6.x renamed the getter (the old name warns); 3.x-5.x only have the old one
    dim_of = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pool = models.Pooling(dim_of(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu").save(str(out))
    shutil.rmtree(base)
    _mark(out, "sentence-transformers encoder")
    return out


def bpe_tokenizer(out_dir: Path, corpus: Iterable[str] = (_DEFAULT_CORPUS,), vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # deferred: a Hugging Face import waits for offline (and takes seconds)
    from transformers import PreTrainedTokenizerFast  # deferred: a Hugging Face import waits for offline (and takes seconds)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(list(corpus), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=2048,
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def tiny_causal_lm(
    out_dir: str | Path, *, corpus: Iterable[str] = (_DEFAULT_CORPUS,), seed: int = 0, hidden: int = 64, layers: int = 2, vocab_size: int = 512
) -> Path:
    """A Qwen2-shaped causal LM with a Qwen chat template."""
    import torch  # deferred: seconds to import; only the work that needs it pays
    from transformers import Qwen2Config, Qwen2ForCausalLM  # deferred: a Hugging Face import waits for offline (and takes seconds)

    out = Path(out_dir)
    tok = bpe_tokenizer(out, corpus, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    _mark(out, "Qwen2 causal LM")
    return out
