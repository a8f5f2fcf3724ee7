"""``finetune.Generator``, the default generator and ``generator=`` across the library, as
PyTorch's ``torch.Generator``."""

from __future__ import annotations

import numpy as np
import pytest

import finetune as torch
from finetune import nn
from finetune.data import DataLoader, TensorDataset, random_split


def test_a_seeded_generator_repeats_its_stream_and_leaves_the_default_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    g = torch.Generator().manual_seed(42)
    first = torch.randn(5, generator=g)
    assert g.manual_seed(42) is g and g.initial_seed() == 42
    np.testing.assert_array_equal(torch.randn(5, generator=g).numpy(), first.numpy())
    assert torch.equal(torch.get_rng_state(), before)  # drawing from g did not move the default


def test_every_random_factory_takes_a_generator():
    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        t = torch.empty(3)
        return [
            torch.randn(2, 3, generator=g),
            torch.rand(4, generator=g),
            torch.randint(0, 10, (5,), generator=g),
            torch.randperm(6, generator=g),
            nn.init.normal_(torch.empty(3), generator=g),
            nn.init.uniform_(torch.empty(3), generator=g),
            t.normal_(generator=g).clone(),
            t.uniform_(-1, 1, generator=g).clone(),
        ]

    for a, b in zip(draws(7), draws(7)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(draws(7)[0].numpy(), draws(8)[0].numpy())


def test_state_round_trips_through_get_and_set_state():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert state.dtype == torch.uint8 and state.ndim == 1
    expected = torch.rand(4, generator=g)
    g.set_state(state)
    np.testing.assert_array_equal(torch.rand(4, generator=g).numpy(), expected.numpy())
    torch.manual_seed(1)
    saved = torch.get_rng_state()
    expected = torch.randn(3)
    torch.set_rng_state(saved)
    np.testing.assert_array_equal(torch.randn(3).numpy(), expected.numpy())
    with pytest.raises(RuntimeError, match="state returned by get_state"):
        g.set_state(torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_manual_seed_returns_the_default_generator_and_seed_reseeds():
    assert torch.manual_seed(5) is torch.default_generator
    assert torch.initial_seed() == 5
    a = torch.Generator()
    b = torch.Generator()
    assert a.initial_seed() != b.initial_seed()  # fresh generators start from OS entropy
    new = b.seed()
    assert b.initial_seed() == new
    assert torch.manual_seed(-1).initial_seed() == 2**64 - 1  # modulo 2**64, as in torch


def test_generators_are_cpu_only_and_type_checked():
    assert torch.Generator("cpu").device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CPU only"):
        torch.Generator("cuda")
    with pytest.raises(TypeError, match="finetune.Generator or a numpy Generator"):
        torch.randn(2, generator=123)
    # a numpy Generator is taken as it is
    assert torch.rand(2, generator=np.random.default_rng(0)).shape == (2,)


def test_random_split_and_data_loader_follow_a_generator():
    ds = TensorDataset(torch.arange(20))

    def split(seed):
        return [
            s.indices
            for s in random_split(ds, [0.75, 0.25], generator=torch.Generator().manual_seed(seed))
        ]

    assert split(0) == split(0) and split(0) != split(1)
    assert sorted(split(0)[0] + split(0)[1]) == list(range(20))

    def order(seed):
        loader = DataLoader(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [b[0].tolist() for b in loader]

    assert order(3) == order(3) and order(3) != order(4)
