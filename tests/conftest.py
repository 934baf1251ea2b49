"""Shared fixtures: a tiny random BERT with an offline tokenizer, and task files in every layout.

No network: the model is built from a ``BertConfig`` and the vocabulary is written by the test.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
SHARED_DATA = SHARED / "data"

WORDS = ("good bad great awful fine movie film plot actor story the a an is was very not quite really "
         "boring fun dull brilliant cat dog sat on mat what who where when did does ran home paris france "
         "capital city river").split()


def requires_shared():
    """Real-data tests run whenever ../shared exists; under CI they must never skip."""
    if SHARED_MODEL.is_dir() and SHARED_DATA.is_dir():
        return pytest.mark.realdata
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but {SHARED} is missing: real-data tests must run in CI")
    return pytest.mark.skip(reason=f"{SHARED} not found (real-data test)")


def _sentence(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 9)))


def write_vocab(path: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "'", "-"] + WORDS
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def make_tiny_model(out: Path, num_labels: int = 2, qa: bool = False, seed: int = 0,
                    constant_class: int | None = None) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) + tokenizer saved as a local model directory.

    ``constant_class``: a classifier bias of +8 on that class (-8 on the others), so the model predicts
    it for every input: a degenerate model, for as long as a few low-lr steps leave the bias there.
    """
    import torch
    from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                              BertTokenizerFast)

    out.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(out / "vocab.txt")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab.read_text().split()), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     num_labels=num_labels)
    model = BertForQuestionAnswering(cfg) if qa else BertForSequenceClassification(cfg)
    if constant_class is not None:
        with torch.no_grad():
            model.classifier.bias.fill_(-8.0)
            model.classifier.bias[constant_class] = 8.0
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "bert")


# --------------------------------------------------------------------------------------------
# Task files in the original layouts
# --------------------------------------------------------------------------------------------

def _tsv(path: Path, header: list[str] | None, rows: list[list], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def write_glue_task(root: Path, task: str, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    """Write ``root/<GLUE name>/{train,dev}.tsv`` in the original GLUE formats; returns root.

    Labels follow a learnable rule (presence of 'good'/'great'/'fun') so tiny runs can learn something.
    """
    rng = random.Random(seed)

    def label_of(text: str) -> int:
        return int(any(w in text.split() for w in ("good", "great", "fun", "brilliant")))

    def rows_for(n: int, split: str) -> tuple[list[str] | None, list[list]]:
        rows = []
        for i in range(n):
            s1, s2 = _sentence(rng), _sentence(rng)
            y = label_of(s1)
            if task == "sst2":
                rows.append([s1, y])
            elif task == "cola":
                rows.append(["src", y, "" if y else "*", s1])
            elif task == "mrpc":
                rows.append([y, 1000 + i, 2000 + i, s1, s2])
            elif task == "stsb":
                rows.append([i, "main-news", "2012", "0001", i, "src1", "src2", s1, s2, f"{5.0 * y * rng.random():.3f}"])
            elif task == "qqp":
                rows.append([i, 10 * i, 10 * i + 1, s1, s2, y])
            elif task == "mnli":
                lab = ["entailment", "neutral", "contradiction"][rng.randint(0, 2) if not y else 0]
                rows.append([i, i, f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2, lab, lab])
            elif task == "qnli":
                rows.append([i, s1 + " ?", s2, "entailment" if y else "not_entailment"])
            elif task == "rte":
                rows.append([i, s1, s2, "entailment" if y else "not_entailment"])
        headers = {
            "sst2": ["sentence", "label"],
            "cola": None,
            "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                     "sentence2", "score"],
            "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            "mnli": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
            "qnli": ["index", "question", "sentence", "label"],
            "rte": ["index", "sentence1", "sentence2", "label"],
        }
        return headers[task], rows

    from lpaf.data import GLUE_DIR_NAMES

    d = root / GLUE_DIR_NAMES[task]
    header, rows = rows_for(n_train, "train")
    _tsv(d / "train.tsv", header, rows, bom=task == "mrpc")
    dev_names = ["dev_matched", "dev_mismatched"] if task == "mnli" else ["dev"]
    for name in dev_names:
        header, rows = rows_for(n_dev, name)
        _tsv(d / f"{name}.tsv", header, rows, bom=task == "mrpc")
    return root


def write_squad_json(path: Path, n_articles: int = 4, seed: int = 0) -> Path:
    rng = random.Random(seed)
    data = []
    qid = 0
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            city = rng.choice(["paris", "france"])
            context = f"{_sentence(rng)} the capital city is {city} . {_sentence(rng)}"
            start = context.index(city)
            qas = [{"id": f"q{qid}", "question": "what is the capital city ?",
                    "answers": [{"text": city, "answer_start": start}, {"text": city, "answer_start": start}]}]
            qid += 1
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


@pytest.fixture()
def glue_dir(tmp_path) -> Path:
    """Every GLUE task in the original layout under one root."""
    root = tmp_path / "glue_data"
    for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"):
        write_glue_task(root, task)
    return root


@pytest.fixture()
def squad_dir(tmp_path) -> Path:
    root = tmp_path / "squad_data"
    write_squad_json(root / "train-v1.1.json", n_articles=6, seed=1)
    write_squad_json(root / "dev-v1.1.json", n_articles=3, seed=2)
    return root


@pytest.fixture(scope="session", autouse=True)
def _degenerate_models_accepted():
    """Tiny random models trained for a few steps predict one class for every dev example: a degenerate
    teacher, which `lpaf finetune` refuses by default (exit 3). The suite accepts them (session-wide, so
    module-scoped fixtures too); the tests of the refusal unset LPAF_ALLOW_DEGENERATE."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LPAF_ALLOW_DEGENERATE", "1")
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenization cache; no test reads another's."""
    monkeypatch.setenv("LPAF_CACHE", str(tmp_path / "lpaf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
