"""optim/fused_step.py: the proxy's step is bit-identical to torch's Optimizer.step()."""

import copy

import pytest
import torch

from gradfit.optim.fused_step import fast_stepping


def _net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def _train(net, opt, steps, scheduler=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 8, generator=g, dtype=net[0].weight.dtype), torch.randn(64, generator=g)
    for i in range(steps):
        opt.zero_grad()
        loss = ((net(x[i % 4 * 16:(i % 4 + 1) * 16]).squeeze(-1) - y[i % 4 * 16:(i % 4 + 1) * 16].to(x.dtype)) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


CASES = {
    "adam": (torch.optim.Adam, dict(lr=1e-2)),
    "adam weight decay": (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    "amsgrad": (torch.optim.Adam, dict(lr=1e-2, amsgrad=True, betas=(0.8, 0.95), eps=1e-6)),
    "maximize": (torch.optim.Adam, dict(lr=1e-3, maximize=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_identical_to_optimizer_step(case, dtype):
    cls, kw = CASES[case]
    a, b = _net(dtype=dtype), _net(dtype=dtype)
    opt_a, opt_b = cls(a.parameters(), fused=True, **kw), cls(b.parameters(), fused=True, **kw)
    fast = fast_stepping(opt_b)
    assert fast is not opt_b  # the shortcut applies
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=7, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=7, gamma=0.5)
    _train(a, opt_a, 40, sched_a)
    _train(b, fast, 40, sched_b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), (i, k)


def test_a_loaded_state_is_the_one_stepped():
    # a checkpoint's load_state_dict replaces the state tensors; the proxy must step the new ones
    a, b = _net(), _net()
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True), torch.optim.Adam(b.parameters(), lr=1e-2,
                                                                                          fused=True)
    fast = fast_stepping(opt_b)
    _train(a, opt_a, 5)
    _train(b, fast, 5)
    saved_net, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt_a.state_dict())
    _train(a, opt_a, 5, seed=2)
    b.load_state_dict(saved_net)
    opt_b.load_state_dict(saved_opt)
    _train(b, fast, 5, seed=2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_where_the_shortcut_does_not_apply_the_optimizer_itself_steps():
    net = _net()
    for opt in (torch.optim.Adam(net.parameters(), lr=1e-2),  # not fused
                torch.optim.SGD(net.parameters(), lr=1e-2),
                torch.optim.Adam([{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 1e-3}],
                                 fused=True)):
        assert fast_stepping(opt) is opt
    # a hook registered later is honoured: the proxy falls back to step()
    a, b = _net(), _net()
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True), torch.optim.Adam(b.parameters(), lr=1e-2,
                                                                                          fused=True)
    fast = fast_stepping(opt_b)
    calls = []
    opt_a.register_step_post_hook(lambda *args: calls.append("a"))
    opt_b.register_step_post_hook(lambda *args: calls.append("b"))
    _train(a, opt_a, 3)
    _train(b, fast, 3)
    assert calls.count("a") == calls.count("b") == 3


def test_a_step_replaced_on_the_instance_sees_every_step():
    a = _net()
    opt = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)  # torch's own tracker: still the shortcut
    fast = fast_stepping(opt)
    real, seen = opt.step, []

    def counting(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    _train(a, fast, 2, sched)
    assert seen == []
    opt.step = counting  # a caller's wrapper: every step must go through it
    _train(a, fast, 4, sched)
    assert len(seen) == 4
