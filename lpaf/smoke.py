"""Tiny offline assets for ``config/smoke.yaml``: a random BERT and synthetic task data.

The smoke configuration runs the whole workflow in a few minutes on two CPU cores with no
network: the model is a randomly initialised 2-layer BERT (hidden 32) with a word-level
WordPiece vocabulary, and the data are small synthetic sets written in the real on-disk formats
that ``lpaf.data`` reads, so every loader, head type and stage runs for real:

- ``data/glue/MRPC/{train,dev}.tsv``   — GLUE pair classification (MRPC header, UTF-8 BOM);
- ``data/glue/SST-2/{train,dev}.tsv``  — GLUE single-sentence classification;
- ``data/glue/STS-B/{train,dev}.tsv``  — GLUE regression (score in [0, 5]);
- ``data/squad/v1.1/{train,dev}-v1.1.json`` — SQuAD v1.1 extractive QA.

The tasks carry a weak learnable signal (sentiment words, paraphrase overlap, answer spans), but
the numbers mean nothing: the point is the mechanics. Usage::

    python -m lpaf.smoke --out resources/smoke        # writes model/, data/ (+ data/assets.json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POSITIVE = ("good", "great", "fine", "lovely", "superb", "nice")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring", "weak")
NEUTRAL = ("the", "a", "movie", "film", "story", "actor", "plot", "scene", "was", "is", "very", "quite",
           "and", "but", "with", "this", "that", "it", "of", "to", "in", "on", "for", "one")
COLORS = ("red", "blue", "green", "yellow", "black", "white")
NAMES = ("anna", "bert", "carl", "dora", "emil", "fred")
PLACES = ("paris", "rome", "oslo", "lima", "cairo", "delhi")
QA_WORDS = ("what", "where", "who", "color", "lives", "likes", "?", ".", ",")
VOCAB: tuple[str, ...] = tuple(dict.fromkeys(SPECIAL_TOKENS + POSITIVE + NEGATIVE + NEUTRAL + COLORS + NAMES
                                             + PLACES + QA_WORDS))

MODEL_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
               "max_position_embeddings": 128, "type_vocab_size": 2}
SPLIT_SIZES = {"train": 96, "dev": 32}


def make_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised BERT (safetensors) + fast WordPiece tokenizer, loadable offline."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), **MODEL_SHAPE)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    tokenizer.save_pretrained(out)
    return out


def _sentence(rng: random.Random, n: int, extra: Sequence[str] = ()) -> list[str]:
    words = [rng.choice(NEUTRAL) for _ in range(n)] + list(extra)
    rng.shuffle(words)
    return words


def _sst2_rows(rng: random.Random, n: int) -> list[tuple[str, int]]:
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        cue = rng.sample(POSITIVE if label else NEGATIVE, 2)
        rows.append((" ".join(_sentence(rng, rng.randint(4, 8), cue)), label))
    return rows


def _pair_rows(rng: random.Random, n: int) -> list[tuple[str, str, int, float]]:
    """(sentence1, sentence2, paraphrase label, similarity score in [0, 5])."""
    rows = []
    for _ in range(n):
        s1 = _sentence(rng, rng.randint(5, 9), [rng.choice(NAMES), rng.choice(PLACES)])
        if rng.random() < 0.5:
            s2 = list(s1)
            for _ in range(rng.randint(0, 2)):
                s2[rng.randrange(len(s2))] = rng.choice(NEUTRAL)
        else:
            s2 = _sentence(rng, rng.randint(5, 9), [rng.choice(NAMES), rng.choice(PLACES)])
        overlap = len(set(s1) & set(s2)) / len(set(s1) | set(s2))
        rows.append((" ".join(s1), " ".join(s2), int(overlap > 0.6), round(5.0 * overlap, 3)))
    return rows


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def _squad_article(rng: random.Random, index: int, n_paragraphs: int) -> dict:
    paragraphs = []
    for p in range(n_paragraphs):
        name, place, color = rng.choice(NAMES), rng.choice(PLACES), rng.choice(COLORS)
        filler = " ".join(_sentence(rng, rng.randint(3, 6)))
        context = f"{filler} . {name} lives in {place} . {name} likes {color} . {' '.join(_sentence(rng, 4))} ."
        qas = []
        for q, (question, answer) in enumerate(((f"where {name} lives ?", place), (f"what color {name} likes ?", color))):
            start = context.index(f" {answer} ") + 1
            qas.append({"id": f"q{index}-{p}-{q}", "question": question,
                        "answers": [{"text": answer, "answer_start": start}]})
        paragraphs.append({"context": context, "qas": qas})
    return {"title": f"article {index}", "paragraphs": paragraphs}


def make_data(out_dir: str | Path, seed: int = 0) -> Path:
    """Synthetic MRPC, SST-2, STS-B (GLUE TSV) and SQuAD v1.1 (JSON) train and dev files."""
    out = Path(out_dir)
    rng = random.Random(seed)
    for split, n in SPLIT_SIZES.items():
        _write_tsv(out / "glue" / "SST-2" / f"{split}.tsv", ("sentence", "label"), _sst2_rows(rng, n))
        pairs = _pair_rows(rng, n)
        _write_tsv(out / "glue" / "MRPC" / f"{split}.tsv", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                   [(label, 2 * i, 2 * i + 1, s1, s2) for i, (s1, s2, label, _) in enumerate(pairs)], bom=True)
        _write_tsv(out / "glue" / "STS-B" / f"{split}.tsv",
                   ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                    "score"),
                   [(i, "main-captions", "MSRvid", "2012test", i, "none", "none", s1, s2, score)
                    for i, (s1, s2, _, score) in enumerate(pairs)])
        articles = [_squad_article(rng, i, 4) for i in range(n // 8)]
        path = out / "squad" / "v1.1" / f"{split}-v1.1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": "1.1", "data": articles}, indent=1) + "\n", encoding="utf-8")
    return out


def make_assets(model_dir: str | Path, data_dir: str | Path, seed: int = 0) -> dict:
    """The model, the data, and ``data_dir/assets.json`` (written last: the completion record)."""
    model = make_model(model_dir, seed)
    data = make_data(data_dir, seed)
    record = {"model": str(model), "data": str(data), "seed": seed, "vocab_size": len(VOCAB), **MODEL_SHAPE,
              "tasks": ["mrpc", "sst2", "stsb", "squad"], "examples_per_split": SPLIT_SIZES}
    (data / "assets.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpaf.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output directory: writes OUT/model and OUT/data")
    parser.add_argument("--model-out", help="model directory (default OUT/model)")
    parser.add_argument("--data-out", help="data directory (default OUT/data)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the synthetic data")
    args = parser.parse_args(argv)
    if args.out is None and (args.model_out is None or args.data_out is None):
        parser.error("give --out, or both --model-out and --data-out")
    model_out = args.model_out or Path(args.out) / "model"
    data_out = args.data_out or Path(args.out) / "data"
    record = make_assets(model_out, data_out, args.seed)
    print(f"smoke assets: model {record['model']}, data {record['data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
