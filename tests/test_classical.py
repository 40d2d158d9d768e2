"""The classical kind: TF-IDF (or static embeddings) + logistic regression or LightGBM. Labels
only; hyper-parameters chosen on dev; saved as JSON, safetensors and LightGBM text (never a
pickle); its fast features equal scikit-learn's; probabilities in the task's label order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_util import nli_rows

from protege.errors import ConfigError
from protege.formats import TaskConfig, make_examples, save_task
from protege.students import detect_kind, export_student, kind_from_config, load_student
from protege.students.classical.features import Tfidf, normalise

TRICKY = [
    "ÉCOLE  école\tZürich 🙂",  # case folding beyond ASCII, whitespace runs, an astral char
    "",
    "   ",
    "x",
    "İstanbul ß ﬁne",  # lowercase changes the length of some characters
    "a\n\nb   c\u2028d",
]


def examples(task: TaskConfig, split: str, n: int | None = None):
    return [e for r in nli_rows(split, n) for e in make_examples(task, r)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """protege:tfidf-logreg fitted on 120 NLI rows, chosen on 40 dev rows, saved."""
    task = TaskConfig(format="label")
    student = load_student("protege:tfidf-logreg", task)
    cands = student.fit(examples(task, "train", 120), examples(task, "dev", 40), seed=0)
    student.model = min(cands, key=lambda f: f.metrics["eval_loss"]).model
    out = tmp_path_factory.mktemp("classical") / "m"
    out.mkdir()
    student.save(student.model, out)
    save_task(task, out)
    return student, cands, out


def test_rationale_formats_and_summaries_are_refused_in_one_line():
    for fmt in ("label+rationale", "rationale+label", "multitask"):
        with pytest.raises(ConfigError, match="classical student cannot write") as e:
            load_student("protege:tfidf-logreg", TaskConfig(format=fmt))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="a summarization task needs generated text"):
        load_student("protege:tfidf-lgbm", TaskConfig(type="summarization"))


def test_a_hand_written_spec_with_a_mistake_is_one_line(tmp_path):
    cases = [
        ({"features": "bow", "model": "logreg"}, "features 'bow': expected tfidf or static"),
        ({"features": "tfidf", "model": "svm"}, "model 'svm': expected one of logreg, lgbm"),
        ({"features": "tfidf", "model": "logreg"}, "tfidf needs word_ngrams and char_ngrams"),
        ({"features": "static", "model": "logreg"}, "static features need a model2vec dir"),
    ]
    for config, message in cases:
        (tmp_path / "config.json").write_text(json.dumps({"protege_kind": "classical", **config}))
        with pytest.raises(ConfigError, match=message) as e:
            load_student(tmp_path, TaskConfig(format="label"))
        assert "\n" not in str(e.value)


def test_the_kind_comes_from_the_name_and_the_config(fitted):
    assert detect_kind("protege:tfidf-logreg")[1] == "classical"
    assert kind_from_config({"protege_kind": "classical"}) == "classical"
    assert detect_kind(fitted[2])[1] == "classical"  # a trained dir, from its config.json


def test_fast_features_equal_scikit_learns_transform():
    import scipy.sparse as sp

    texts = [normalise(e.source) for e in examples(TaskConfig(), "train", 60)]
    spec = {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "min_df": 1}
    features, train_matrix = Tfidf.fit(spec, texts + [normalise(t) for t in TRICKY])
    probe = [normalise(e.source) for e in examples(TaskConfig(), "test", 30)]
    probe += [normalise(t) for t in TRICKY] + ["ÿ unseen ⊕ chars", "ab" * 300]
    want = sp.hstack([b.vectorizer().transform(probe) for b in features.blocks]).toarray()
    got = features.matrix(probe).toarray()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-12
    assert (want != 0).sum() > 1000  # the vectors are not empty: the check can fail
    again = features.matrix(texts[:5]).toarray()
    assert np.abs(again - train_matrix[:5].toarray()).max() < 1e-12
    assert all(b.order is not None for b in features.blocks)  # the packed searches ran


def test_an_alphabet_too_large_to_pack_falls_back_to_scikit_learns_analyzer():
    """5-grams of 5,000 distinct characters do not fit 61 bits: the char block looks its
    n-grams up as scikit-learn does, with the same result."""
    import scipy.sparse as sp

    texts = ["".join(chr(0x4E00 + (i * 7 + j) % 5000) for j in range(9)) for i in range(800)]
    texts[0] += " ascii words"
    features, _ = Tfidf.fit({"word_ngrams": [1, 2], "char_ngrams": [2, 5]}, texts)
    assert features.blocks[1].order is None and features.blocks[0].order is not None
    only_chars, _ = Tfidf.fit({"word_ngrams": [1, 2], "char_ngrams": [2, 5]}, texts[1:])
    assert [b.name for b in only_chars.blocks] == ["char"]  # no ASCII word: no word block
    want = sp.hstack([b.vectorizer().transform(texts[:50]) for b in features.blocks]).toarray()
    assert np.abs(features.matrix(texts[:50]).toarray() - want).max() < 1e-12


def test_the_grid_is_scored_on_dev(fitted):
    student, cands, _ = fitted
    assert [c.metrics["params"] for c in cands] == student.config["grid"]
    task = student.task
    dev = examples(task, "dev", 40)
    y = [task.labels.index(r["label"]) for r in nli_rows("dev", 40)]
    for c in cands:  # the metrics are the candidate's own dev accuracy and log loss
        p = c.model.proba([e.source for e in dev])
        assert c.metrics["eval_accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
        loss = -np.mean(np.log(p[np.arange(len(y)), y]))
        assert c.metrics["eval_loss"] == pytest.approx(loss)
    losses = [c.metrics["eval_loss"] for c in cands]
    assert len(set(np.round(losses, 6))) == len(cands)  # the grid points really differ
    assert student.model.params == cands[int(np.argmin(losses))].metrics["params"]


def test_saved_without_pickle_and_loaded_back_alike(fitted):
    student, _, out = fitted
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "classifier.safetensors",
        "config.json",
        "features.json",
        "features.safetensors",
        "protege_task.json",
    ]
    for p in out.iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # no pickle protocol header anywhere
    config = json.loads((out / "config.json").read_text())
    assert config["protege_kind"] == "classical" and config["params"] == student.model.params
    again = load_student(out)
    sources = [e.source for e in examples(student.task, "test", 20)]
    np.testing.assert_allclose(again.label_probs(sources), student.label_probs(sources), atol=1e-12)
    assert again.n_params() == student.n_params() == config["num_parameters"] > 0


def test_probabilities_follow_the_task_labels_as_scikit_learn_gives_them(tmp_path):
    """Labels in another order, one of them never seen in training: each column is its
    label's probability (scikit-learn's own pipeline as the reference), the unseen one 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    task = TaskConfig(format="label", labels=["maybe", "contradiction", "entailment", "neutral"])
    train = examples(task, "train", 120)
    s = load_student("protege:tfidf-logreg", task)
    s.model = s.fit(train, examples(task, "dev", 30), seed=0)[1].model  # C = 4
    sources = [e.source for e in examples(task, "test", 30)]
    probs = np.array(s.label_probs(sources))
    vecs = [b.vectorizer().set_params(vocabulary=None) for b in s.model.features.blocks]
    ref = make_pipeline(make_union(*vecs), LogisticRegression(C=4.0, max_iter=2000))
    ref.fit([normalise(e.source) for e in train], [e.target.lower() for e in train])
    want = ref.predict_proba([normalise(t) for t in sources])
    for j, label in enumerate(ref.classes_):
        np.testing.assert_allclose(probs[:, task.labels.index(label)], want[:, j], atol=1e-6)
    assert (probs[:, 0] == 0).all() and probs.sum(1) == pytest.approx(1)
    assert s.generate(sources[:3], 4) == [task.labels[k].capitalize() for k in probs[:3].argmax(1)]
    s.save(s.model, tmp_path)
    with pytest.raises(ConfigError, match="the task's labels are"):
        load_student(tmp_path, TaskConfig(format="label"))


def test_two_labels_give_scikit_learns_binary_probabilities():
    from sklearn.linear_model import LogisticRegression

    task = TaskConfig(format="label", labels=["entailment", "contradiction"])
    rows = [r for r in nli_rows("train") if r["label"] in task.labels][:80]
    train = [e for r in rows for e in make_examples(task, r)]
    dev = [e for r in nli_rows("dev") if r["label"] in task.labels for e in make_examples(task, r)]
    s = load_student("protege:tfidf-logreg", task)
    s.model = s.fit(train, dev, seed=0)[0].model  # C = 1
    x = s.model.features.matrix([normalise(e.source) for e in train])
    y = [task.labels.index(e.target.lower()) for e in train]
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    test = s.model.features.matrix([normalise(e.source) for e in dev])
    np.testing.assert_allclose(
        s.label_probs([e.source for e in dev]), ref.predict_proba(test), atol=1e-6
    )


def test_trees_are_saved_in_lightgbms_own_text_format(tmp_path):
    task = TaskConfig(format="label")
    s = load_student("protege:tfidf-lgbm", task)
    cands = s.fit(examples(task, "train", 90), examples(task, "dev", 30), seed=0)
    assert [c.metrics["params"]["num_leaves"] for c in cands] == [7, 15, 15]
    s.model = cands[0].model
    s.save(s.model, tmp_path)
    assert (tmp_path / "classifier.lgbm.txt").read_text().startswith("tree\n")
    again = load_student(tmp_path, task)
    sources = [e.source for e in examples(task, "test", 10)]
    np.testing.assert_allclose(again.label_probs(sources), s.label_probs(sources), atol=1e-9)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_parameters"] > sum(len(b.idf) for b in s.model.features.blocks)


def test_static_embeddings_fit_save_and_load(tmp_path):
    """A small model2vec model (MiniLM's tokenizer, random 16-d vectors) behind a spec dir
    as `protege:static-logreg` writes one: fitted, copied into the trained dir, loaded."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from protege.students.builtins import minilm_dir
    from protege.students.classical.spec import SPECS

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 16))
    StaticModel(vectors.astype(np.float32), tok, normalize=True).save_pretrained(tmp_path / "e")
    spec = tmp_path / "spec"
    spec.mkdir()
    config = {"protege_kind": "classical", **SPECS["static-logreg"], "static": str(tmp_path / "e")}
    (spec / "config.json").write_text(json.dumps(config))
    task = TaskConfig(format="label")
    s = load_student(spec, task)
    cands = s.fit(examples(task, "train", 60), examples(task, "dev", 20), seed=0)
    s.model = cands[-1].model
    s.save(s.model, tmp_path / "m")
    assert (tmp_path / "m" / "static" / "model.safetensors").exists()
    assert "static" not in json.loads((tmp_path / "m" / "config.json").read_text())
    sources = [e.source for e in examples(task, "test", 8)]
    again = load_student(tmp_path / "m", task)
    np.testing.assert_allclose(again.label_probs(sources), s.label_probs(sources), atol=1e-9)
    assert again.n_params() == tok.get_vocab_size() * 16 + 16 * 3 + 3
    with pytest.raises(ConfigError, match="static-embedding students have no ONNX export"):
        export_student(tmp_path / "m")


@pytest.mark.slow
def test_static_logreg_distils_minilm_offline():
    """The real builtin: model2vec distilled from the packaged MiniLM (HF_HUB_OFFLINE=1)."""
    task = TaskConfig(format="label")
    s = load_student("protege:static-logreg", task)
    cands = s.fit(examples(task, "train", 120), examples(task, "dev", 40), seed=0)
    assert max(c.metrics["eval_accuracy"] for c in cands) > 0.6  # well above chance (1/3)
