"""Adam's fused step without ``Optimizer.step``'s per-call bookkeeping.

``torch.optim.Adam(fused=True).step()`` spends ~50 us per call on a small network before and
after its one fused kernel (~10 us): the profiler and hook wrappers, the grad-mode switch, the
regrouping of tensors by device and dtype, the state lookups. In a minibatch epoch of a small
network that is a fifth of every step. :func:`fast_stepping` returns the optimizer behind a
proxy whose ``step()`` makes the same two calls torch's ``_fused_adam`` makes
(``torch._foreach_add_`` on the step counters, then ``torch._fused_adam_`` or
``torch._fused_adamw_``) on the optimizer's own state tensors, so the parameters, the state
and ``optimizer.state_dict()`` are bit-identical to ``optimizer.step()``'s, and checkpoints,
schedulers (which change ``param_groups[0]["lr"]``) and resumes see the real optimizer.

The shortcut is taken only where it is exactly torch's step: ``torch.optim.Adam`` or
``AdamW`` themselves (not subclasses) with ``fused=True``, one parameter group of tensors on
one device with one dtype, a float learning rate, no gradient scaling, no hooks (the
optimizer's own or the global ones), not differentiable, not capturable, every gradient set,
the state already initialized (the first step goes through ``optimizer.step()``, which
creates it), and ``step`` not replaced on the instance (a torch scheduler's step tracker
excepted). Anything else calls ``optimizer.step()``.

Source: ``torch/optim/adam.py`` (``_fused_adam``), torch 2.13.
"""

from __future__ import annotations

__all__ = ["fast_stepping"]


class _FastStepping:
    """``optimizer`` with a cheaper ``step()``; every other attribute is the optimizer's."""

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def step(self, closure=None):
        optimizer = self._optimizer
        if closure is not None or not _still_plain(optimizer):
            return optimizer.step(closure)
        # looked up on every step: a checkpoint's load_state_dict replaces the state tensors
        group = optimizer.param_groups[0]
        params = group["params"]
        state = optimizer.state
        try:
            states = [state[p] for p in params]
            grads = [p.grad for p in params]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            steps = [s["step"] for s in states]
            max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else []
        except KeyError:  # before the first step created the state
            return optimizer.step()
        import torch

        lr = group["lr"]
        if any(g is None for g in grads) or isinstance(lr, torch.Tensor):
            return optimizer.step()
        beta1, beta2 = (float(b) for b in group["betas"])
        kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay", False) else torch._fused_adam_
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad=group["amsgrad"], lr=lr,
                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                   maximize=group["maximize"], grad_scale=None, found_inf=None)
        return None


def _still_plain(optimizer) -> bool:
    """Whether ``optimizer.step()`` would be exactly the two fused calls (see the module notes)."""
    from torch.optim import lr_scheduler
    from torch.optim import optimizer as base

    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    # ``step`` replaced on the instance: by a caller (who must see every step: keep theirs), or by
    # a torch scheduler's tracker, whose only effect is the flag set here
    replaced = optimizer.__dict__.get("step")
    if replaced is not None:
        if getattr(getattr(replaced, "__code__", None), "co_filename", None) != lr_scheduler.__file__:
            return False
        optimizer._opt_called = True
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False  # a GradScaler's unscaling
    return not (base._global_optimizer_pre_hooks or base._global_optimizer_post_hooks)


def fast_stepping(optimizer):
    """``optimizer`` itself, or a proxy of it whose ``step()`` skips the per-call bookkeeping
    (see the module notes for when); the proxy's results are bit-identical to ``step()``'s.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer

    Returns
    -------
    The optimizer, or a proxy forwarding every attribute but ``step`` to it.

    Examples
    --------
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = fast_stepping(torch.optim.Adam([w], lr=0.1, fused=True))
    >>> w.grad = torch.ones(3); opt.step(); opt.step()
    >>> [round(v, 4) for v in w.tolist()]
    [0.8, 0.8, 0.8]
    """
    import torch

    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
        return optimizer
    group = optimizer.param_groups[0]
    if not group.get("fused") or group.get("differentiable") or group.get("capturable"):
        return optimizer
    params = group["params"]
    if not params or len({(p.device, p.dtype) for p in params}) != 1 or any(p.is_complex() for p in params):
        return optimizer
    return _FastStepping(optimizer)
