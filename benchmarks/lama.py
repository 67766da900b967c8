"""The paper's LAMA experiment in miniature: do a cloze sentence's saliency neighbours share its mistake?

    python benchmarks/lama.py [--train 4000] [--val 800] [--seconds 90] [--seed 0] [--save out.json]

Levin et al. (2022, appendix) ran parameter saliency on BERT over LAMA's cloze sentences and found
that a mistaken sentence's nearest saliency neighbours make the same mistake (professions
predicted as "actor", places as "France"). Here, with nothing downloaded:

1. cloze sentences about made-up people from Faker's word lists (``saliencydb.data.cloze``): four
   relations, two learnable (gender from the first name; birthplace, fixed per family) and two not
   (occupation, drawn afresh per sentence with Zipf weights in an order per gender, so the best a
   model can do is the gender's most frequent job; residence, half of the time the family's
   country and else any country, so the best guess is the family's country);
2. a tiny BERT masked-LM (``saliencydb.data.zoo.save_tiny_text_model``; its vocabulary is the
   sentences' words) trained from random weights on the train sentences, on CPU, with the
   masked-LM loss at the [MASK] only (AdamW, fixed seed, one torch thread; the trained model is
   cached under ``--cache-dir``, keyed by the settings, so a second run skips training). The
   recipe is ``--epochs``; ``--seconds`` only caps a slow machine, and the output says when it cut
   training short (then the model, and every number, differs from a full run's);
3. the validation sentences indexed with ``saliencydb`` (``--model hf:DIR``; with ``--reference
   train`` a sample of the train sentences is indexed first, as the split whose profiles define
   the standardisation), then ``Database.mistakes`` (the JSON of ``saliencydb mistakes``) and
   ``Database.neighbors`` asked.

Printed: accuracy per relation; the shared-mistake statistics of the validation split (share of a
mistake's k neighbours that make its exact confusion, and that are mistakes) in saliency space,
feature space and the tool's baselines (closest loss, same label, random); one confident mistake
of the most common confusion with its 5 saliency and its 5 feature neighbours. The script checks
the tool's same-confusion shares against its own exact numpy search.

What this can show: that the statistic and the neighbour lists work end to end on a Hugging Face
masked-LM, and whether, for a model whose mistakes have a known shared cause (defaulting to the most
frequent answer of a relation), saliency neighbours group mistakes by their exact confusion more
than feature neighbours do. What it cannot show: anything about BERT or LAMA themselves. The model
is a few ten thousand parameters trained for a minute on a closed world of a few hundred words;
"mistakes" on occupation and residence are by construction unavoidable guesses, so their shared
cause is known in advance, and validation sentences repeat people (sometimes whole sentences) of
the train set. A profile of such a model is dominated by the output-embedding rows of the target
and the predicted word, so grouping by confusion is partly built in; the feature space sees the
sentence but not the target, and the loss baseline sees only the loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout

import saliencydb  # noqa: E402
from saliencydb.data.cloze import RELATIONS, cloze_sentences, vocabulary  # noqa: E402
from saliencydb.demo import default_cache_dir  # noqa: E402

RECIPE_VERSION = 2  # bump when the training recipe changes (invalidates cached models)
EXAMPLE_K = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=4000, help="train sentences")
    ap.add_argument("--val", type=int, default=800, help="validation sentences (indexed)")
    ap.add_argument("--epochs", type=int, default=60, help="at most this many epochs ...")
    ap.add_argument("--seconds", type=float, default=90.0, help="... and at most this many seconds of training")
    ap.add_argument("--seed", type=int, default=0, help="the sentences' draws, the initial weights, the batches")
    ap.add_argument("--world-seed", type=int, default=0, help="who exists in the sentences' world")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-k", type=int, default=10, help="neighbours per mistake for the shared-mistake statistics")
    ap.add_argument("--reference", choices=("val", "train"), default="val",
                    help="the split whose profiles standardise the others (the first indexed): the validation split "
                         "itself, or --reference-size train sentences indexed first")
    ap.add_argument("--reference-size", type=int, default=1000)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--db", type=Path, default=None, help="write the database here (replaced) instead of a temporary directory")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the markdown")
    ap.add_argument("--save", type=Path, help="also write the JSON document to this file")
    return ap.parse_args(argv)


# -- data and model ------------------------------------------------------------------------------

def datasets(args) -> dict[str, list[dict]]:
    """Train and validation sentences of one world, drawn with different seeds."""
    return {"train": cloze_sentences(args.train, 2 * args.seed, world_seed=args.world_seed),
            "val": cloze_sentences(args.val, 2 * args.seed + 1, world_seed=args.world_seed)}


def write_jsonl(path: Path, split: str, sentences: list[dict]) -> None:
    """One ``{"id", "text", "label"}`` object per line; the id carries the relation (``val00012-gender``)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, s in enumerate(sentences):
            f.write(json.dumps({"id": f"{split}{i:05d}-{s['relation']}", "text": s["text"], "label": s["label"]}) + "\n")


def model_key(args) -> str:
    settings = {"v": RECIPE_VERSION, "train": args.train, "val": args.val, "epochs": args.epochs, "seconds": args.seconds,
                "seed": args.seed, "world": args.world_seed, "hidden": args.hidden, "layers": args.layers,
                "heads": args.heads, "lr": args.lr, "batch": args.batch_size}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def encode(tok, sentences: list[dict]):
    """Padded token ids, attention mask, and labels that are -100 except the target at the [MASK]."""
    import torch

    enc = tok([s["text"] for s in sentences], padding=True, return_tensors="pt")
    target = torch.tensor(tok.convert_tokens_to_ids([s["label"] for s in sentences]))
    assert not (target == tok.unk_token_id).any(), "a target word is not one token of the vocabulary"
    ids = enc["input_ids"]
    assert ((ids == tok.mask_token_id).sum(dim=1) == 1).all(), "a sentence does not hold exactly one [MASK]"
    labels = torch.full_like(ids, -100)
    labels[ids == tok.mask_token_id] = target
    return ids, enc["attention_mask"], labels


def train(args, data: dict[str, list[dict]], out: Path) -> dict:
    """Write the tiny BERT to ``out`` and train it on the train sentences (masked-LM loss at the [MASK],
    AdamW) for ``args.epochs`` epochs or ``args.seconds`` seconds, whichever ends first."""
    import torch
    import transformers

    from saliencydb.data.zoo import save_tiny_text_model

    model = save_tiny_text_model(out, vocabulary(data["train"] + data["val"]), hidden=args.hidden, layers=args.layers,
                                 heads=args.heads, seed=args.seed)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids, mask, labels = encode(tok, data["train"])
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    t0, epochs, losses = time.perf_counter(), 0, []
    while epochs < args.epochs and time.perf_counter() - t0 < args.seconds:
        total = 0.0
        for batch in torch.randperm(len(ids), generator=gen).split(args.batch_size):
            loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        losses.append(total / len(ids))
        epochs += 1
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    at = labels != -100
    train_acc = float((logits[at].argmax(-1) == labels[at]).float().mean())
    model.save_pretrained(out)
    return {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 1), "final_loss": losses[-1],
            "train_accuracy": train_acc}


def trained_model(args, data: dict[str, list[dict]], cache: Path) -> tuple[Path, dict, bool]:
    """The cached trained model directory for these settings (trained first if absent); whether it was cached."""
    import torch

    root = cache / "lama" / model_key(args)
    model_dir, done = root / "model", root / "trained.json"
    if done.is_file() and model_dir.is_dir():
        return model_dir, json.loads(done.read_text()), True
    shutil.rmtree(root, ignore_errors=True)
    model_dir.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and far faster on a busy 2-core machine
    try:
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            info = train(args, data, model_dir)
    finally:
        torch.set_num_threads(threads)
    done.write_text(json.dumps(info))
    return model_dir, info, False


# -- indexing and questions ----------------------------------------------------------------------

def index(args, data: dict[str, list[dict]], model_dir: Path, db: Path, work: Path) -> float:
    """Index the reference split (if not val) and the validation split; returns the seconds taken."""
    from saliencydb.indexer import Indexer

    t0 = time.perf_counter()
    splits = (["train"] if args.reference == "train" else []) + ["val"]
    for split in splits:
        sentences = data[split][:args.reference_size] if split == "train" else data[split]
        path = work / f"{split}.jsonl"
        write_jsonl(path, split, sentences)
        Indexer(db, model=f"hf:{model_dir}", batch_size=64).run(f"jsonl:{path}", split=split)
    return time.perf_counter() - t0


def relation_of(key: str) -> str:
    return key.rsplit("-", 1)[1]


def accuracy(d) -> dict:
    """Validation accuracy per relation (and overall), with each relation's most common prediction."""
    t = d.sql("SELECT key, label_name, pred_name, correct FROM samples WHERE split = 'val' ORDER BY sample_id").to_pylist()
    out = {}
    for rel in RELATIONS + ("all",):
        rows = [r for r in t if rel == "all" or relation_of(r["key"]) == rel]
        preds = Counter(r["pred_name"] for r in rows).most_common(1)
        out[rel] = {"samples": len(rows), "accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else None,
                    "most_common_prediction": preds[0][0] if preds else None,
                    "its_share": preds[0][1] / len(rows) if preds else None}
    return out


def shares(report: dict) -> dict:
    """From the tool's ``mistakes`` JSON (validation split): per space and baseline, the share of a mistake's
    neighbours with its exact confusion, and that are mistakes."""
    val = report["splits"]["val"]
    rows = {space: val[space] for space in ("saliency", "feature") if space in val}
    rows.update({f"baseline: {name}": e for name, e in val.get("baselines", {}).items()})
    return {name: {"same_confusion": e["same_confusion_of_incorrect"]["mean"],
                   "same_confusion_ci95": e["same_confusion_of_incorrect"]["ci95"],
                   "mistakes": 1 - e["correct_neighbors_of_incorrect"]["mean"],
                   "correct_of_correct": e["correct_neighbors_of_correct"]["mean"],
                   "n": e["same_confusion_of_incorrect"]["n"]} for name, e in rows.items()}


def numpy_same_confusion(d, space: str, k: int, eps: float = 1e-5) -> tuple[float, float]:
    """The mean share of a validation mistake's k nearest other validation samples (exact cosine) with its
    confusion, as the least and the most it can be: identical sentences have identical feature vectors
    whatever their targets, so ties at the k-th neighbour are common and any of the tied may be chosen."""
    meta = d.sql("SELECT sample_id, label, pred FROM samples WHERE split = 'val' ORDER BY sample_id")
    ids, label, pred = (meta.column(c).to_numpy() for c in ("sample_id", "label", "pred"))
    vectors = d.vectors(space, ids)
    q = np.flatnonzero(label != pred)
    sims = vectors[q] @ vectors.T
    sims[np.arange(len(q)), q] = -np.inf
    kth = -np.sort(-sims, axis=1)[:, k - 1:k]
    hit = (label[None, :] == label[q, None]) & (pred[None, :] == pred[q, None])
    above, tied = sims > kth + eps, np.abs(sims - kth) <= eps
    a, h_above = above.sum(axis=1), (above & hit).sum(axis=1)
    b, h_tied = tied.sum(axis=1), (tied & hit).sum(axis=1)
    need = k - a
    low = (h_above + np.maximum(0, need - (b - h_tied))) / k
    high = (h_above + np.minimum(need, h_tied)) / k
    return float(low.mean()), float(high.mean())


def example(d) -> dict | None:
    """The most confident validation mistake of the most common confusion, with its saliency and feature
    neighbours (within the validation split)."""
    wrong = d.sql("SELECT sample_id, key, text, label_name, pred_name, pred_conf FROM samples "
                  "WHERE split = 'val' AND NOT correct ORDER BY sample_id").to_pylist()
    if not wrong:
        return None
    (target, pred), count = Counter((r["label_name"], r["pred_name"]) for r in wrong).most_common(1)[0]
    chosen = max((r for r in wrong if (r["label_name"], r["pred_name"]) == (target, pred)), key=lambda r: r["pred_conf"])
    out = {"confusion": f"{target} -> {pred}", "count": count, "sample_id": chosen["sample_id"], "text": chosen["text"],
           "relation": relation_of(chosen["key"]), "target": target, "prediction": pred, "confidence": chosen["pred_conf"]}
    for space in ("saliency", "feature"):
        res = d.neighbors(chosen["sample_id"], k=EXAMPLE_K, space=space, split="val")
        out[space] = [{key: n[key] for key in ("rank", "sample_id", "text", "label_name", "pred_name", "correct", "similarity")}
                      for n in res.neighbors]
    return out


def measure(args, db: Path) -> dict:
    with saliencydb.open(db) as d:
        failures = d.sql("SELECT count(*) AS n FROM failures").column("n")[0].as_py()
        assert failures == 0, f"{failures} sentences failed to index: {d.sql('SELECT key, reason FROM failures LIMIT 3').to_pylist()}"
        report = d.mistakes(args.k, write=False).to_dict()  # what `saliencydb mistakes --format json` prints
        stats = shares(report)
        for space in ("saliency", "feature"):
            low, high = numpy_same_confusion(d, space, args.k)
            tool = stats[space]["same_confusion"]
            assert low - 1e-9 <= tool <= high + 1e-9, f"{space}: numpy [{low}, {high}] (ties) vs the tool's {tool}"
            stats[space]["numpy_same_confusion_range"] = [low, high]
        info = d.info().to_dict()
        return {"accuracy": accuracy(d), "mistakes_report": report, "shares": stats, "example": example(d),
                "units": info.get("units") if isinstance(info, dict) else None}


# -- output --------------------------------------------------------------------------------------

def print_markdown(doc: dict) -> None:
    t, units = doc["training"], doc["units"] or {}
    cut = f" (stopped by --seconds; the recipe is {doc['settings']['epochs']})" if t["epochs"] < doc["settings"]["epochs"] else ""
    print(f"Tiny BERT ({doc['parameters']:,} parameters, vocabulary {doc['vocabulary']} words) trained on {doc['settings']['train']} "
          f"cloze sentences: {t['epochs']} epochs{cut}, {t['seconds']:.0f} s{' (cached)' if doc['cached'] else ''}, train accuracy "
          f"{t['train_accuracy']:.1%}. Validation: {doc['settings']['val']} sentences, indexed in {doc['index_seconds']:.0f} s "
          f"(reference split: {doc['settings']['reference']}; {units.get('count')} {units.get('kind')} units in "
          f"{units.get('layers')} layers). Total {doc['seconds']:.0f} s.\n")
    print("| relation | predictable | sentences | accuracy | most common prediction (share) |")
    print("|---|---|---|---|---|")
    learnable = {"gender": "yes (first name)", "birthplace": "yes (family)", "occupation": "no (Zipf per gender)",
                 "residence": "half (family's country)", "all": ""}
    for rel, a in doc["accuracy"].items():
        print(f"| {rel} | {learnable[rel]} | {a['samples']} | {a['accuracy']:.1%} | {a['most_common_prediction']} ({a['its_share']:.0%}) |")
    n = doc["shares"]["saliency"]["n"]
    print(f"\nShared mistakes, validation split: {n} mistakes, k = {doc['settings']['k']} neighbours each (from `mistakes`' JSON)\n")
    print("| neighbours by | same confusion [95% CI] | mistakes among neighbours | correct among a correct one's |")
    print("|---|---|---|---|")
    for name, s in doc["shares"].items():
        lo, hi = s["same_confusion_ci95"]
        print(f"| {name} | {s['same_confusion']:.1%} [{lo:.1%}, {hi:.1%}] | {s['mistakes']:.1%} | {s['correct_of_correct']:.1%} |")
    checks = "; ".join(f"{space} within [{lo:.1%}, {hi:.1%}]" for space in ("saliency", "feature")
                       for lo, hi in [doc["shares"][space]["numpy_same_confusion_range"]])
    print(f"\nChecked against an exact numpy search (the range is over tied neighbours: identical sentences with other "
          f"targets have identical features): {checks}.")
    ex = doc["example"]
    if ex is None:
        print("\nNo validation mistakes: nothing to show.")
        return
    print(f"\nMost common confusion: {ex['confusion']} ({ex['count']} mistakes). Its most confident one, sample "
          f"{ex['sample_id']} ({ex['relation']}): \"{ex['text']}\" target {ex['target']}, predicted {ex['prediction']} "
          f"({ex['confidence']:.0%}).")
    for space in ("saliency", "feature"):
        print(f"\n{space} neighbours:\n")
        print("| rank | sentence | target | prediction | similarity |")
        print("|---|---|---|---|---|")
        for nb in ex[space]:
            print(f"| {nb['rank']} | {nb['text']} | {nb['label_name']} | {nb['pred_name']}{'' if nb['correct'] else ' (wrong)'} | {nb['similarity']:.3f} |")


def run(args) -> dict:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bars
    t0 = time.perf_counter()
    cache = args.cache_dir or default_cache_dir()
    data = datasets(args)
    model_dir, training, cached = trained_model(args, data, cache)
    with tempfile.TemporaryDirectory(prefix="lama-") as tmp:
        work = Path(tmp)
        db = args.db or work / "db"
        if args.db is not None:
            shutil.rmtree(db, ignore_errors=True)
        index_seconds = index(args, data, model_dir, db, work)
        results = measure(args, db)

    model = transformers.AutoModelForMaskedLM.from_pretrained(model_dir)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json", "save")}
    return {"settings": settings, "model_dir": str(model_dir), "cached": cached, "training": training,
            "parameters": sum(p.numel() for p in model.parameters()), "vocabulary": len(vocabulary(data["train"] + data["val"])),
            "index_seconds": index_seconds, **results, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = run(args)
    text = json.dumps(doc, indent=1, default=str)
    if args.save:
        args.save.write_text(text)
    if args.json:
        print(text)
    else:
        print_markdown(doc)
    return doc


if __name__ == "__main__":
    main()
