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
