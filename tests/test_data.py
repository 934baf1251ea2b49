"""Data loading in every local layout, for all tasks; validation errors; tokenization cache; QA."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA, requires_shared, write_glue_task, write_squad_json
from lpaf.data import (load_raw, postprocess_qa, read_glue_tsv, select_examples, tokenize_cached)
from lpaf.errors import LpafError
from lpaf.tasks import TASKS, get_task

GLUE = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]


@pytest.mark.parametrize("name", GLUE)
def test_glue_tsv_layout_every_task(glue_dir, name):
    task = get_task(name)
    raw = load_raw(task, str(glue_dir), ["train", *task.dev_splits])
    assert raw.source.startswith("glue-tsv:")
    assert len(raw.splits["train"]) == 64
    for split in task.dev_splits:
        ds = raw.splits[split]
        assert len(ds) == 24
        for field in task.text_fields:
            assert isinstance(ds[0][field], str) and ds[0][field]
    labels = np.asarray(raw.splits["train"]["label"])
    if task.is_regression:
        assert labels.dtype.kind == "f" and labels.min() >= 0 and labels.max() <= 5
    else:
        assert set(labels.tolist()) <= set(range(task.num_labels))


@pytest.mark.parametrize("name", GLUE)
def test_parquet_and_save_to_disk_layouts_match_tsv(glue_dir, tmp_path, name):
    import datasets

    task = get_task(name)
    splits = ["train", *task.dev_splits]
    tsv = load_raw(task, str(glue_dir), splits)
    pq_root = tmp_path / "pq"
    for split, ds in tsv.splits.items():
        (pq_root / name / split).mkdir(parents=True)
        ds.to_parquet(str(pq_root / name / split / "0000.parquet"))
    pq = load_raw(task, str(pq_root), splits)
    assert pq.source.startswith("parquet:")
    disk = tmp_path / "disk"
    datasets.DatasetDict(tsv.splits).save_to_disk(str(disk / name))
    saved = load_raw(task, str(disk), splits)
    assert saved.source.startswith("save_to_disk:")
    for split in splits:
        for other in (pq, saved):
            assert other.splits[split][task.text_fields[0]] == tsv.splits[split][task.text_fields[0]]
            assert other.splits[split]["label"] == tsv.splits[split]["label"]


def test_cola_raw_layout_concatenates_in_and_out_of_domain_dev(tmp_path):
    task = get_task("cola")
    write_glue_task(tmp_path / "g", "cola")
    raw_dir = tmp_path / "c" / "CoLA" / "cola_public_1.0" / "raw"
    raw_dir.mkdir(parents=True)
    src = (tmp_path / "g" / "CoLA")
    (raw_dir / "in_domain_train.tsv").write_text((src / "train.tsv").read_text())
    (raw_dir / "in_domain_dev.tsv").write_text((src / "dev.tsv").read_text())
    (raw_dir / "out_of_domain_dev.tsv").write_text((src / "dev.tsv").read_text())
    raw = load_raw(task, str(tmp_path / "c"), ["train", "validation"])
    assert raw.source.startswith("cola-raw:")
    assert len(raw.splits["validation"]) == 48


def test_squad_json_layout(squad_dir):
    task = get_task("squad")
    raw = load_raw(task, str(squad_dir), ["train", "validation"])
    ex = raw.splits["validation"][0]
    assert set(ex) >= {"id", "context", "question", "answers"}
    assert ex["context"][ex["answers"]["answer_start"][0]:].startswith(ex["answers"]["text"][0])


def test_all_nine_tasks_registered():
    assert {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad"} <= set(TASKS)
    assert get_task("mnli").metric_keys() == ["validation_matched_accuracy", "validation_mismatched_accuracy"]
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("SST-2").name == "sst2"


def test_unknown_task_lists_valid_names():
    with pytest.raises(LpafError, match="unknown task 'foo'; valid tasks: cola, sst2"):
        get_task("foo")


# ---------------------------------------------------------------- bad input

def test_missing_files_name_expected_path_and_layouts(tmp_path):
    with pytest.raises(LpafError, match=r"no rte data with split\(s\) train, validation under .*accepted layouts"):
        load_raw(get_task("rte"), str(tmp_path), ["train", "validation"])
    with pytest.raises(LpafError, match="data directory not found"):
        load_raw(get_task("rte"), str(tmp_path / "nope"), ["train"])


def test_tsv_missing_column(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(LpafError, match=r"train.tsv: missing column\(s\) sentence; header has text, label"):
        read_glue_tsv(get_task("sst2"), d / "train.tsv")


def test_label_outside_label_set(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbad\t7\n")
    with pytest.raises(LpafError, match=r"train.tsv row 3: label '7' is outside the label set of sst2"):
        read_glue_tsv(get_task("sst2"), d / "train.tsv")


def test_short_row_names_row(tmp_path):
    d = tmp_path / "RTE"
    d.mkdir()
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly\n")
    with pytest.raises(LpafError, match="dev.tsv row 3: expected at least 4 tab-separated columns, found 2"):
        read_glue_tsv(get_task("rte"), d / "dev.tsv")


def test_empty_split(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(LpafError, match="split 'train' of sst2 in .* is empty"):
        load_raw(get_task("sst2"), str(tmp_path), ["train", "validation"])


def test_quoting_off_and_bom(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text('\ufeffsentence\tlabel\n"quoted start\t1\nit\'s "fine"\t0\n', encoding="utf-8")
    cols = read_glue_tsv(get_task("sst2"), d / "train.tsv")
    assert cols["sentence"] == ['"quoted start', 'it\'s "fine"']


def test_hub_unreachable_gives_fetch_advice(monkeypatch, tmp_path):
    """Offline mode (what the workflow sets on compute nodes). `datasets` and `huggingface_hub` read
    HF_HUB_OFFLINE at import, so the env var alone would leave this a 23 s run of connection retries.
    Empty caches, so a developer's cached copy of RTE cannot make the load succeed."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LpafError, match="lpaf fetch-data --task rte --out DIR"):
        load_raw(get_task("rte"), None, ["train"])


# ---------------------------------------------------------------- tokenization

def _tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_tokenization_cache_is_reused(glue_dir, tiny_model, tmp_path, monkeypatch):
    import lpaf.data as data

    task = get_task("mrpc")
    tok = _tokenizer(tiny_model)
    raw = load_raw(task, str(glue_dir), ["train", "validation"])
    calls = []
    real = data.tokenize_split
    monkeypatch.setattr(data, "tokenize_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = tokenize_cached(task, raw, tok, 32, tmp_path / "cache")
    assert len(calls) == 2
    second = tokenize_cached(task, load_raw(task, str(glue_dir), ["train", "validation"]), tok, 32, tmp_path / "cache")
    assert len(calls) == 2, "second call must load from the cache, not re-tokenize"
    assert first["train"]["input_ids"] == second["train"]["input_ids"]
    tokenize_cached(task, raw, tok, 16, tmp_path / "cache")  # a new max length is a new key
    assert len(calls) == 4


def test_max_samples_select_examples_clamped(glue_dir, tiny_model, tmp_path):
    task = get_task("sst2")
    feats = tokenize_cached(task, load_raw(task, str(glue_dir), ["train"]), _tokenizer(tiny_model), 32, tmp_path)
    assert len(select_examples(feats["train"], 10, task)) == 10
    assert len(select_examples(feats["train"], 10_000, task)) == 64


def test_squad_windows_and_postprocessing_recover_gold(squad_dir, tiny_model, tmp_path):
    task = get_task("squad")
    tok = _tokenizer(tiny_model)
    raw = load_raw(task, str(squad_dir), ["train", "validation"])
    feats = tokenize_cached(task, raw, tok, 24, tmp_path, doc_stride=8)
    train = feats["train"]
    assert len(train) > len(raw.splits["train"]), "long contexts must be split into several windows"
    # a train window that contains the answer points at the answer tokens
    ex0 = raw.splits["train"][0]
    for f in train:
        if f["example_index"] == 0 and f["start_positions"] > 0:
            span = tok.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1])
            assert span == ex0["answers"]["text"][0]
            break
    else:
        pytest.fail("no window holds the answer")
    # perfect logits on the eval windows -> the gold answer text
    ev, examples = feats["validation"], raw.splits["validation"]
    start = np.full((len(ev), 24), -10.0)
    end = np.full((len(ev), 24), -10.0)
    for i, f in enumerate(ev):
        ex = examples[f["example_index"]]
        a0 = ex["answers"]["answer_start"][0]
        a1 = a0 + len(ex["answers"]["text"][0])
        for k, off in enumerate(f["offset_mapping"]):
            if off is not None and off[0] == a0:
                start[i, k] = 10.0
            if off is not None and off[1] == a1:
                end[i, k] = 10.0
    preds = postprocess_qa(examples, ev, start, end)
    assert preds == {e["id"]: e["answers"]["text"][0] for e in examples}


def test_squad_selection_spans_map_batches(tiny_model, tmp_path):
    """max_*_samples on SQuAD keep exactly the first N examples and all their windows, also when the
    split is tokenized in several 1,000-example map batches (example_index is global)."""
    task = get_task("squad")
    root = tmp_path / "many"
    write_squad_json(root / "train-v1.1.json", n_articles=1250, seed=3)  # 2,500 questions
    write_squad_json(root / "dev-v1.1.json", n_articles=2, seed=4)
    raw = load_raw(task, str(root), ["train"])
    assert len(raw.splits["train"]) == 2500
    feats = tokenize_cached(task, raw, _tokenizer(tiny_model), 24, tmp_path / "cache", doc_stride=8)["train"]
    index = np.asarray(feats["example_index"])
    assert index.max() == 2499 and len(np.unique(index)) == 2500
    for n in (10, 1200, 2500, 5000):
        picked = np.asarray(select_examples(feats, n, task)["example_index"])
        assert set(picked.tolist()) == set(range(min(n, 2500))), n
        assert len(picked) == int((index < n).sum())


def test_squad_stride_that_does_not_fit_the_window_is_one_line(squad_dir, tiny_model, tmp_path, capsys):
    from lpaf.stages.common import DataArgs

    with pytest.raises(LpafError, match=r"--doc-stride 128 must be smaller than --max-length 128"):
        DataArgs(task="squad", max_length=128, doc_stride=128)
    DataArgs(task="sst2", max_length=128, doc_stride=128)  # the stride only matters for QA
    # without --max-length, QA windows default to run_qa.py's 384 (the default stride 128 fits), GLUE to 128
    assert DataArgs(task="squad").max_length == 384 and DataArgs(task="squad_v2").max_length == 384
    assert DataArgs(task="sst2").max_length == 128
    # a stride that fits the window but not a long question: the tokenizer's error, named by flag
    task = get_task("squad")
    raw = load_raw(task, str(squad_dir), ["validation"])
    with pytest.raises(LpafError, match=r"--doc-stride 18 does not fit a --max-length 24 window"):
        tokenize_cached(task, raw, _tokenizer(tiny_model), 24, tmp_path / "c", doc_stride=18)
    from lpaf.cli import main

    assert main(["evaluate", "--model", str(tiny_model), "--task", "squad", "--data", str(squad_dir),
                 "--max-length", "128", "--out", str(tmp_path / "e.json"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--doc-stride 128" in err and "--max-length 128" in err
    assert not (tmp_path / "e.json").exists()


# ---------------------------------------------------------------- real data

def _squash(text: str) -> str:
    # whitespace and control characters (one MRPC train sentence has a \x12 the export dropped)
    return "".join(ch for ch in text if ch.isprintable() and not ch.isspace())


@requires_shared()
def test_mrpc_same_examples_from_tsv_and_parquet():
    task = get_task("mrpc")
    tsv = load_raw(task, str(SHARED_DATA / "glue"), ["train", "validation"])
    pq = load_raw(task, str(SHARED_DATA / "glue_hf_parquet"), ["train", "validation"])
    assert tsv.source.startswith("glue-tsv") and pq.source.startswith("parquet")
    for split, n in (("train", 3668), ("validation", 408)):
        a, b = tsv.splits[split], pq.splits[split]
        assert len(a) == len(b) == n
        # The hub export re-spaced the text around punctuation (`brother ,` vs `brother,`);
        # the printable characters and their order are the same.
        for col in ("sentence1", "sentence2"):
            assert [_squash(x) for x in a[col]] == [_squash(x) for x in b[col]]
        assert a["label"] == b["label"]


@requires_shared()
def test_shared_layouts_found_from_data_root():
    for name, n_dev in (("sst2", 872), ("mrpc", 408), ("cola", 1043)):
        raw = load_raw(get_task(name), str(SHARED_DATA), ["train", "validation"])
        assert len(raw.splits["validation"]) == n_dev
    raw = load_raw(get_task("qnli"), str(SHARED_DATA), ["validation"])
    assert raw.source.startswith("parquet") and len(raw.splits["validation"]) == 5463


def test_squad_v2_evaluates_with_unanswerable_questions(tiny_model, tmp_path):
    """squad_v2 scores (it used to raise 'has no gold answer'): the official v2 keys, both splits."""
    import json

    from lpaf.cli import main

    root = tmp_path / "v2"
    write_squad_json(root / "train-v2.0.json", n_articles=2, seed=5)
    dev = write_squad_json(root / "dev-v2.0.json", n_articles=3, seed=6)
    blob = json.loads(dev.read_text())
    for article in blob["data"][:2]:  # make 4 of the 6 questions unanswerable
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                qa["answers"], qa["is_impossible"] = [], True
    dev.write_text(json.dumps(blob))
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tiny_model), "--task", "squad_v2", "--data", str(root),
                 "--max-length", "48", "--doc-stride", "16", "--out", str(out), "--device", "cpu"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 4
    assert 0 <= m["f1"] <= 100 and m["best_f1"] >= m["f1"] - 1e-9


def test_evaluate_records_that_max_eval_samples_scored_exactly_those_questions(squad_dir, tiny_model, tmp_path):
    """eval.json counts the questions, the windows scored, and the distinct questions those windows
    come from: --max-eval-samples N scores the windows of exactly N questions (it used to keep 3,300)."""
    import json

    from lpaf.cli import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tiny_model), "--task", "squad", "--data", str(squad_dir),
                 "--max-length", "20", "--doc-stride", "4", "--max-eval-samples", "3", "--out", str(out),
                 "--device", "cpu"]) == 0
    record = json.loads(out.read_text())
    assert record["n_eval_examples"] == {"validation": 3}
    assert record["n_eval_feature_examples"] == {"validation": 3}
    assert record["n_eval_features"]["validation"] > 3  # short windows: several per question


def test_hub_ids_are_the_current_ones():
    """GLUE lives at nyu-mll/glue on the hub (the bare "glue" id is a legacy alias), SQuAD at
    rajpurkar/squad(_v2); every task names its config where the repository has several."""
    for name, task in TASKS.items():
        if task.is_qa:
            assert task.hub_path == f"rajpurkar/{name}" and task.hub_config is None
        else:
            assert task.hub_path == "nyu-mll/glue" and task.hub_config == name


def test_split_squad_by_article_is_deterministic_and_loads(tmp_path, capsys):
    """lpaf split-squad: the last N articles are the evaluation part, no article in both parts, the
    output loads as SQuAD train/validation, and its files say they are not the official split."""
    import json

    from lpaf.cli import main

    src = write_squad_json(tmp_path / "dev-v1.1.json", n_articles=6, seed=7)
    out = tmp_path / "squad-devsplit-4-2"
    assert main(["split-squad", "--source", str(src), "--out", str(out), "--eval-articles", "2"]) == 0
    record = json.loads((out / "SPLIT.json").read_text())
    assert (record["train_articles"], record["eval_articles"]) == (4, 2)
    train = json.loads((out / "squad" / "v1.1" / "train-v1.1.json").read_text())
    dev = json.loads((out / "squad" / "v1.1" / "dev-v1.1.json").read_text())
    assert "not the official split" in train["version"] and "not the official split" in dev["version"]
    titles = json.loads(src.read_text())["data"]
    assert [a["title"] for a in dev["data"]] == [a["title"] for a in titles[-2:]]
    assert not {a["title"] for a in train["data"]} & {a["title"] for a in dev["data"]}
    raw = load_raw(get_task("squad"), str(out), ["train", "validation"])
    assert len(raw.splits["train"]) == record["train_questions"] and len(raw.splits["validation"]) == 4
    again = tmp_path / "again"
    assert main(["split-squad", "--source", str(src), "--out", str(again), "--eval-articles", "2"]) == 0
    assert (again / "squad" / "v1.1" / "dev-v1.1.json").read_bytes() == (out / "squad" / "v1.1" / "dev-v1.1.json").read_bytes()
    assert main(["split-squad", "--source", str(src), "--out", str(tmp_path / "x"), "--eval-articles", "6"]) == 2
    assert "leaves no training article" in capsys.readouterr().err and not (tmp_path / "x").exists()
