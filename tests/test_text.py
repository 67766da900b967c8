"""Text databases: Hugging Face masked-LM and sequence classifiers (BERT, RoBERTa, DistilBERT built from tiny
configs with offline tokenizers), the batched engine against the one-sample definition, padding invariance,
text sources and their per-sample failures, and a text database built, ingested into, queried, clustered and
explained (token saliency) through the CLI."""

import json

import numpy as np
import pytest
import torch

from helpers import run_cli
from saliencydb.data.sources import parse_data_spec, pad_tokens
from saliencydb.data.text import TokenTransform
from saliencydb.data.zoo import save_tiny_text_model
from saliencydb.models.loading import load_model
from saliencydb.saliency import ProfileEngine, UnitLayout, reference_profiles
from saliencydb.saliency.input_space import token_saliency

WORDS = ("he she anna tom lives works was born in as a an the city country of actor doctor nurse teacher "
         "paris france london england berlin germany rome italy").split()
CASES = [("bert", "masked-lm"), ("roberta", "masked-lm"), ("distilbert", "sequence-classification")]


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """One directory per (architecture, task): a tiny model with random weights and its tokenizer."""
    root = tmp_path_factory.mktemp("text-models")
    out = {}
    for i, (arch, task) in enumerate(CASES + [("bert", "sequence-classification")]):
        out[arch, task] = root / f"{arch}-{task}"
        save_tiny_text_model(out[arch, task], WORDS, arch=arch, task=task, seed=i,
                             id2label={0: "negative", 1: "positive"} if task != "masked-lm" else None)
    return out


def _batch(loaded, lengths_differ=True):
    """Sentences of different lengths (padded in the batch) and their labels."""
    t = loaded.default_transform
    m = t.mask_token if t.task == "masked-lm" else "paris"
    sents = [f"anna lives in {m} .", f"tom was born in the city of {m} in england and works as a doctor .", f"she is a {m} ."]
    if not lengths_differ:
        sents = sents[:1] * 3
    if t.task == "masked-lm":
        y = torch.tensor([t.resolve_label(w, {})[0] for w in ("paris", "london", "nurse")])
    else:
        y = torch.tensor([1, 0, 1])
    return sents, pad_tokens([t(s) for s in sents]), y


def _relative_errors(model, x, y, layout):
    got = ProfileEngine(model, layout=layout).profile(x, y).raw.double()
    ref = reference_profiles(model, x, y, layout).double()
    errors = []
    for layer in layout.layers:
        a, b = got[:, layer.offset : layer.stop], ref[:, layer.offset : layer.stop]
        assert b.abs().max() > 0, layer.name  # every layer reaches the loss: the comparison means something
        errors.append(float((a - b).abs().max() / b.abs().max()))
    return errors


@pytest.mark.parametrize("arch,task", CASES)
@pytest.mark.parametrize("axis", ["out", "in"])
def test_engine_matches_per_sample_autograd(text_models, arch, task, axis):
    loaded = load_model(f"hf:{text_models[arch, task]}")
    _, x, y = _batch(loaded)
    assert int(x[:, 1].sum(1).min()) < x.shape[2]  # some rows are padded
    layout = UnitLayout.from_module(loaded.module, "auto", axis)
    assert layout.kind == f"linear-{axis}" and len(layout.layers) >= 13
    assert max(_relative_errors(loaded.module, x, y, layout)) <= 1e-4


@pytest.mark.parametrize("arch,task", CASES)
def test_engine_float64(text_models, arch, task):
    loaded = load_model(f"hf:{text_models[arch, task]}")
    _, x, y = _batch(loaded)
    module = loaded.module.double()
    layout = UnitLayout.from_module(module, "auto", "out")
    got = ProfileEngine(module, layout=layout).profile(x, y).raw.double()
    ref = reference_profiles(module, x, y, layout).double()
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-6


@pytest.mark.parametrize("arch,task", CASES)
def test_padding_changes_nothing(text_models, arch, task):
    """A batch padded to its longest sentence gives each sentence the profile, logits and feature it has alone."""
    loaded = load_model(f"hf:{text_models[arch, task]}")
    sents, x, y = _batch(loaded)
    engine = ProfileEngine(loaded.module, layout=UnitLayout.from_module(loaded.module, "auto", "out"))
    batch = engine.profile(x, y)
    for i, s in enumerate(sents):
        alone = engine.profile(loaded.default_transform(s)[None], y[i : i + 1])
        scale = float(batch.raw[i].abs().max())
        assert float((alone.raw[0] - batch.raw[i]).abs().max()) <= 1e-5 * scale
        assert torch.allclose(alone.logits[0], batch.logits[i], atol=1e-5)
        assert torch.allclose(alone.feature[0], batch.feature[i], atol=1e-5)
    # more padding than the batch needs changes nothing either
    wide = torch.zeros(x.shape[0], 2, x.shape[2] + 7, dtype=torch.long)
    wide[:, :, : x.shape[2]] = x
    assert torch.allclose(engine.profile(wide, y).raw, batch.raw, rtol=1e-5, atol=1e-9)


def test_masked_lm_units_exclude_the_tied_decoder(text_models):
    loaded = load_model(f"hf:{text_models['bert', 'masked-lm']}")
    layout = UnitLayout.from_module(loaded.module, "auto", "in")
    names = [layer.name for layer in layout.layers]
    assert "model.cls.predictions.decoder" not in names and "model.cls.predictions.transform.dense" in names
    excluded = dict(layout.excluded)
    assert "tied" in excluded["model.bert.embeddings.word_embeddings.weight"]
    assert loaded.num_classes == len(loaded.class_names) == loaded.module.model.config.vocab_size
    assert loaded.modality == "text"


def test_masked_lm_logits_are_the_full_pass_at_the_mask(text_models):
    """The wrapper runs the LM head at the mask only; the logits equal the full model's at that position."""
    loaded = load_model(f"hf:{text_models['roberta', 'masked-lm']}")
    _, x, _ = _batch(loaded)
    with torch.no_grad():
        got = loaded.module(x)
        full = loaded.module.model(input_ids=loaded.module.unpack(x)[0], attention_mask=x[:, 1]).logits
    pos = (x[:, 0] == loaded.module.mask_id).int().argmax(1)
    assert torch.allclose(got, full[torch.arange(len(x)), pos], atol=1e-5)


def test_token_saliency_ignores_padding_and_peaks_somewhere(text_models):
    loaded = load_model(f"hf:{text_models['bert', 'masked-lm']}")
    t = loaded.default_transform
    x = t(f"anna lives in {t.mask_token} .")[None]
    layout = UnitLayout.from_module(loaded.module, "auto", "out")
    zeros, ones = np.zeros(layout.n_units), np.ones(layout.n_units)
    y = torch.tensor([t.resolve_label("paris", {})[0]])
    s = token_saliency(loaded.module, x, y, zeros, ones, layout=layout)
    assert s.shape == (x.shape[2],) and bool(torch.isfinite(s).all()) and float(s.max()) > 0
    padded = torch.zeros(1, 2, x.shape[2] + 5, dtype=torch.long)
    padded[:, :, : x.shape[2]] = x
    assert torch.allclose(token_saliency(loaded.module, padded, y, zeros, ones, layout=layout), s, rtol=1e-4, atol=1e-9)
    # boosting other units changes the map: it is the boosted units' saliency, not a constant
    other = token_saliency(loaded.module, x, y, zeros, ones, layout=layout, units=[0, 1, 2])
    assert not torch.allclose(other, s)


def test_transform_refuses_bad_sentences(text_models):
    t = TokenTransform(str(text_models["bert", "masked-lm"]), "masked-lm", 12)
    from saliencydb.errors import DataError

    with pytest.raises(DataError, match="no \\[MASK\\]"):
        t("anna lives in paris .")
    with pytest.raises(DataError, match="2 \\[MASK\\] tokens"):
        t("[MASK] lives in [MASK] .")
    with pytest.raises(DataError, match="beyond the first 12 tokens"):
        t("anna lives in the city of the city of the city of the country of [MASK] .")
    assert t.resolve_label("Paris", {})[0] == t.tokenizer.convert_tokens_to_ids("paris")  # lower-cased like the text
    assert "2 tokens" in t.resolve_label("actors", {})[1]
    assert "not in the vocabulary" in t.resolve_label("zebra", {})[1]


# -- sources -------------------------------------------------------------------------------------

def test_text_sources(tmp_path):
    jl = tmp_path / "s.jsonl"
    jl.write_text('{"text": "a [MASK] .", "label": "nurse"}\n\n{"id": "x7", "text": "b [MASK] .", "label": "doctor"}\n'
                  'not json\n{"text": "", "label": "nurse"}\n["a list"]\n')
    src = parse_data_spec(f"jsonl:{jl}")
    assert src.modality == "text" and len(src) == 5
    assert [src.key(i) for i in range(5)] == ["s.jsonl#1", "x7", "s.jsonl#4", "s.jsonl#5", "s.jsonl#6"]
    assert src.class_names == ["doctor", "nurse"] and src.label(0) == 1 and src.load(1) == "b [MASK] ."
    from saliencydb.errors import DataError, SpecError

    for i, why in [(2, "not JSON"), (3, "lacks a text"), (4, "not a JSON object")]:
        with pytest.raises(DataError, match=why):
            src.load(i)
    cs = tmp_path / "s.csv"
    cs.write_text('text,label\n"hello, world",1\nbye,0\n')
    src = parse_data_spec(f"csv:{cs}")
    assert src.modality == "text" and src.load(0) == "hello, world" and src.whole_numbers
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"id": "a", "text": "x", "label": "y"}\n{"id": "a", "text": "z", "label": "y"}\n')
    with pytest.raises(SpecError, match="repeats id 'a'"):
        parse_data_spec(f"jsonl:{dup}")
    with pytest.raises(SpecError, match="does not exist"):
        parse_data_spec(f"jsonl:{tmp_path / 'nope.jsonl'}")


# -- the CLI -------------------------------------------------------------------------------------

def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cloze(n, seed):
    rng = np.random.default_rng(seed)
    names, places, jobs = ["anna", "tom", "he", "she"], ["paris", "london", "berlin", "rome"], ["actor", "doctor", "nurse", "teacher"]
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            rows.append({"text": f"{rng.choice(names)} lives in [MASK] .", "label": str(rng.choice(places))})
        else:
            rows.append({"text": f"{rng.choice(names)} works as a [MASK] .", "label": str(rng.choice(jobs))})
    return rows


@pytest.fixture(scope="module")
def text_db(text_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("text-db")
    rows = _cloze(40, 0) + [
        {"text": "anna lives in paris .", "label": "paris"},  # no mask
        {"text": "[MASK] lives in [MASK] .", "label": "paris"},  # two masks
        {"text": "tom works as a [MASK] .", "label": "actors"},  # two tokens
        {"text": "tom works as a [MASK] .", "label": "zebra"},  # not in the vocabulary
    ]
    data = _write_jsonl(root / "val.jsonl", rows)
    db = root / "db"
    out = run_cli("index", "--db", db, "--model", f"hf:{text_models['bert', 'masked-lm']}", "--data", f"jsonl:{data}",
                  "--random-weights", "-q", "--batch-size", 16, expect=2)
    assert "val: 40 samples added" in out.output and "4 failed" in out.output
    return db, data


def test_text_database_failures_and_sql(text_db):
    db, data = text_db
    out = run_cli("sql", "--db", db, "--format", "json", "SELECT key, reason FROM failures ORDER BY key")
    reasons = {r["key"]: r["reason"] for r in json.loads(out.stdout)}
    assert "no [MASK] token" in reasons["val.jsonl#41"] and "2 [MASK] tokens" in reasons["val.jsonl#42"]
    assert "2 tokens" in reasons["val.jsonl#43"] and "not in the vocabulary" in reasons["val.jsonl#44"]
    out = run_cli("sql", "--db", db, "--format", "json", "SELECT key, text, label_name FROM samples ORDER BY sample_id")
    stored = json.loads(out.stdout)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert [(r["text"], r["label_name"]) for r in stored] == [(r["text"], r["label"]) for r in rows[:40]]
    info = run_cli("info", "--db", db).output
    assert "text" in info and "masked-lm" in info


def test_text_database_ingest_is_idempotent(text_db, tmp_path):
    db, _ = text_db
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    more = tmp_path / "more.csv"
    more.write_text("text,label\nshe lives in [MASK] .,rome\nhe works as a [MASK] .,Nurse\n")
    assert "new: 2 samples added" in run_cli("ingest", "--db", copy, "--data", f"csv:{more}", "--split", "new", "-q").output
    assert "0 samples added, 2 already there" in run_cli("ingest", "--db", copy, "--data", f"csv:{more}", "--split", "new", "-q").output
    out = json.loads(run_cli("sql", "--db", copy, "--format", "json", "SELECT label_name FROM samples WHERE split = 'new'").stdout)
    assert [r["label_name"] for r in out] == ["rome", "nurse"]
    run_cli("verify", "--db", copy)


def test_text_database_queries_show_sentences(text_db):
    db, data = text_db
    sentences = {json.loads(line)["text"] for line in data.read_text().splitlines()}
    out = json.loads(run_cli("neighbors", "--db", db, "--id", 0, "-k", 5, "--format", "json").stdout)
    assert out["query"]["text"] in sentences and len(out["neighbors"]) == 5
    assert all(n["text"] in sentences for n in out["neighbors"])
    table = run_cli("neighbors", "--db", db, "--id", 0, "-k", 3).output
    assert f'sample 0 "{out["query"]["text"]}"' in table
    m = json.loads(run_cli("mistakes", "--db", db, "-k", 3, "--format", "json").stdout)
    val = m["splits"]["val"]
    assert val["samples"] == 40 and val["correct"] + val["incorrect"] == 40
    assert 0 <= val["saliency"]["correct_neighbors_of_incorrect"]["mean"] <= 1
    c = json.loads(run_cli("clusters", "--db", db, "--n-clusters", 2, "--no-store", "--format", "json").stdout)
    assert all(e["text"] in sentences for g in c["clusters"] for e in g["exemplars"])
    bad = run_cli("neighbors", "--db", db, "--image", __file__, "--label", 0, expect=None)
    assert bad.exit_code != 0 and "text database" in bad.output and "Traceback" not in bad.output


def test_text_database_explain_gives_token_saliency(text_db, tmp_path):
    db, _ = text_db
    out = run_cli("explain", "--db", db, "--id", 3, "--out", tmp_path / "t.png", "--format", "json")
    doc = json.loads(out.stdout)
    tokens = [t["token"] for t in doc["tokens"]]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[MASK]" in tokens
    assert all(np.isfinite(t["score"]) and t["score"] >= 0 for t in doc["tokens"]) and max(t["score"] for t in doc["tokens"]) > 0
    assert (tmp_path / "t.png").stat().st_size > 1000 and len(doc["boosted_units"]) == 10
    table = run_cli("explain", "--db", db, "--id", 3, "--out", tmp_path / "u.png").output
    assert "token saliency" in table and "most salient tokens" in table
    for args in (["explain", "--errors", "--out", tmp_path / "g"], ["check", "--what", "masking", "--id", 3]):
        bad = run_cli(*args[:1], "--db", db, *args[1:], expect=None)
        assert bad.exit_code != 0 and "text database" in bad.output and "Traceback" not in bad.output


def test_modality_mismatches_are_refused(text_models, tmp_path, trained_weights):
    data = _write_jsonl(tmp_path / "t.jsonl", [{"text": "anna lives in [MASK] .", "label": "paris"}])
    bad = run_cli("index", "--db", tmp_path / "a", "--model", "python:saliencydb.data.zoo:small_cnn", "--weights", trained_weights,
                  "--data", f"jsonl:{data}", expect=None)
    assert bad.exit_code != 0 and "reads image but data" in bad.output and "holds text" in bad.output
    bad = run_cli("index", "--db", tmp_path / "b", "--model", f"hf:{text_models['bert', 'masked-lm']}",
                  "--data", "builtin:sklearn-digits", "--random-weights", expect=None)
    assert bad.exit_code != 0 and "reads text but data" in bad.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    bad = run_cli("index", "--db", tmp_path / "c", "--model", f"hf:{text_models['bert', 'masked-lm']}", "--transform", "mnist",
                  "--data", f"jsonl:{data}", "--random-weights", expect=None)
    assert bad.exit_code != 0 and "drop --transform" in bad.output


def test_sequence_classification_database(text_models, tmp_path):
    rows = [{"text": f"{w} lives in {p} .", "label": "positive" if p in ("paris", "rome") else "negative"}
            for w in ("anna", "tom", "he", "she") for p in ("paris", "london", "berlin", "rome")]
    data = _write_jsonl(tmp_path / "cls.jsonl", rows)
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"hf:{text_models['distilbert', 'sequence-classification']}",
            "--data", f"jsonl:{data}", "--random-weights", "-q")
    out = json.loads(run_cli("sql", "--db", db, "--format", "json",
                             "SELECT label_name, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1").output)
    assert out == [{"label_name": "negative", "n": 8}, {"label_name": "positive", "n": 8}]
    numbers = tmp_path / "n.csv"
    numbers.write_text("text,label\nanna lives in rome .,1\ntom lives in london .,0\nshe lives in paris .,7\n")
    res = run_cli("ingest", "--db", db, "--data", f"csv:{numbers}", "--split", "n", "-q", expect=2)
    assert "2 samples added" in res.output and "label '7'" in res.output
    got = json.loads(run_cli("sql", "--db", db, "--format", "json", "SELECT label_name FROM samples WHERE split = 'n' ORDER BY sample_id").stdout)
    assert [r["label_name"] for r in got] == ["positive", "negative"]  # whole numbers are class indices
    run_cli("explain", "--db", db, "--id", 0, "--out", tmp_path / "e.png")


def test_hugging_face_text_dataset(text_models, tmp_path):
    """A saved ``datasets`` dataset of sentences: its text column found by name (or given), target words as labels."""
    import datasets

    rows = _cloze(12, 3) + [{"text": "no mask here .", "label": "paris"}]
    ds = datasets.Dataset.from_dict({"sentence": [r["text"] for r in rows], "target": [r["label"] for r in rows]})
    ds.save_to_disk(tmp_path / "ds")
    db = tmp_path / "db"
    out = run_cli("index", "--db", db, "--model", f"hf:{text_models['bert', 'masked-lm']}", "--data", f"hf:{tmp_path / 'ds'}",
                  "--label-column", "target", "--random-weights", "-q", expect=2)
    assert "12 samples added" in out.output and "1 failed" in out.output
    got = json.loads(run_cli("sql", "--db", db, "--format", "json", "SELECT text, label_name FROM samples ORDER BY sample_id").stdout)
    assert [(g["text"], g["label_name"]) for g in got] == [(r["text"], r["label"]) for r in rows[:12]]
    bad = run_cli("index", "--db", tmp_path / "x", "--model", f"hf:{text_models['bert', 'masked-lm']}", "--data",
                  f"hf:{tmp_path / 'ds'}", "--label-column", "target", "--text-column", "target2", "--random-weights", expect=None)
    assert bad.exit_code != 0 and "no column 'target2'" in bad.output and "Traceback" not in bad.output


def test_new_sentence_query_equals_the_stored_sample(text_db):
    db, data = text_db
    first = json.loads(data.read_text().splitlines()[0])
    stored = json.loads(run_cli("neighbors", "--db", db, "--id", 0, "-k", 4, "--format", "json").stdout)
    new = json.loads(run_cli("neighbors", "--db", db, "--text", first["text"], "--label", first["label"].upper(), "-k", 5,
                             "--format", "json").stdout)
    assert new["query"]["text"] == first["text"] and new["query"]["label_name"] == first["label"]
    assert new["query"]["pred_name"] == stored["query"]["pred_name"]
    assert abs(new["query"]["loss"] - stored["query"]["loss"]) < 1e-5
    top = new["neighbors"][0]
    assert top["sample_id"] == 0 or abs(top["similarity"] - 1.0) < 1e-5  # the sentence itself (or an identical one)
    assert abs(new["neighbors"][0]["similarity"] - 1.0) < 1e-5
    for args, words in [(["--text", "anna lives in paris .", "--label", "paris"], "no [MASK]"),
                        (["--text", "anna lives in [MASK] .", "--label", "actors"], "2 tokens"),
                        (["--text", "anna lives in [MASK] ."], "--label WORD")]:
        bad = run_cli("neighbors", "--db", db, *args, expect=None)
        assert bad.exit_code != 0 and words in bad.output and "Traceback" not in bad.output


def test_text_database_refuses_images_and_keeps_working(text_db, tmp_path, digits_db):
    db, _ = text_db
    bad = run_cli("ingest", "--db", db, "--data", "builtin:sklearn-digits", "--split", "img", expect=None)
    assert bad.exit_code != 0 and "reads text but data" in bad.output
    bad = run_cli("neighbors", "--db", digits_db, "--text", "a [MASK] .", "--label", 1, expect=None)
    assert bad.exit_code != 0 and "image database" in bad.output
    assert "wrote" in run_cli("mask", "--db", db, "--id", 0, "--top-k", 3, "--out", tmp_path / "m.safetensors").output
    from safetensors.torch import load_file

    assert sum(int(t.sum()) for t in load_file(tmp_path / "m.safetensors").values()) > 0
    out = json.loads(run_cli("validate", "--db", db, "--split", "val", "--method", "prune", "--ks", 1, "--limit", 4,
                             "--random-draws", 2, "--format", "json").stdout)
    assert out["split"] == "val" if "split" in out else out


def test_text_model_without_tokenizer_is_refused(tmp_path):
    model = save_tiny_text_model(tmp_path / "m", WORDS)
    for f in tmp_path.joinpath("m").iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            f.unlink()
    data = _write_jsonl(tmp_path / "t.jsonl", [{"text": "anna lives in [MASK] .", "label": "paris"}])
    bad = run_cli("index", "--db", tmp_path / "db", "--model", f"hf:{tmp_path / 'm'}", "--data", f"jsonl:{data}",
                  "--random-weights", expect=None)
    assert bad.exit_code != 0 and "tokenizer" in bad.output and "Traceback" not in bad.output
    assert model is not None and not (tmp_path / "db").exists()


def test_fiftyone_export_refuses_text_databases(text_db):
    db, _ = text_db
    bad = run_cli("export", "fiftyone", "--db", db, "--name", "sentences", expect=None)
    assert bad.exit_code != 0 and "text database" in bad.output and "Traceback" not in bad.output


def test_web_app_shows_sentences(text_db):
    from starlette.testclient import TestClient

    from saliencydb.serve import create_app

    db, data = text_db
    first = json.loads(data.read_text().splitlines()[0])["text"]
    client = TestClient(create_app(db), raise_server_exceptions=False, base_url="http://localhost")
    page = client.get("/sample/0")
    assert page.status_code == 200 and f'id="sentence">{first}<' in page.text.replace("&#x27;", "'")
    assert 'class="sentence"' in client.get("/").text or client.get("/").status_code == 200
    assert client.get("/img/0.png").status_code == 400 and "sentence" in client.get("/img/0.png").text
    assert client.get("/api/samples/0").json()["sample"]["text"] == first


def test_channel_reduce_is_refused_on_a_text_database(text_db, tmp_path):
    db, _ = text_db
    r = run_cli("explain", "--db", db, "--id", 0, "--out", tmp_path / "t.png", "--channel-reduce", "abs-max", expect=1)
    assert r.output == ("Error: --channel-reduce applies to input-space (pixel) maps; a text database's token saliency "
                        "draws none: drop it\n")
    assert not (tmp_path / "t.png").exists()
    run_cli("explain", "--db", db, "--id", 0, "--out", tmp_path / "t.png", "-q")  # without it: token saliency
    assert (tmp_path / "t.png").is_file()
