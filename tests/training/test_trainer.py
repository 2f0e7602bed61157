"""The training loop: only A and B learn, deterministically, with the cached input layers exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import MLP
from app.lora import base_layer, unmerged_linear, wrap_layers
from app.training.trainer import Cancelled, Diverged, StepReport, TrainConfig, evaluate, train_lora
from support.helpers import forward


def make_model(activation: str | None = "relu", bias: bool = True) -> MLP:
    torch.manual_seed(0)
    config = ModelConfig(architecture="mlp", sizes=[12, 10, 6], bias=bias, activation=activation)
    model = MLP(config).requires_grad_(False).eval()
    wrap_layers(model)  # as the loader leaves it
    return model


def data(rows: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 12, generator=gen)
    return x, torch.randn(rows, 6, generator=gen)


def config(**kw) -> TrainConfig:
    base = dict(
        rank=2, alpha=4.0, target_modules=("layer1", "layer2"), epochs=3, batch_size=16,
        learning_rate=1e-2, seed=7,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_only_a_and_b_change_and_the_base_is_untouched() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    adapter = train_lora(model, config(), x, y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert torch.count_nonzero(adapter.modules["layer2"].lora_B) > 0
    assert not adapter.modules["layer1"].lora_A.requires_grad


def test_same_seed_and_data_give_the_same_adapter() -> None:
    x, y = data()
    first = train_lora(make_model(), config(), x, y)
    second = train_lora(make_model(), config(), x, y)
    other = train_lora(make_model(), config(seed=8), x, y)
    for name in ("layer1", "layer2"):
        assert torch.equal(first.modules[name].lora_A, second.modules[name].lora_A)
        assert torch.equal(first.modules[name].lora_B, second.modules[name].lora_B)
    assert not torch.equal(first.modules["layer1"].lora_A, other.modules["layer1"].lora_A)


def cross_entropy_longhand(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_c p_c log softmax(z)_c."""
    log_softmax = logits - logits.exp().sum(dim=1, keepdim=True).log()  # (N, C)
    return -(probabilities * log_softmax).sum(dim=1).mean()


def mse_longhand(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


@pytest.mark.parametrize(
    ("loss", "use_rslora"), [("mse", False), ("mse", True), ("cross_entropy", False)]
)
@pytest.mark.parametrize("activation", ["relu", None])
@pytest.mark.parametrize("targets", [("layer1", "layer2"), ("layer1",), ("layer2",)])
def test_matches_a_plain_pytorch_loop_step_for_step(
    targets: tuple[str, ...], activation: str | None, loss: str, use_rslora: bool
) -> None:
    """Cached layers and low-rank chains must give the gradients the plain loop gives."""
    model = make_model(activation=activation)
    x, y = data(rows=48)
    if loss == "cross_entropy":
        y = torch.softmax(y, dim=1)  # class probabilities
    cfg = config(target_modules=targets, epochs=2, loss=loss, use_rslora=use_rslora)
    ours = train_lora(model, cfg, x, y)

    # The same run written longhand: same init order, same shuffles, full forward each step.
    gen = torch.Generator().manual_seed(cfg.seed)
    params = {}
    for name in targets:
        layer = base_layer(model, name)
        bound = 1.0 / layer.in_features**0.5
        a = torch.empty(cfg.rank, layer.in_features).uniform_(-bound, bound, generator=gen)
        params[name] = (
            a.requires_grad_(),
            torch.zeros(layer.out_features, cfg.rank, requires_grad=True),
        )
    scaling = cfg.alpha / (cfg.rank**0.5 if use_rslora else cfg.rank)
    assert all(m.scaling == pytest.approx(scaling) for m in ours.modules.values())
    loss_fn = cross_entropy_longhand if loss == "cross_entropy" else mse_longhand
    opt = torch.optim.Adam([t for pair in params.values() for t in pair], lr=cfg.learning_rate)

    def forward(h: torch.Tensor) -> torch.Tensor:
        for i, name in enumerate(("layer1", "layer2")):
            layer = base_layer(model, name)
            out = h @ layer.weight.T + layer.bias
            if name in params:
                a, b = params[name]
                out = out + scaling * (h @ a.T) @ b.T
            h = torch.relu(out) if i == 0 and activation == "relu" else out
        return h

    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            value = loss_fn(forward(x[rows]), y[rows])
            opt.zero_grad()
            value.backward()
            opt.step()
    for name in targets:
        torch.testing.assert_close(
            ours.modules[name].lora_A, params[name][0].detach(), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            ours.modules[name].lora_B, params[name][1].detach(), rtol=1e-4, atol=1e-5
        )


def test_training_lowers_the_loss_and_reports_every_step() -> None:
    model = make_model(activation=None, bias=False)
    x = torch.randn(256, 12)
    shift = torch.randn(12, 1) @ torch.randn(1, 6)  # a rank-1 change the adapter can learn
    y = model(x) + x @ shift
    reports: list[StepReport] = []
    adapter = train_lora(model, config(epochs=30, learning_rate=3e-2), x, y, (x, y), reports.append)
    epoch_ends = [r for r in reports if r.epoch_end]
    assert len(epoch_ends) == 30 and len(reports) == 30 * 16 + 30
    assert reports[-1].step == reports[-1].total_steps == 30 * 16
    assert epoch_ends[-1].validation_loss < epoch_ends[0].validation_loss / 10
    assert evaluate(model, dict(adapter.modules), x, y) == pytest.approx(
        nn.functional.mse_loss(forward(model, unmerged_linear(adapter), x), y).item(), rel=1e-5
    )


def test_a_loss_that_overflows_raises_diverged() -> None:
    x, y = data()
    with pytest.raises(Diverged, match="loss became inf"):
        train_lora(make_model(), config(), x * 1e30, y)


def test_should_stop_is_checked_every_step() -> None:
    x, y = data()
    steps: list[StepReport] = []
    with pytest.raises(Cancelled):
        train_lora(
            make_model(), config(), x, y, on_step=steps.append, should_stop=lambda: len(steps) >= 5
        )
    assert len(steps) == 5


def test_cross_entropy_against_class_probabilities() -> None:
    """The reported losses are the longhand -sum p log softmax(z), per row, averaged."""
    model = make_model()
    x, _ = data()
    classes = torch.randint(0, 6, (64,), generator=torch.Generator().manual_seed(5))
    labels = torch.nn.functional.one_hot(classes, 6).float()
    reports: list[StepReport] = []
    cfg = config(loss="cross_entropy", epochs=2, batch_size=64)  # one step an epoch, all rows
    adapter = train_lora(model, cfg, x, labels, (x, labels), reports.append)
    # B starts at zero, so the first step's loss is the base model's.
    assert reports[0].train_loss == pytest.approx(
        cross_entropy_longhand(model(x), labels).item(), rel=1e-5
    )
    trained = forward(model, unmerged_linear(adapter), x)
    expected = cross_entropy_longhand(trained, labels).item()
    assert reports[-1].validation_loss == pytest.approx(expected, rel=1e-5)
    assert evaluate(model, dict(adapter.modules), x, labels, "cross_entropy") == pytest.approx(
        expected, rel=1e-5
    )


def test_rslora_scales_by_alpha_over_the_square_root_of_r() -> None:
    model = make_model()
    x, y = data()
    cfg = config(rank=4, alpha=8.0, use_rslora=True)
    adapter = train_lora(model, cfg, x, y)
    assert adapter.config.use_rslora
    for name, module in adapter.modules.items():
        assert module.scaling == pytest.approx(8.0 / 2.0)
        assert adapter.config.scaling_for(name) == pytest.approx(8.0 / 2.0)
    plain = train_lora(model, config(rank=4, alpha=8.0), x, y)
    assert all(m.scaling == pytest.approx(2.0) for m in plain.modules.values())
