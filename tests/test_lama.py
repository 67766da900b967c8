"""The LAMA-style cloze sentences (saliencydb.data.cloze) and a smoke run of benchmarks/lama.py."""

import importlib.util
from collections import defaultdict

import pytest

import saliencydb
from helpers import ROOT
from saliencydb.data.cloze import MASK, RELATIONS, cloze_sentences, vocabulary, world


@pytest.fixture(scope="module")
def sentences():
    return cloze_sentences(400, 0) + cloze_sentences(200, 1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sentences):
    from saliencydb.data.zoo import save_tiny_text_model

    out = tmp_path_factory.mktemp("tiny-bert")
    save_tiny_text_model(out, vocabulary(sentences))
    return out


def test_same_seed_same_sentences_other_seed_other_sentences():
    a, b = cloze_sentences(120, 7), cloze_sentences(120, 7)
    assert a == b
    assert [s["text"] for s in cloze_sentences(120, 8)] != [s["text"] for s in a]
    assert world(0) == world(0) and world(0) != world(1)


def test_every_sentence_has_one_mask_and_relations_take_turns(sentences):
    for i, s in enumerate(sentences[:400]):
        assert s["text"].split().count(MASK) == 1 and s["text"].count("[") == 1
        assert s["relation"] == RELATIONS[i % len(RELATIONS)]
        assert s["label"] and s["label"] == s["label"].lower() and s["label"].isalpha()
    assert {s["relation"] for s in sentences} == set(RELATIONS)


def test_learnable_relations_are_fixed_per_name_across_seeds(sentences):
    """Train and validation draws (seeds 0 and 1) share one world: a first name always has one gender,
    a family one birth country; occupation and residence vary."""
    seen = defaultdict(set)
    for s in sentences:
        first, last = s["text"].split()[:2]
        seen[(s["relation"], first if s["relation"] == "gender" else last)].add(s["label"])
    fixed = {rel: all(len(v) == 1 for (r, _), v in seen.items() if r == rel) for rel in RELATIONS}
    assert fixed == {"gender": True, "birthplace": True, "occupation": False, "residence": False}


def test_labels_are_single_tokens_of_the_tiny_models_tokenizer(sentences, tiny_model):
    from saliencydb.data.text import TokenTransform

    words = vocabulary(sentences)
    assert MASK not in words and "." not in words and words == sorted(set(words))
    tt = TokenTransform(str(tiny_model), "masked-lm", 64)
    for label in sorted({s["label"] for s in sentences}):
        token, reason = tt.resolve_label(label, {})
        assert reason is None and token is not None and token != tt.tokenizer.unk_token_id, (label, reason)
    for s in sentences[:50]:
        ids = tt(s["text"])[0].tolist()
        assert ids.count(tt.tokenizer.mask_token_id) == 1 and tt.tokenizer.unk_token_id not in ids


def _lama():
    spec = importlib.util.spec_from_file_location("lama_benchmark", ROOT / "benchmarks" / "lama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lama")
    lama = _lama()
    args = ["--train", "400", "--val", "160", "--epochs", "4", "--seconds", "30", "-k", "5",
            "--cache-dir", str(tmp / "cache"), "--db", str(tmp / "db"), "--save", str(tmp / "out.json")]
    doc = lama.main(args)
    return lama, lama.parse_args(args), doc, tmp


def test_lama_smoke_reports_both_spaces_accuracy_and_an_example(small_run, capsys):
    lama, args, doc, tmp = small_run
    import json

    assert json.loads((tmp / "out.json").read_text())["shares"] == json.loads(json.dumps(doc["shares"]))
    val = doc["mistakes_report"]["splits"]["val"]
    assert val["samples"] == 160 and val["incorrect"] == doc["shares"]["saliency"]["n"] > 0
    for space in ("saliency", "feature", "baseline: loss", "baseline: label", "baseline: random"):
        s = doc["shares"][space]
        assert 0 <= s["same_confusion"] <= 1 and 0 <= s["mistakes"] <= 1, space
    for rel, a in doc["accuracy"].items():
        assert 0 <= a["accuracy"] <= 1 and a["samples"] == (160 if rel == "all" else 40)
    texts = {s["text"] for s in lama.datasets(args)["val"]}
    ex = doc["example"]
    assert ex["target"] != ex["prediction"] and ex["text"] in texts
    for space in ("saliency", "feature"):
        assert [n["rank"] for n in ex[space]] == [1, 2, 3, 4, 5]
        assert all(n["text"] in texts and n["sample_id"] != ex["sample_id"] for n in ex[space])
        sims = [n["similarity"] for n in ex[space]]
        assert sims == sorted(sims, reverse=True)


def test_lama_second_run_reuses_the_trained_model(small_run, capsys):
    lama, args, doc, tmp = small_run
    assert not doc["cached"]
    again = lama.main(["--train", "400", "--val", "160", "--epochs", "4", "--seconds", "30", "-k", "5",
                       "--cache-dir", str(tmp / "cache")])
    assert again["cached"] and again["training"] == doc["training"] and again["model_dir"] == doc["model_dir"]
    assert again["accuracy"] == doc["accuracy"]
    assert "| relation |" in capsys.readouterr().out


def test_lama_mistakes_equal_a_recomputation_from_neighbour_lists(small_run):
    """The tool's shares (the knn graph) against ``Database.neighbors`` of every mistake: equal in saliency
    space; in feature space, identical sentences with other targets tie, so within the tie range."""
    lama, args, doc, tmp = small_run
    with saliencydb.open(tmp / "db") as d:
        wrong = d.sql("SELECT sample_id, label, pred FROM samples WHERE split = 'val' AND NOT correct").to_pylist()
        for space in ("saliency", "feature"):
            same, mistaken = [], []
            for w in wrong:
                nbs = d.neighbors(w["sample_id"], k=args.k, space=space, split="val").neighbors
                same.append(sum(n["label"] == w["label"] and n["pred"] == w["pred"] for n in nbs) / args.k)
                mistaken.append(sum(not n["correct"] for n in nbs) / args.k)
            tool = doc["shares"][space]
            low, high = lama.numpy_same_confusion(d, space, args.k)
            assert low - 1e-9 <= sum(same) / len(same) <= high + 1e-9, space
            if space == "saliency":
                assert sum(same) / len(same) == pytest.approx(tool["same_confusion"], abs=1e-9)
                assert sum(mistaken) / len(mistaken) == pytest.approx(tool["mistakes"], abs=1e-9)
