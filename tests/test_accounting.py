import pytest
import torch
from torch import nn

import fxswap
from fxswap.models import wrn


def test_wrn_counts_both_conventions():
    r = fxswap.count(wrn(40, 2), (3, 32, 32))
    assert (r.params, r.params_bn) == (2243546, 2248954)


def test_macs_match_hand_count_for_small_net():
    # conv 3->8 3x3 pad1 on 8x8: 8*8*8*3*9 MACs; linear 8->4: 32 MACs
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.fc = nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    r = fxswap.count(Net(), (3, 8, 8))
    assert r.macs == 8 * 8 * 8 * 3 * 9 + 8 * 4
    assert r.blocks == ()


def test_per_block_rows_sum_and_compare_table():
    t = wrn(16, 2)
    s = fxswap.cheapen(t, "G(N/4)")
    c = fxswap.compare(t, s, (3, 32, 32))
    names = [b.name for b in c.teacher.blocks]
    assert names == [b.name for b in fxswap.find_blocks(t)] == [b.name for b in c.student.blocks]
    for b in c.student.blocks:
        assert b.params == sum(p.numel() for p in s.get_submodule(b.name).parameters())
    assert c.student.params < c.teacher.params and c.student.macs < c.teacher.macs
    text = c.table()
    assert "layer2.0" in text and "total" in text


def test_count_does_not_change_mode_or_weights():
    t = wrn(16, 1).train()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    fxswap.count(t, (3, 32, 32))
    assert t.training
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())


@pytest.mark.parametrize("model", ["wrn-16-1", None, torch.zeros(3)], ids=["name", "None", "tensor"])
def test_count_and_compare_of_a_non_module_are_clear_errors(model):
    with pytest.raises(fxswap.FxswapError, match=r"needs a torch\.nn\.Module"):
        fxswap.count(model, (3, 32, 32))
    with pytest.raises(fxswap.FxswapError, match=r"needs a torch\.nn\.Module"):
        fxswap.compare(model, wrn(10, 1), (3, 32, 32))
    with pytest.raises(fxswap.FxswapError, match=r"needs a torch\.nn\.Module"):
        fxswap.compare(wrn(10, 1), model, (3, 32, 32))


@pytest.mark.parametrize("shape", [None, 32, (), (3, 0, 32), (3, -1, 32), (3.0, 32, 32), (True, 32, 32)])
def test_count_of_a_bad_input_shape_is_a_clear_error(shape):
    with pytest.raises(fxswap.FxswapError, match=r"input_shape must be a tuple of positive ints"):
        fxswap.count(wrn(10, 1), shape)
