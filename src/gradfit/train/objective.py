"""What the training loop minimises: model + data + loss, seen through the optimizer's leaves.

Two kinds:

* :class:`ScalarObjective` — models with named scalar parameters (formulas, built-ins,
  functions). One flat leaf vector ``theta``; with normalization the model's parameters are
  ``p = p0 + A @ theta`` (an affine change of coordinates, so reported parameters always mean
  what the formula says). Gradients by autograd or, for formulas, analytically.
* :class:`ModuleObjective` — torch modules; the leaves are the module's own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorData", "ScalarObjective", "ModuleObjective", "ANCHOR_LIMIT"]

#: how far (max-abs, in whitened units) ``theta`` may wander before the origin moves to it
ANCHOR_LIMIT = 1.0


@dataclass
class TensorData:
    """Named input tensors, target and optional weights on the fit's device and dtype."""

    inputs: dict
    y: object
    weights: object = None

    @property
    def n(self) -> int:
        return self.y.shape[0]

    def take(self, idx) -> "TensorData":
        """The rows ``idx`` (a 1-D index tensor); ``index_select`` is ``v[idx]`` at a third of
        the overhead (a minibatch step's gather: 5 us instead of 13 us)."""
        import torch

        def rows(v):
            return torch.index_select(v, 0, idx)

        return TensorData({k: rows(v) for k, v in self.inputs.items()}, rows(self.y),
                          None if self.weights is None else rows(self.weights))

    def slice(self, start: int, stop: int) -> "TensorData":
        """Rows ``start:stop`` as views."""
        return TensorData({k: v[start:stop] for k, v in self.inputs.items()}, self.y[start:stop],
                          None if self.weights is None else self.weights[start:stop])

    def row_bytes(self) -> int:
        """Bytes of one row over the inputs, target and weights."""
        tensors = [*self.inputs.values(), self.y] + ([] if self.weights is None else [self.weights])
        return sum(t[:1].numel() * t.element_size() for t in tensors)

    @staticmethod
    def from_arrays(arrays, dtype, device) -> "TensorData":
        import torch

        def t(a):
            return torch.as_tensor(a, dtype=dtype, device=device)

        return TensorData({k: t(v) for k, v in arrays.inputs.items()}, t(arrays.y),
                          None if arrays.weights is None else t(arrays.weights))


class _Objective:
    train: TensorData
    val: TensorData | None
    leaves: list
    #: regularization (train/regularize.py); None keeps the hot path untouched
    penalty = None
    noise = None
    noise_generator = None
    #: under torchrun, ``sync(value, data) -> value`` averages the gradients over the ranks
    #: before each optimizer step and returns the global batch loss (train/distributed.py)
    sync = None

    def extra_state(self) -> dict:
        """Tensors besides the leaves that a checkpoint must keep (none by default)."""
        return {}

    def load_extra_state(self, tensors: dict) -> None:
        pass

    def regularize(self, penalty=None, noise=None, seed: int = 0) -> None:
        import torch

        self.penalty = penalty if penalty is not None and penalty.active else None
        self.noise = noise if noise is not None and noise.sigma > 0 else None
        if self.noise is not None:
            self.noise_generator = torch.Generator(device=self.train.y.device).manual_seed(seed + 1)

    def augment(self, data: TensorData) -> TensorData:
        """Training data with fresh input noise (unchanged without input_noise)."""
        if self.noise is None:
            return data
        from .regularize import add_input_noise

        return TensorData(add_input_noise(self.noise, data.inputs, self.noise_generator), data.y, data.weights)

    def penalty_term(self):
        from .regularize import penalty_value

        return penalty_value(self.penalty, self.named_params())

    def divergence_state(self, pending: bool = False) -> list:
        """The parameters divergence would fall back to (the start of the current epoch); with
        ``pending``, the copy taken at the start of the epoch in progress (a mid-epoch checkpoint)."""
        good = self._pending if pending else self._good
        return list(good) if isinstance(good, list) else [good]

    def load_divergence_state(self, tensors: list, pending: bool = False) -> None:
        if not tensors:
            return
        target = self._pending if pending else self._good
        if isinstance(target, list):
            for g, t in zip(target, tensors):
                g.copy_(t)
        else:
            target.copy_(tensors[0])

    def snapshot(self):
        """A copy of the trainable values (for early stopping's best epoch)."""
        return [t.detach().clone() for t in self.leaves]

    def restore(self, snap) -> None:
        import torch

        with torch.no_grad():
            for t, v in zip(self.leaves, snap):
                t.copy_(v)

    def penalty_now(self) -> float:
        import torch

        with torch.no_grad():
            return float(self.penalty_term())

    def _loss_value(self, data: TensorData, params):
        return self.loss(self.model.forward(data.inputs, params), data.y, data.weights)

    def evaluate(self, data: TensorData) -> float:
        """Loss on ``data`` at the current parameters, without building a graph."""
        import torch

        with torch.no_grad():
            return float(self._loss_value(data, self.current_params()))

    def unscale(self, value):
        """Objective value -> loss in user units (they differ only for scaled module losses)."""
        return value * getattr(self, "loss_scale", 1.0)

    def closure(self, optimizer):
        """The closure L-BFGS needs: recompute loss and gradients."""

        def closure():
            optimizer.zero_grad()
            value = self.objective(self.train)
            value.backward()
            return value

        return closure


class ScalarObjective(_Objective):
    """Models with named scalar parameters. The leaf ``theta`` holds the free parameters in
    the space's internal coordinates (``z = z0 + A @ theta`` when preconditioned), or, with
    ``bounds`` (normalize with bounds), in the coordinates of those scaled transforms.

    With a preconditioner, ``theta``, ``z0`` and ``A`` are float64 whatever ``dtype`` is, and
    the parameters are rounded to ``dtype`` only when the model is evaluated. ``A`` mixes
    scales (1/std(x) next to 1 for ``w*x + b`` with x ~ 1e7), so ``z0 + A @ theta`` in float32
    would cancel away the small parameter (w = 1 - 0.999998 keeps one digit); in float64 it
    keeps every digit, and the model still runs in the working dtype.
    """

    def __init__(self, model, train: TensorData, val: TensorData | None, loss, space, *, dtype, device,
                 precondition=None, gradient: str = "autograd", bounds=None):
        import torch

        self.model, self.train, self.val, self.loss = model, train, val, loss
        self.space = space
        #: scaled bound transforms (:class:`gradfit.optim.bounded.ScaledBounds`) replacing the
        #: space's own when normalizing a bounded space; None keeps the space's transforms
        self.bounds = bounds
        self.names = tuple(model.param_names)
        self.dtype = dtype
        # the preconditioned affine map runs in float64 (see the class notes)
        self.param_dtype = torch.float64 if precondition is not None else dtype
        if bounds is None:
            self.z0 = space.internal_start(self.param_dtype, device)
        else:
            self.z0 = torch.tensor(bounds.start(), dtype=self.param_dtype, device=device)
        self.A = None if precondition is None else precondition.to(dtype=self.param_dtype, device=device)
        self.plain = space.is_plain and tuple(space.free) == self.names
        start = torch.zeros_like(self.z0) if precondition is not None else self.z0.clone()
        self.theta = start.requires_grad_(True)
        self.leaves = [self.theta]
        self.gradient = gradient
        self._jt_cache = None
        #: re-anchor the preconditioned coordinates each epoch (off for optimizers that keep
        #: absolute positions in their state, e.g. ASGD's running average)
        self.anchoring = True
        self._theta_view = self.theta.detach()  # shares storage: follows in-place updates
        self._good = self._theta_view.clone()
        self._pending = self._theta_view.clone()

    def internal(self, theta=None):
        theta = self.theta if theta is None else theta
        return theta if self.A is None else self.z0 + self.A @ theta

    def _full(self, z):
        """Every parameter (P,) from the coordinates ``z`` (F,), differentiable."""
        if self.bounds is None:
            return self.space.full(z)
        return self.space.full(self.bounds.to_params(z), internal=False)

    def current_params(self):
        z = self.internal()
        if self.plain:
            if self.param_dtype != self.dtype:
                z = z.to(self.dtype)
            return dict(zip(self.names, z.unbind()))
        params = dict(zip(self.names, self._full(z).unbind(-1)))
        if self.param_dtype != self.dtype:
            params = {k: v.to(self.dtype) for k, v in params.items()}
        return params

    def param_values(self) -> dict[str, float]:
        import torch

        with torch.no_grad():
            return {k: float(v) for k, v in self.current_params().items()}

    def objective(self, data: TensorData):
        value = self._loss_value(data, self.current_params())
        return value if self.penalty is None else value + self.penalty_term()

    def named_params(self):
        return self.current_params()

    def step(self, optimizer, data: TensorData):
        """One optimizer step on ``data``; returns the loss before the step."""
        import torch

        data = self.augment(data)
        if self.gradient == "analytic":
            value = self.analytic_gradient(data)
            if self.penalty is not None:
                (extra,) = torch.autograd.grad(self.penalty_term(), self.theta)
                self.theta.grad = self.theta.grad + extra
        else:
            value = self._loss_value(data, self.current_params())
            total = value if self.penalty is None else value + self.penalty_term()
            # autograd.grad skips the AccumulateGrad bookkeeping of backward() + zero_grad()
            (self.theta.grad,) = torch.autograd.grad(total, self.theta)
        if self.sync is not None:
            value = self.sync(value, data)
        optimizer.step()
        return value

    def analytic_gradient(self, data: TensorData):
        """The loss on ``data`` at the current parameters, and its gradient without autograd
        through the model: the formula's symbolic partials
        (:func:`gradfit.models.jacobian.partials`) times the loss's derivative with respect to
        the prediction, then through the preconditioner, bounds, fixed and tied parameters.

        Sets ``theta.grad`` (shape (F,), the optimizer's leaf) and returns the loss (0-d
        tensor), without the regularization penalty. Needs a formula model.

        >>> import torch
        >>> from gradfit.losses import resolve_loss
        >>> from gradfit.models import resolve_model
        >>> from gradfit.models.parameters import ParameterSpace
        >>> m = resolve_model("w*x + b").bind(["x"])
        >>> data = TensorData({"x": torch.tensor([1.0, 2.0])}, torch.tensor([0.0, 0.0]))
        >>> space = ParameterSpace(m.param_names, {"w": 1.0, "b": 0.0})
        >>> obj = ScalarObjective(m, data, None, resolve_loss("mse"), space, dtype=torch.float32,
        ...                       device=torch.device("cpu"), gradient="analytic")
        >>> float(obj.analytic_gradient(data)), obj.theta.grad.tolist()
        (2.5, [5.0, 3.0])
        """
        import torch

        with torch.no_grad():
            params = self.current_params()
            pred = self.model.forward(data.inputs, params)
            loss = self.loss
            factor = 1.0
            if loss.value_and_grad is not None and pred.dim() == 1:
                value, dloss, factor = loss.value_and_grad(pred, data.y, data.weights)
            elif loss.grad_pred is not None:
                value, dloss = loss(pred, data.y, data.weights), loss.grad_pred(pred, data.y, data.weights)
            else:
                with torch.enable_grad():
                    leaf = pred.detach().requires_grad_(True)
                    value = loss(leaf, data.y, data.weights)
                    (dloss,) = torch.autograd.grad(value, leaf)
            grad = torch.mv(self._jacobian_t(data, params), dloss)
            if factor != 1.0:
                grad.mul_(factor)
        if grad.dtype != self.param_dtype:
            grad = grad.to(self.param_dtype)
        if self.plain:
            self.theta.grad = grad if self.A is None else self.A.T @ grad
        else:  # chain rule through bounds transforms, fixed and tied parameters
            with torch.enable_grad():
                leaf = self.theta.detach().requires_grad_(True)
                full = self._full(self.internal(leaf))
                (self.theta.grad,) = torch.autograd.grad(full, leaf, grad)
        return value

    def _jacobian_t(self, data: TensorData, params):
        """(P, n) partials; cached for the training set when they do not depend on the
        parameters (models linear in their parameters), since then they never change."""
        if data is self.train and self._jt_cache is not None:
            return self._jt_cache  # before any import statement: this runs every epoch
        import torch

        from ..models.jacobian import partials

        jt = torch.stack(partials(self.model, data.inputs, params))
        if data is self.train and self.model.linear_in_params:
            self._jt_cache = jt
        return jt

    def remember(self) -> None:
        """Copy the parameters at the start of an epoch; :meth:`accept` keeps them as good.
        With a preconditioner, first re-anchor (see :meth:`anchor`)."""
        if self.A is not None and self.anchoring:
            self.anchor()
            if self.bounds is not None:
                self.unfold()
        self._pending.copy_(self._theta_view)

    def anchor(self, limit: float = ANCHOR_LIMIT) -> None:
        """Move the origin of the preconditioned coordinates to the current point once
        ``theta`` has wandered more than ``limit`` from it: ``z0 += A @ theta``, ``theta = 0``.

        Why: ``z = z0 + A @ theta`` adds terms of size ``|A| |theta|``; from a start far from
        the optimum (w = 1 for x ~ 1e9 puts the first loss at 1e18) ``theta`` reaches ~1e9,
        those terms ~1e15, and float64 keeps b = -2e6 only to +-0.2. Anchored each epoch,
        ``theta`` stays small and every digit survives. A translation of ``theta`` changes
        nothing the optimizers keep (moments, momentum, L-BFGS's differences); the copies
        kept for divergence move with it, and early stopping's snapshots hold ``z0`` too.
        """
        import torch

        t = self._theta_view
        if not bool(torch.isfinite(t).all()) or float(t.abs().max()) <= limit:
            return
        with torch.no_grad():
            shift = t.clone()
            self.z0 = self.z0 + self.A @ shift
            self._good.sub_(shift)
            self.theta.zero_()

    def unfold(self) -> None:
        """With scaled bound transforms (:class:`gradfit.optim.bounded.ScaledBounds`): once a
        step has crossed a bound's fold, move the origin to the same parameters on the
        principal branch (``z0 = canonical(z)``, ``theta = 0``), where the whitening's signs
        hold. The parameters, and so the loss, do not change; the copy kept for divergence
        moves with the origin."""
        import torch

        t = self._theta_view
        with torch.no_grad():
            z = self.z0 + self.A @ t
            if not bool(torch.isfinite(z).all()):
                return
            zc = self.bounds.canonical(z)
            if bool(torch.equal(zc, z)):
                return
            good = self.z0 + self.A @ self._good
            self.z0 = zc
            self._good.copy_(torch.linalg.solve(self.A, good - zc))
            self.theta.zero_()

    def snapshot(self):
        """A copy of the trainable values (for early stopping's best epoch); with a
        preconditioner also the origin ``z0`` that ``theta`` is relative to."""
        snap = [self.theta.detach().clone()]
        return snap if self.A is None else snap + [self.z0.clone()]

    def restore(self, snap) -> None:
        import torch

        with torch.no_grad():
            self.theta.copy_(snap[0])
            if self.A is not None and len(snap) > 1:
                self.z0 = snap[1].clone()

    def extra_state(self) -> dict:
        """Tensors besides the leaves that a checkpoint must keep: the anchor ``z0``."""
        return {} if self.A is None else {"z0": self.z0}

    def load_extra_state(self, tensors: dict) -> None:
        if self.A is not None and "z0" in tensors:
            self.z0 = tensors["z0"].to(dtype=self.z0.dtype, device=self.z0.device)

    def accept(self) -> None:
        """The epoch's loss was finite: the parameters it started from are good."""
        self._good, self._pending = self._pending, self._good

    def restore_good(self) -> None:
        import torch

        with torch.no_grad():
            self.theta.copy_(self._good)


class ModuleObjective(_Objective):
    """Train a ModuleModel. With ``loss_scale`` the optimizer sees loss/loss_scale, which
    makes step sizes independent of the target's units; reported losses stay in user units."""

    def __init__(self, model, train: TensorData, val: TensorData | None, loss, *, loss_scale: float = 1.0):
        self.model, self.train, self.val, self.loss = model, train, val, loss
        self.loss_scale = float(loss_scale)
        self.leaves = [p for p in model.module.parameters() if p.requires_grad]
        #: the explicit forward/backward of a plain MLP under MSE (models/neural.py), else None
        self.kernel = _mlp_kernel(model, loss)
        self._good = [p.detach().clone() for p in self.leaves]
        self._pending = [p.detach().clone() for p in self.leaves]

    def current_params(self):
        return None  # the module uses its own parameters

    def param_values(self) -> dict[str, float]:
        return {}

    def named_params(self):
        return dict(self.model.module.named_parameters())

    def objective(self, data: TensorData):
        value = self._loss_value(data, None)
        if self.penalty is not None:
            value = value + self.penalty_term()
        return value if self.loss_scale == 1.0 else value / self.loss_scale

    def step(self, optimizer, data: TensorData):
        data = self.augment(data)
        value = self._explicit_step(data) if self.kernel is not None and self.penalty is None else None
        if value is None:
            value = self._loss_value(data, None)
            total = value if self.penalty is None else value + self.penalty_term()
            optimizer.zero_grad()
            (total if self.loss_scale == 1.0 else total / self.loss_scale).backward()
        if self.sync is not None:
            value = self.sync(value, data)
        optimizer.step()
        return value

    def _explicit_step(self, data: TensorData):
        """The MSE on ``data`` with the parameters' gradients set by :attr:`kernel`, or None
        (nothing set) when the prediction's shape or the weights do not fit it."""
        model = self.model
        out = self.kernel.forward(model.features(data.inputs))
        pred = model.outputs(out)
        if pred.shape != data.y.shape or (data.weights is not None and pred.dim() != 1):
            self.kernel = None  # the same on every batch: autograd from now on
            return None
        value, g, factor = self.loss.value_and_grad(pred, data.y, data.weights)  # d mse / d pred = factor * g
        g = g.mul_(factor / self.loss_scale)  # a fresh tensor: pred - y (times the weights)
        if model.y_std is not None:
            g = g.mul_(model.y_std)
        self.kernel.backward(g.reshape(out.shape))
        return value

    def remember(self) -> None:
        for g, p in zip(self._pending, self.leaves):
            g.copy_(p.detach())

    def accept(self) -> None:
        self._good, self._pending = self._pending, self._good

    def restore_good(self) -> None:
        import torch

        with torch.no_grad():
            for p, g in zip(self.leaves, self._good):
                p.copy_(g)


def _mlp_kernel(model, loss):
    """:class:`gradfit.models.neural.MLPGradient` for a plain MLP (:func:`~gradfit.models.neural.mlp_layers`)
    trained with the built-in MSE, else None."""
    from ..losses import LOSSES
    from ..models.neural import MLPGradient, mlp_layers

    layers = mlp_layers(model.module) if loss is LOSSES["mse"] else None
    return None if layers is None else MLPGradient(*layers)
