"""``lpaf split-squad``: a deterministic split of a SQuAD JSON file by article, for offline runs.

Offline we hold only the official SQuAD v1.1 dev set. This splits it by article (never a paragraph
or question across the two parts) into a training part and an evaluation part: the last
``--eval-articles`` articles of the file are the evaluation part, the others the training part.
The output is a data directory in the layout every stage reads (``squad/v1.1/train-v1.1.json``,
``dev-v1.1.json``), plus ``SPLIT.json`` saying where it came from, and the files' "version" field
says "not the official split", so it cannot be mistaken for (or mixed with) the official files: scores
on it are not comparable with published SQuAD dev scores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lpaf.artifacts import atomic_output_dir, write_json
from lpaf.errors import LpafError

NOTE = "not the official split: lpaf split-squad of {source} (train: first {n_train} articles, eval: last {n_eval})"


@dataclass
class SplitSquadArgs:
    source: str = field(metadata={"help": "a SQuAD JSON file (e.g. ../shared/data/squad/v1.1/dev-v1.1.json)"})
    out: str = field(metadata={"help": "output data directory (use a name that says it is a split, e.g. "
                                       "resources/data/squad-devsplit-38-10)"})
    eval_articles: int = field(default=10, metadata={"help": "articles in the evaluation part (the file's last N)"})

    def __post_init__(self):
        if self.eval_articles < 1:
            raise LpafError(f"--eval-articles must be >= 1 (got {self.eval_articles})")


def split_by_article(blob: dict, eval_articles: int) -> tuple[list, list]:
    articles = blob.get("data") if isinstance(blob, dict) else None
    if not isinstance(articles, list) or not articles:
        raise LpafError("the source is not a SQuAD JSON object with a non-empty 'data' list of articles")
    if eval_articles >= len(articles):
        raise LpafError(f"--eval-articles {eval_articles} leaves no training article (the file has "
                        f"{len(articles)} articles); accepted: 1 to {len(articles) - 1}")
    return articles[:-eval_articles], articles[-eval_articles:]


def run(args: SplitSquadArgs) -> dict:
    source = Path(args.source)
    try:
        raw = source.read_bytes()
        blob = json.loads(raw)
    except FileNotFoundError:
        raise LpafError(f"{source} not found") from None
    except json.JSONDecodeError as e:
        raise LpafError(f"{source} is not valid JSON ({e.msg} at line {e.lineno})") from None
    train, evaluation = split_by_article(blob, args.eval_articles)
    note = NOTE.format(source=source.name, n_train=len(train), n_eval=len(evaluation))

    def questions(articles):
        return sum(len(p.get("qas", [])) for a in articles for p in a.get("paragraphs", []))

    record = {"stage": "split-squad", "source": str(source), "source_sha256": hashlib.sha256(raw).hexdigest(),
              "note": note, "train_articles": len(train), "eval_articles": len(evaluation),
              "train_questions": questions(train), "eval_questions": questions(evaluation),
              "eval_titles": [a.get("title", "") for a in evaluation]}
    with atomic_output_dir(args.out) as tmp:
        d = tmp / "squad" / "v1.1"
        d.mkdir(parents=True)
        for name, part in (("train-v1.1.json", train), ("dev-v1.1.json", evaluation)):
            (d / name).write_text(json.dumps({"version": note, "data": part}), encoding="utf-8")
        write_json(tmp / "SPLIT.json", record)
        write_json(tmp / "metrics.json", record)  # the completion record every lpaf output carries
    return record  # the CLI prints the summary: questions and articles of each part, not the official split
