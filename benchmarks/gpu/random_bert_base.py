"""A BERT-base-shaped model with random weights, for timing only (`lpaf calibrate` on a machine that
cannot reach the hub): 12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 30,522 — the shapes
of bert-base-uncased, so a step costs what it would cost with the real weights. Scores from it mean
nothing. The tokenizer is copied from any uncased-BERT-vocabulary model directory (the shared
MiniLM uses bert-base-uncased's 30,522-token vocabulary).

    python benchmarks/gpu/random_bert_base.py --tokenizer ../shared/models/all-MiniLM-L6-v2 --out /tmp/bert-base-random
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="model directory whose tokenizer files are copied")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch
    from transformers import BertConfig, BertModel

    src, out = Path(args.tokenizer), Path(args.out)
    if not (src / "vocab.txt").is_file():
        raise SystemExit(f"random_bert_base: --tokenizer {src}: no vocab.txt there (an uncased BERT vocabulary)")
    torch.manual_seed(args.seed)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, max_position_embeddings=512))
    model.save_pretrained(out)  # safetensors
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    n = sum(t.numel() for t in model.parameters())
    print(f"random_bert_base: {n / 1e6:.1f}M parameters -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
