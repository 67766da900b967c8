from pathlib import Path

import pytest
import torch
import torchvision


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path_factory, monkeypatch):
    """No test may find (or download) pretrained weights: an empty torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A torchvision resnet18 with random weights and 3 classes, saved as a state dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def cnn_weights(tmp_path_factory) -> Path:
    """The small demo CNN with random weights, saved as a state dict."""
    from saliencydb.data.zoo import small_cnn

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "small-cnn.pt"
    torch.save(small_cnn().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory) -> Path:
    """The demo CNN, briefly trained on the built-in digits (so there are right and wrong answers)."""
    from saliencydb.demo import train_demo_model

    return train_demo_model(tmp_path_factory.mktemp("cache"), epochs=3)


@pytest.fixture(scope="session")
def digits_db(tmp_path_factory, trained_weights) -> Path:
    """A database of 600 val digits and 200 train digits; built once, never written by tests."""
    from saliencydb.indexer import Indexer

    db = tmp_path_factory.mktemp("digits") / "db"
    kw = dict(model="python:saliencydb.data.zoo:small_cnn", weights=str(trained_weights), workers=0, batch_size=100)
    Indexer(db, **kw).run("builtin:mnist5k:val", split="val", limit=600)
    Indexer(db, **kw).run("builtin:mnist5k:train", split="train", limit=200)
    return db


@pytest.fixture
def digits_copy(digits_db, tmp_path) -> Path:
    """A private copy of the digits database that a test may write to."""
    import shutil

    dst = tmp_path / "db"
    shutil.copytree(digits_db, dst)
    return dst
