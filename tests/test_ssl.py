"""Self-supervised training (SimCLR, ``activeft.models.ssl``) and the demo's backbone trained with it."""

import doctest
import os

import numpy as np
import pytest
import torch
import yaml

from activeft import demo
from activeft.errors import ParameterError
from activeft.models import ssl
from activeft.models.backbone import BackboneSpec

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_thread():
    """One torch thread: fast on a shared 2-core machine (no spinning at OpenMP barriers), and the
    thread count that determinism is tested for."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_train_learns_is_deterministic_and_saves_weights_the_embed_stage_loads(tmp_path):
    images, _ = demo.digit_images(32, limit=128)
    first = ssl.train(images, epochs=10, batch_size=32, lr=1e-2, seed=1)
    again = ssl.train(images, epochs=10, batch_size=32, lr=1e-2, seed=1)
    other = ssl.train(images, epochs=1, batch_size=32, seed=2)
    # NT-Xent falls as the views get matched (from about log(63) = 4.1)
    assert np.mean(first.losses[-3:]) < np.mean(first.losses[:3]) - 0.3, first.losses
    assert first.losses == again.losses
    assert all(torch.equal(v, again.state_dict[k]) for k, v in first.state_dict.items())
    assert not torch.equal(first.state_dict["conv1.0.weight"], other.state_dict["conv1.0.weight"])
    path = first.save(str(tmp_path / "w.safetensors"))
    spec = BackboneSpec("test_resnet", path, 32)
    net, record = spec.build()  # the embed stage's loader: every key must fit the num_classes=0 model
    assert record["pretrained"] == path and spec.data_config(net)["input_size"] == [3, 32, 32]
    assert all(torch.equal(v, first.state_dict[k]) for k, v in net.state_dict().items())
    rgb = ssl.train(np.repeat(images[:32, :, :, None], 3, axis=3), epochs=1, batch_size=16, image_size=16)
    assert len(rgb.losses) == 1 and rgb.image_size == 16


@pytest.mark.parametrize("images", [np.zeros((4, 28, 28), np.float32), np.zeros((4, 28, 28, 4), np.uint8),
                                    np.zeros((1, 28, 28), np.uint8), [[0, 1]]])
def test_bad_images_are_one_line_errors(images):
    with pytest.raises(ParameterError, match=r"^The 'images' parameter of ssl.train must be a uint8 numpy array "
                                             r"\(n, h, w\) or \(n, h, w, 3\) with n >= 2\. Got .* instead\.$"):
        ssl.train(images)
    with pytest.raises(ParameterError, match="The 'epochs' parameter of ssl.train must be an int >= 1"):
        ssl.train(np.zeros((4, 28, 28), np.uint8), epochs=0)


@pytest.mark.usefixtures("one_thread")
def test_train_docstring_example_runs():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(ssl.train, "train", globs={}):
        runner.run(test)
    assert runner.failures == 0


@pytest.mark.usefixtures("one_thread")
def test_demo_config_embeds_with_the_backbone_demo_data_writes(tmp_path):
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "demo.yaml")))["embed"]
    assert (cfg["model"], cfg["image_size"]) == (demo.MODEL, demo.IMAGE_SIZE)
    assert cfg["pretrained"] == os.path.join(os.path.dirname(cfg["source"]), demo.BACKBONE)
    encoder = demo.write_backbone(str(tmp_path), epochs=1, limit=128)
    net, _ = BackboneSpec(cfg["model"], str(tmp_path / demo.BACKBONE), cfg["image_size"]).build()
    assert encoder.model == demo.MODEL and net.num_features == 96
