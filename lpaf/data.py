"""Loading task data (hub or local files), tokenization with an on-disk cache, QA windows.

Local layouts accepted by ``--data DIR`` (searched in this order, first one holding the
needed splits wins):
- a ``save_to_disk`` directory (``DIR`` or ``DIR/<task>``, with ``dataset_dict.json``);
- the original GLUE layout: ``DIR/[glue/]<GLUE name>/{train,dev}.tsv`` (``MNLI/dev_matched.tsv``,
  ``dev_mismatched.tsv``), or the TSVs directly in ``DIR``; read with quoting off, BOM-safe;
- the CoLA raw layout: ``DIR/[glue/]CoLA/cola_public_1.0/raw/in_domain_{train,dev}.tsv``
  (+ ``out_of_domain_dev.tsv``, which GLUE's dev set includes);
- the Hugging Face parquet export: ``DIR/[glue_hf_parquet/]<task>/<split>/*.parquet``;
- SQuAD JSON: ``DIR/[squad/][v1.1/]{train,dev}-v1.1.json`` (``-v2.0`` for squad_v2).
Every loader normalises to the hub's column names (``sentence``, ``sentence1``, ``label``, ...).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpaf.errors import LpafError
from lpaf.tasks import TaskSpec

GLUE_DIR_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
                  "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE"}
DATA_FORMAT_VERSION = "2"  # bump when tokenized features change shape/meaning (invalidates caches)
# 2: QA features' example_index is the example's index in the split (was: within its map batch)

LAYOUTS_HELP = ("accepted layouts: a save_to_disk directory; GLUE TSVs (<dir>/[glue/]<GLUE name>/train.tsv, dev.tsv); "
                "CoLA raw (<dir>/CoLA/cola_public_1.0/raw/in_domain_train.tsv); HF parquet "
                "(<dir>/[glue_hf_parquet/]<task>/<split>/*.parquet); SQuAD JSON (<dir>/[squad/v1.1/]train-v1.1.json, dev-v1.1.json)")


def dev_file_split_names(task: TaskSpec) -> dict[str, str]:
    """Canonical split name -> GLUE TSV file stem."""
    names = {"train": "train"}
    if task.name == "mnli":
        names |= {"validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}
    else:
        names |= {"validation": "dev"}
    return names


# --------------------------------------------------------------------------------------------
# GLUE TSV reading
# --------------------------------------------------------------------------------------------

# task -> (header-name -> canonical column) ; label column last. CoLA has no header (positional).
_GLUE_TSV_COLUMNS: dict[str, dict[str, str]] = {
    "sst2": {"sentence": "sentence", "label": "label"},
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"},
    "qqp": {"question1": "question1", "question2": "question2", "is_duplicate": "label"},
    "mnli": {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
    "qnli": {"question": "question", "sentence": "sentence", "label": "label"},
    "rte": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
}


def _read_tsv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [line.rstrip("\r\n").split("\t") for line in f]
    return [r for r in rows if r != [""]]


def _convert_label(task: TaskSpec, raw: str, path: Path, row: int) -> float | int:
    raw = raw.strip()
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise LpafError(f"{path} row {row}: label {raw!r} is not a number (expected a score in [0, 5])") from None
        return value
    if raw in task.label_names:
        return task.label_names.index(raw)
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not 0 <= value < task.num_labels:
        accepted = list(range(task.num_labels)) + list(task.label_names)
        raise LpafError(f"{path} row {row}: label {raw!r} is outside the label set of {task.name} "
                        f"(accepted: {', '.join(map(str, accepted))})")
    return value


def read_glue_tsv(task: TaskSpec, path: Path, cola_raw: bool = False) -> dict[str, list]:
    """One GLUE TSV -> columns dict in hub naming. Labels validated against the task."""
    rows = _read_tsv_rows(path)
    if task.name == "cola":
        # CoLA (GLUE and raw): no header; source, label, original label, sentence.
        cols: dict[str, list] = {"sentence": [], "label": []}
        for i, r in enumerate(rows, start=1):
            if len(r) < 4:
                raise LpafError(f"{path} row {i}: expected 4 tab-separated columns "
                                f"(source, label, original label, sentence), found {len(r)}")
            cols["sentence"].append(r[3])
            cols["label"].append(_convert_label(task, r[1], path, i))
        cols["idx"] = list(range(len(cols["label"])))
        return cols
    if not rows:
        raise LpafError(f"{path} is empty (expected a header row and examples)")
    header = [h.strip() for h in rows[0]]
    mapping = _GLUE_TSV_COLUMNS[task.name]
    missing = [h for h in mapping if h not in header]
    if missing:
        raise LpafError(f"{path}: missing column(s) {', '.join(missing)}; header has {', '.join(header)}; "
                        f"expected {', '.join(mapping)}")
    index = {h: header.index(h) for h in mapping}
    cols = {c: [] for c in mapping.values()}
    skipped = 0
    for i, r in enumerate(rows[1:], start=2):
        width = max(index.values()) + 1
        if len(r) < width:
            raise LpafError(f"{path} row {i}: expected at least {width} tab-separated columns, found {len(r)}")
        if task.name == "mnli" and r[index["gold_label"]] == "-":
            skipped += 1  # the GLUE MNLI files carry a few examples without gold label
            continue
        for h, c in mapping.items():
            value = r[index[h]]
            cols[c].append(_convert_label(task, value, path, i) if c == "label" else value)
    cols["idx"] = list(range(len(cols["label"])))
    return cols


# --------------------------------------------------------------------------------------------
# SQuAD JSON
# --------------------------------------------------------------------------------------------

def read_squad_json(path: Path) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except json.JSONDecodeError as e:
        raise LpafError(f"{path} is not valid SQuAD JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(blob, dict) or "data" not in blob:
        raise LpafError(f"{path}: expected a SQuAD JSON object with a 'data' list")
    cols: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in blob["data"]:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = qa.get("answers", [])
                cols["id"].append(qa["id"])
                cols["title"].append(article.get("title", ""))
                cols["context"].append(para["context"])
                cols["question"].append(qa["question"])
                cols["answers"].append({"text": [a["text"] for a in answers],
                                        "answer_start": [int(a["answer_start"]) for a in answers]})
    return cols


# --------------------------------------------------------------------------------------------
# Finding local files
# --------------------------------------------------------------------------------------------

@dataclass
class RawData:
    """Raw examples per canonical split, plus a fingerprint of where they came from."""

    splits: dict[str, Any]  # split -> datasets.Dataset
    source: str
    fingerprint: str


def _file_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _glue_candidates(data_dir: Path, task: TaskSpec) -> list[Path]:
    name = GLUE_DIR_NAMES.get(task.name)
    if name is None:
        return []
    return [data_dir / "glue" / name, data_dir / name, data_dir]


def _find_local(task: TaskSpec, data_dir: Path, needed: list[str]) -> tuple[dict[str, Any], str, list[Path]] | None:
    import datasets

    # 1. save_to_disk
    for d in (data_dir, data_dir / task.name):
        if (d / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(d))
            if all(s in dd for s in needed):
                files = [p for p in d.rglob("*") if p.is_file()]
                return {s: dd[s] for s in needed}, f"save_to_disk:{d}", files
    if task.is_qa:
        version = "v2.0" if task.name == "squad_v2" else "v1.1"
        stems = {"train": f"train-{version}.json", "validation": f"dev-{version}.json"}
        for d in (data_dir / "squad" / version, data_dir / "squad", data_dir / version, data_dir):
            paths = {s: d / stems[s] for s in needed}
            if all(p.is_file() for p in paths.values()):
                return ({s: datasets.Dataset.from_dict(read_squad_json(p)) for s, p in paths.items()},
                        f"squad-json:{d}", list(paths.values()))
        return None
    # 2. GLUE TSV
    file_stems = dev_file_split_names(task)
    for d in _glue_candidates(data_dir, task):
        paths = {s: d / f"{file_stems[s]}.tsv" for s in needed}
        if all(p.is_file() for p in paths.values()):
            return ({s: datasets.Dataset.from_dict(read_glue_tsv(task, p)) for s, p in paths.items()},
                    f"glue-tsv:{d}", list(paths.values()))
    # 3. CoLA raw
    if task.name == "cola":
        for d in (data_dir / "glue" / "CoLA" / "cola_public_1.0" / "raw", data_dir / "CoLA" / "cola_public_1.0" / "raw",
                  data_dir / "cola_public_1.0" / "raw", data_dir / "raw"):
            files = {"train": [d / "in_domain_train.tsv"],
                     "validation": [d / "in_domain_dev.tsv", d / "out_of_domain_dev.tsv"]}
            if all(p.is_file() for s in needed for p in files[s]):
                out = {}
                for s in needed:
                    parts = [read_glue_tsv(task, p) for p in files[s]]
                    merged = {"sentence": sum((p["sentence"] for p in parts), []),
                              "label": sum((p["label"] for p in parts), [])}
                    merged["idx"] = list(range(len(merged["label"])))
                    out[s] = datasets.Dataset.from_dict(merged)
                return out, f"cola-raw:{d}", [p for s in needed for p in files[s]]
    # 4. HF parquet export
    for d in (data_dir / "glue_hf_parquet" / task.name, data_dir / task.name, data_dir):
        split_files = {s: sorted((d / s).glob("*.parquet")) for s in needed}
        if all(split_files.values()):
            out = {}
            for s, files in split_files.items():
                ds = datasets.Dataset.from_parquet([str(f) for f in files])
                _check_columns(task, ds, files[0])
                _check_labels(task, ds, files[0])
                out[s] = ds
            return out, f"parquet:{d}", [f for fs in split_files.values() for f in fs]
    return None


def _check_columns(task: TaskSpec, ds, path: Path) -> None:
    wanted = list(task.text_fields) + ([] if task.is_qa else ["label"])
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise LpafError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(ds.column_names)}")


def _check_labels(task: TaskSpec, ds, path: Path) -> None:
    if task.is_qa or task.is_regression:
        return
    labels = np.asarray(ds["label"])
    bad = np.flatnonzero((labels < 0) | (labels >= task.num_labels))
    if bad.size:
        raise LpafError(f"{path} row {int(bad[0]) + 1}: label {int(labels[bad[0]])} is outside the label set of "
                        f"{task.name} (accepted: 0..{task.num_labels - 1})")


def _quiet_datasets() -> None:
    """Tokenizing a large task (QQP, MNLI) takes minutes once, then comes from the cache: its bars show
    on a terminal; in a log (SLURM, ``> log 2>&1``) they would be hundreds of carriage-return lines."""
    import datasets

    from lpaf.console import is_terminal

    if is_terminal():
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def load_raw(task: TaskSpec, data: str | None, splits: list[str], revision: str | None = None) -> RawData:
    """Raw examples for ``splits`` (canonical names: train, validation[_matched|_mismatched]).

    ``data`` None -> the Hugging Face hub (``datasets.load_dataset``); otherwise a local directory.
    """
    import datasets

    _quiet_datasets()
    if data is not None:
        data_dir = Path(data)
        if not data_dir.exists():
            raise LpafError(f"data directory not found: {data_dir}; {LAYOUTS_HELP}")
        found = _find_local(task, data_dir, splits)
        if found is None:
            raise LpafError(f"no {task.name} data with split(s) {', '.join(splits)} under {data_dir}; {LAYOUTS_HELP}")
        out, source, files = found
        for s, ds in out.items():
            if len(ds) == 0:
                raise LpafError(f"split {s!r} of {task.name} in {source.split(':', 1)[1]} is empty")
        return RawData(out, source, _file_fingerprint(files))
    try:
        if task.is_qa:
            dd = datasets.load_dataset(task.hub_path, revision=revision)
        else:
            dd = datasets.load_dataset(task.hub_path, task.hub_config, revision=revision)
    except Exception as e:  # network errors come in many types; the advice is the same
        raise LpafError(
            f"could not load {task.name} from the Hugging Face hub ({type(e).__name__}); on a connected machine run "
            f"'lpaf fetch-data --task {task.name} --out DIR' and pass '--data DIR', or point --data at local files"
        ) from None
    missing = [s for s in splits if s not in dd]
    if missing:
        raise LpafError(f"hub dataset {task.hub_path} has no split(s) {', '.join(missing)}")
    fp = hashlib.sha256(f"hub|{task.hub_path}|{task.hub_config}|{revision}".encode()).hexdigest()[:16]
    return RawData({s: dd[s] for s in splits}, f"hub:{task.hub_path}", fp)


def fetch_data(task: TaskSpec, out_dir: str, revision: str | None = None) -> Path:
    """Materialize the hub dataset as a ``save_to_disk`` directory for offline use."""
    from lpaf.artifacts import atomic_output_dir, write_json

    raw = load_raw(task, None, ["train", *task.dev_splits], revision)
    import datasets

    with atomic_output_dir(out_dir) as tmp:
        datasets.DatasetDict(raw.splits).save_to_disk(str(tmp))
        write_json(tmp / "metrics.json", {"stage": "fetch-data", "task": task.name, "source": raw.source,
                                          "revision": revision, "rows": {s: len(d) for s, d in raw.splits.items()}})
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# Tokenization (cached)
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    return Path(os.environ.get("LPAF_CACHE", Path.home() / ".cache" / "lpaf")) / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # call-time state, changed by every tokenizer(...) call
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def tokenize_split(task: TaskSpec, ds, tokenizer, max_length: int, is_train: bool, doc_stride: int = 128,
                   num_proc: int | None = None):
    """Examples -> model features. Classification/regression: one feature per example (no padding;
    the collator pads per batch). QA: sliding windows; train features carry start/end positions,
    eval features carry ``example_id`` and ``offset_mapping`` for post-processing."""
    if task.is_qa:
        fn = _prepare_qa_train if is_train else _prepare_qa_eval
        # with_indices: each window records its example's index in the split, not in its batch
        return ds.map(lambda b, idx: fn(b, idx, tokenizer, max_length, doc_stride), batched=True,
                      with_indices=True, remove_columns=ds.column_names, desc=None, num_proc=num_proc)

    def encode(batch):
        texts = [batch[f] for f in task.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=num_proc)


def _check_stride(questions: list[str], tokenizer, max_length: int, stride: int) -> None:
    """The tokenizer needs stride < max length − question − 3 special tokens for every question (it
    panics otherwise): say so by flag, with the bound the longest question of the batch leaves."""
    longest = max((len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]), default=0)
    room = max_length - longest - 3
    if stride >= room:
        raise LpafError(f"--doc-stride {stride} does not fit a --max-length {max_length} window: a window holds "
                        f"{max_length} tokens minus the question ({longest} tokens for the longest one) and 3 special "
                        f"tokens, so the stride must be < {room}; lower --doc-stride or raise --max-length")


def _prepare_qa_train(examples, indices, tokenizer, max_length: int, stride: int):
    questions = [q.lstrip() for q in examples["question"]]
    _check_stride(questions, tokenizer, max_length, stride)
    enc = tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    enc["start_positions"], enc["end_positions"], enc["example_index"] = [], [], []
    cls_index = 0
    for i, offsets in enumerate(offsets_all):
        seq_ids = enc.sequence_ids(i)
        sample = sample_map[i]
        enc["example_index"].append(indices[sample])
        answers = examples["answers"][sample]
        if not answers["answer_start"]:
            enc["start_positions"].append(cls_index)
            enc["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        ctx_start = seq_ids.index(1)
        ctx_end = len(seq_ids) - 1 - seq_ids[::-1].index(1)
        if not (offsets[ctx_start][0] <= start_char and offsets[ctx_end][1] >= end_char):
            enc["start_positions"].append(cls_index)
            enc["end_positions"].append(cls_index)
            continue
        s = ctx_start
        while s <= ctx_end and offsets[s][0] <= start_char:
            s += 1
        e = ctx_end
        while e >= ctx_start and offsets[e][1] >= end_char:
            e -= 1
        enc["start_positions"].append(s - 1)
        enc["end_positions"].append(e + 1)
    return enc


def _prepare_qa_eval(examples, indices, tokenizer, max_length: int, stride: int):
    questions = [q.lstrip() for q in examples["question"]]
    _check_stride(questions, tokenizer, max_length, stride)
    enc = tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"], enc["example_index"] = [], []
    for i in range(len(enc["input_ids"])):
        seq_ids = enc.sequence_ids(i)
        sample = sample_map[i]
        enc["example_id"].append(examples["id"][sample])
        enc["example_index"].append(indices[sample])
        enc["offset_mapping"][i] = [o if seq_ids[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][i])]
    return enc


def tokenize_cached(task: TaskSpec, raw: RawData, tokenizer, max_length: int, cache_dir: str | Path | None,
                    doc_stride: int = 128, num_proc: int | None = None) -> dict[str, Any]:
    """Tokenized features per split, cached on disk keyed by (task, data, tokenizer, max length).

    Every stage calls this; the first one tokenizes and saves, the others load. The cache entry is
    written to a temporary directory and renamed into place, so concurrent jobs never see half of it.
    """
    import datasets

    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = {}
    for split, ds in raw.splits.items():
        is_train = split == "train"
        key = hashlib.sha256("|".join([DATA_FORMAT_VERSION, task.name, raw.fingerprint, split,
                                        tokenizer_fingerprint(tokenizer), str(max_length), str(doc_stride),
                                        str(len(ds))]).encode()).hexdigest()[:20]
        entry = cache_root / f"{task.name}-{split}-{key}"
        if (entry / "dataset_info.json").is_file():
            try:
                out[split] = datasets.load_from_disk(str(entry))
                continue
            except (OSError, ValueError, json.JSONDecodeError):
                shutil.rmtree(entry, ignore_errors=True)  # corrupt entry: rebuild it
        feats = tokenize_split(task, ds, tokenizer, max_length, is_train, doc_stride, num_proc)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".{entry.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        feats.save_to_disk(str(tmp))
        try:
            os.replace(tmp, entry)
        except OSError:  # another job won the race; use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        out[split] = datasets.load_from_disk(str(entry))
    return out


def select_examples(feats, n_examples: int | None, task: TaskSpec):
    """The first ``n_examples`` examples (all their QA windows, found by ``example_index``, the
    example's index in its split). Clamped to the dataset size."""
    if n_examples is None:
        return feats
    if task.is_qa:
        idx = np.asarray(feats["example_index"])
        keep = np.flatnonzero(idx < n_examples)
        return feats.select(keep.tolist())
    return feats.select(range(min(n_examples, len(feats))))


# --------------------------------------------------------------------------------------------
# SQuAD post-processing
# --------------------------------------------------------------------------------------------

def postprocess_qa(examples, features, start_logits: np.ndarray, end_logits: np.ndarray,
                   n_best: int = 20, max_answer_length: int = 30, null_scores: dict[str, float] | None = None
                   ) -> dict[str, str]:
    """Window logits -> answer text per example id (n-best over all windows of an example).

    The text is always the best non-null span. For SQuAD 2.0 pass a dict as ``null_scores``: it is
    filled with each example's no-answer score difference, null − best span, where null is the
    lowest start+end logit at [CLS] over the example's windows (as in transformers' run_qa); the
    metric predicts "no answer" where it exceeds a threshold (lpaf.metrics.squad_v2_metrics).
    """
    features_per_example = collections.defaultdict(list)
    for i, ex_id in enumerate(features["example_id"]):
        features_per_example[ex_id].append(i)
    offsets_all = features["offset_mapping"]
    predictions: dict[str, str] = {}
    for ex_id, context in zip(examples["id"], examples["context"]):
        best_score, best_text = -np.inf, ""
        null_score = np.inf
        for fi in features_per_example.get(ex_id, []):
            s_log, e_log, offsets = start_logits[fi], end_logits[fi], offsets_all[fi]
            null_score = min(null_score, float(s_log[0] + e_log[0]))  # [CLS] is position 0
            s_idx = np.argsort(s_log)[-1:-n_best - 1:-1]
            e_idx = np.argsort(e_log)[-1:-n_best - 1:-1]
            for s in s_idx:
                for e in e_idx:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = s_log[s] + e_log[e]
                    if score > best_score:
                        best_score, best_text = score, context[offsets[s][0]:offsets[e][1]]
        predictions[ex_id] = best_text
        if null_scores is not None:
            null_scores[ex_id] = null_score - float(best_score) if np.isfinite(best_score) else np.inf
    return predictions
