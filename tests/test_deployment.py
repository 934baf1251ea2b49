"""Deployment without traps (issue 31, point 7): label names from the task registry in every artifact,
plain transformers Auto classes that refuse a factorized artifact instead of loading random weights, a
model card with YAML front matter (huggingface_hub's ModelCard), and an ONNX export that carries its
config and tokenizer beside the graph."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import lpaf
from conftest import make_tiny_model, write_glue_task
from lpaf.cli import main
from lpaf.tasks import TASKS, get_task

FLAGS = ["--task", "mrpc", "--max-length", "32", "--device", "cpu"]
BASE_MODEL = "google/bert_uncased_L-2_H-128_A-2"  # what the fetched stand-in below says it was fetched from


def test_the_registry_names_every_label():
    for task in TASKS.values():
        if task.is_qa:
            assert task.id2label() == {}
            continue
        names = task.id2label()
        assert sorted(names) == list(range(task.num_labels)) and all(names.values())
        assert task.label2id() == {v: k for k, v in names.items()}
    assert get_task("sst2").id2label() == {0: "negative", 1: "positive"}
    assert get_task("mrpc").id2label() == {0: "not_equivalent", 1: "equivalent"}
    assert get_task("mnli").id2label() == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert get_task("stsb").id2label() == {0: "similarity"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A fetched pre-trained model (stand-in), its fine-tuned MRPC teacher and an SVD factorization of it."""
    root = tmp_path_factory.mktemp("deploy")
    data = write_glue_task(root / "data", "mrpc")
    fetched = make_tiny_model(root / "fetched")
    (fetched / "metrics.json").write_text(json.dumps({"stage": "fetch-model", "model": BASE_MODEL, "revision": None}))
    dense, fact = root / "dense", root / "fact"
    assert main(["finetune", "--model", str(fetched), "--data", str(data), "--out", str(dense), "--max-steps", "2",
                 "--batch-size", "8", *FLAGS]) == 0
    assert main(["factorize", "--model", str(dense), "--data", str(data), "--out", str(fact), "--method", "svd",
                 "--density", "0.5", *FLAGS]) == 0
    return {"root": root, "data": data, "dense": dense, "fact": fact}


def test_every_artifact_carries_the_task_label_names(chain):
    from transformers import pipeline

    for d in (chain["dense"], chain["fact"]):
        config = json.loads((d / "config.json").read_text())
        assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}, d
        assert config["label2id"] == {"not_equivalent": 0, "equivalent": 1}, d
    pipe = pipeline("text-classification", model=lpaf.load_model(str(chain["fact"])), tokenizer=str(chain["fact"]))
    assert pipe("a good film . a fine film")[0]["label"] in ("not_equivalent", "equivalent")


def test_auto_classes_refuse_a_factorized_artifact_and_lpaf_loads_it(chain):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    fact = str(chain["fact"])
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained,
                 AutoModelForSequenceClassification.from_pretrained, lambda d: pipeline("text-classification", model=d)):
        with pytest.raises((ValueError, KeyError, OSError), match="lpaf"):
            load(fact)
    model = lpaf.load_model(fact)
    assert type(model).__name__ == "BertForSequenceClassification"
    AutoTokenizer.from_pretrained(fact)  # the tokenizer beside it still loads on its own
    enc = AutoTokenizer.from_pretrained(fact)("a good film", return_tensors="pt")
    with torch.no_grad():
        first = model(**enc).logits
        again = lpaf.load_model(fact)(**enc).logits
    torch.testing.assert_close(first, again)  # the saved factors, not a random initialisation


def test_a_factorized_artifact_of_the_old_format_still_loads(chain, tmp_path):
    """Artifacts written before the refusal (model_type of the base model beside the rank section)."""
    old = tmp_path / "old"
    shutil.copytree(chain["fact"], old)
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = config["lpaf_lowrank"].pop("base_model_type")
    (old / "config.json").write_text(json.dumps(config))
    enc = {"input_ids": torch.tensor([[2, 10, 11, 3]])}
    with torch.no_grad():
        torch.testing.assert_close(lpaf.load_model(str(old))(**enc).logits,
                                   lpaf.load_model(str(chain["fact"]))(**enc).logits)


def test_the_stages_read_the_refusing_format(chain, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(chain["fact"]), "--data", str(chain["data"]), "--out", str(out),
                 *FLAGS]) == 0
    assert json.loads(out.read_text())["metrics"]


def test_the_model_card_has_front_matter(chain):
    from huggingface_hub import ModelCard

    for d in (chain["dense"], chain["fact"]):
        text = (d / "README.md").read_text()
        assert text.startswith("---\n"), text[:200]
        card = ModelCard(text)
        meta = card.data.to_dict()
        assert meta["license"] == "apache-2.0"
        assert "lpaf" in meta["tags"] and "text-classification" in meta["tags"]
        assert meta["datasets"] == ["nyu-mll/glue"]
        assert meta["metrics"] == ["f1", "accuracy"]
        assert meta["base_model"] == BASE_MODEL
        assert meta["pipeline_tag"] == "text-classification"
        assert "lpaf.load_model" in card.text
    stage_tags = {d: ModelCard((d / "README.md").read_text()).data.to_dict()["tags"] for d in (chain["dense"],
                                                                                               chain["fact"])}
    assert "low-rank" in stage_tags[chain["fact"]] and "low-rank" not in stage_tags[chain["dense"]]


def test_onnx_export_writes_config_and_tokenizer_beside_the_graph(chain, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "onnx" / "model.onnx"
    assert main(["export", "--model", str(chain["fact"]), "--out", str(out)]) == 0
    config = AutoConfig.from_pretrained(out.parent)  # a plain config: the graph holds the factors itself
    assert config.model_type == "bert" and "lpaf_lowrank" not in config.to_dict()
    assert config.id2label == {0: "not_equivalent", 1: "equivalent"}
    tokenizer = AutoTokenizer.from_pretrained(out.parent)
    enc = tokenizer(["a good film", "a bad film ."], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    with torch.no_grad():
        ref = lpaf.load_model(str(chain["fact"]))(**tokenizer(["a good film", "a bad film ."], padding=True,
                                                               return_tensors="pt")).logits
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)


def test_onnx_export_refuses_to_write_into_a_model_directory(chain, tmp_path, capsys):
    """config.json beside the graph would overwrite the artifact's own (or, for a factorized one, undo
    the refusal above): an export goes into a directory of its own."""
    target = tmp_path / "copy"
    shutil.copytree(chain["fact"], target)
    before = (target / "config.json").read_text()
    assert main(["export", "--model", str(chain["fact"]), "--out", str(target / "model.onnx")]) == 2
    assert "holds a model" in capsys.readouterr().err
    assert (target / "config.json").read_text() == before and not (target / "model.onnx").exists()


def test_optimum_loads_the_export(chain, tmp_path):
    """optimum's ORTModelForSequenceClassification on the exported directory. optimum-onnx (the home of
    ORTModel since optimum 2) requires transformers < 4.58 and lpaf transformers 5, so the two cannot be
    installed together today (README, "Deploying"); this runs wherever optimum is importable."""
    ort_models = pytest.importorskip("optimum.onnxruntime", reason="optimum[onnxruntime] needs transformers < 4.58")
    out = tmp_path / "onnx" / "model.onnx"
    assert main(["export", "--model", str(chain["fact"]), "--out", str(out)]) == 0
    model = ort_models.ORTModelForSequenceClassification.from_pretrained(out.parent)
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(out.parent)("a good film", return_tensors="pt")
    assert model(**enc).logits.shape == (1, 2)
