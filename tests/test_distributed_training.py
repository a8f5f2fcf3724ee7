"""Data-parallel fine-tuning on Ray actors: after k steps the weights equal one process with the
same global batch, a killed replica is survived, and resuming from the driver's checkpoint works."""

import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from finetune import nn, optim  # noqa: E402
from finetune.data import DataLoader, ImageFolder, load_image  # noqa: E402
from finetune.data.demo import make_shapes  # noqa: E402
from finetune.errors import TrainingError  # noqa: E402
from finetune.train import fit  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_distributed_features import DieOnce  # noqa: E402
from test_feature_cache import eval_transform, frozen_net  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules["test_distributed_features"])
    ray.init(
        address="local",  # a new instance, even if `ray start` left one on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), n_per_class=4, size=32, seed=2)


def trainable_net():
    """The recipe's model with its convolution unfrozen: BatchNorm stays frozen (eval)."""
    model = frozen_net()
    model.conv.weight.requires_grad = True
    model.conv.bias.requires_grad = True
    return model


def train(root, epochs=1, image_loader=load_image, lines=None, **kwargs):
    model = trainable_net()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    data = ImageFolder(root / "train", eval_transform(32), loader=image_loader)
    history = fit(
        model,
        DataLoader(data, batch_size=6, shuffle=True, seed=5),
        opt,
        epochs,
        progress=False,
        log=lines.append if lines is not None else None,
        **kwargs,
    )
    return model, history


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_data_parallel_steps_equal_single_process_steps(images):
    local, local_history = train(images)
    start = trainable_net()
    lines = []
    remote, remote_history = train(images, lines=lines, ray_workers=2)
    assert any(line.startswith("training data-parallel on 2 Ray actors") for line in lines)
    assert any(
        line.startswith("epoch 1: 16 images on 2 Ray actors") and "images/s" in line
        for line in lines
    )
    assert not np.allclose(remote.conv.weight.detach().numpy(), start.conv.weight.detach().numpy())
    assert_same_weights(remote, local)  # 3 steps of 6 images, 2 replicas of 3
    np.testing.assert_allclose(
        remote_history[0]["train_loss"], local_history[0]["train_loss"], rtol=1e-5
    )
    assert remote_history[0]["train_acc"] == local_history[0]["train_acc"]


def test_a_killed_replica_is_replaced_and_its_step_redone(images, tmp_path):
    local, _ = train(images)
    victim = ImageFolder(images / "train").samples[9][0]
    lines = []
    remote, _ = train(
        images, image_loader=DieOnce(victim, str(tmp_path / "died")), lines=lines, ray_workers=2
    )
    assert (tmp_path / "died").exists()
    assert any("a Ray worker died during epoch 1" in line for line in lines)
    assert_same_weights(remote, local)


def test_resuming_from_the_drivers_checkpoint(images, tmp_path):
    local, _ = train(images, epochs=2)
    train(images, epochs=1, checkpoint_dir=tmp_path, ray_workers=2)
    resumed, history = train(images, epochs=2, checkpoint_dir=tmp_path, resume=True, ray_workers=2)
    assert [r["epoch"] for r in history] == [1, 2]
    assert_same_weights(resumed, local)


def test_dropout_cannot_be_replicated_and_says_so(images):
    model = trainable_net()
    model.drop = nn.Dropout(0.5)
    with pytest.raises(TrainingError, match="cannot replicate drop"):
        fit(
            model,
            DataLoader(ImageFolder(images / "train", eval_transform(32)), batch_size=6),
            optim.SGD(model.parameters(), lr=0.1),
            1,
            progress=False,
            log=None,
            ray_workers=2,
        )


def test_random_augmentation_is_drawn_as_in_one_process(images):
    """A frozen backbone with random crops cannot use cached features: the actors decode,
    augment and run it for their slices, each image cropped as the local loader crops it."""
    from finetune.data import transforms as T

    augment = T.Compose(
        [T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize()]
    )

    def run(**kwargs):
        model = frozen_net()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        data = ImageFolder(images / "train", augment)
        loader = DataLoader(data, batch_size=8, shuffle=True, seed=6)
        fit(model, loader, opt, 1, progress=False, log=None, **kwargs)
        return model

    assert_same_weights(run(cluster="local", ray_workers=2), run())
