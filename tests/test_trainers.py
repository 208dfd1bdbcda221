"""Hardening trainers: the shared loop, RCG noise, A-TRICE's adversarial update, checkpoints, and that they harden."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cimguard.api import run_solver
from cimguard.errors import CimguardError
from cimguard.plugins import registry
from cimguard.sim.evaluate import accuracy
from cimguard.sim.rcg import rcg_mean, rcg_mean_perturbation, rcg_perturbation
from cimguard.sim.train import TrainerConfig
from cimguard.sim.worst_case import make_problem
from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer
from cimguard_plugins.trainers.noise import NoiseTrainer
from cimguard_plugins.trainers.trice import TriceConfig, TriceTrainer
from cimguard_plugins.trainers.vanilla import VanillaTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def training(setup):
    from cimguard.sim.data import fit_to_model

    x, y = setup.dataset.require_training()
    return fit_to_model(x, setup.imported.input), y


def worst_case(crossbar, data, thg: float) -> float:
    return run_solver("flwc", make_problem(crossbar, data, thg), seed=0).accuracy


def test_trainers_are_registered():
    trainers = registry("trainers")
    assert {"noise", "trice", "atrice"} <= set(trainers.names())
    assert trainers.get("atrice") is ATriceTrainer


# -- hardening works ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trainer, device_params",
    [
        # Write-verify at 0.03 leaves too little variation to learn from; train on chips without it.
        (NoiseTrainer(TrainerConfig(epochs=4)), {"thg": float("inf"), "sigma": 0.2}),
        (TriceTrainer(TriceConfig(epochs=4, sigma=0.3, threshold=1.0)), {"thg": 0.03}),
        (ATriceTrainer(ATriceConfig(epochs=3)), {"thg": 0.03}),
    ],
    ids=["noise", "trice", "atrice"],
)
def test_trainer_improves_worst_case_accuracy(default_model_path, trainer, device_params):
    from cimguard.api import build_setup
    from cimguard.sim.data import fit_to_model

    setup = build_setup(default_model_path, "digits", "gaussian", device_params, torch_device="cpu")
    x, y = setup.dataset.require_training()
    result = trainer.fit(setup.crossbar, fit_to_model(x, setup.imported.input), y)
    hardened = setup.crossbar.remapped(result.weights)
    before = worst_case(setup.crossbar, setup.data, 0.01)
    after = worst_case(hardened, setup.data, 0.01)
    assert after >= before + 0.15, (before, after)
    clean_before, clean_after = accuracy(setup.crossbar, setup.data), accuracy(hardened, setup.data)
    assert clean_after >= clean_before - 0.03, (clean_before, clean_after)


def test_only_mapped_weights_learn(setup, training):
    module = setup.imported.module
    frozen = {name: value.clone() for name, value in module.state_dict().items()}
    result = VanillaTrainer(TrainerConfig(epochs=1)).fit(setup.crossbar, *training)
    assert set(result.weights) == set(setup.crossbar.names)
    # The model itself is never mutated: biases and everything else stay as imported.
    for name, value in module.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    assert any(not torch.equal(result.weights[n], frozen[n]) for n in result.weights)


def test_straight_through_computes_with_quantised_weights_and_passes_gradients(setup, training):
    trainer = VanillaTrainer()
    run = trainer.new_run(setup.crossbar)
    chip = run.chip()
    x = training[0][:16]
    perturbation = chip.sample(run.noise_generator)
    logits = chip.logits(x, run.straight_through(chip, perturbation))
    assert torch.allclose(logits, chip.logits(x, perturbation), atol=1e-5)
    logits.sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in run.weights.values())


# -- RCG noise --------------------------------------------------------------------------------------


def test_rcg_mean_matches_samples():
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn(2_000_000, generator=generator)
    for threshold in (-0.5, 0.0, 1.0, 3.0):
        empirical = float(0.2 * eps.clamp(max=threshold).mean())
        assert rcg_mean(0.2, threshold) == pytest.approx(empirical, abs=2e-3)
    assert rcg_mean(0.2, math.inf) == pytest.approx(0.0)


def test_rcg_noise_is_right_censored_through_the_crossbar(setup):
    chip = setup.crossbar
    generator = chip.generator(0)
    # Threshold 0: every device deviates downwards, so every weight loses magnitude.
    for name, delta in rcg_perturbation(chip, 0.2, 0.0, generator).items():
        sign = chip.layers[name].sign
        assert (sign * delta <= 1e-12).all()
        assert (sign * delta < 0).float().mean() > 0.99
    # Threshold t: a device rises at most t·σ levels, so |ΔW| above W is bounded like a write-verify box.
    for name, delta in rcg_perturbation(chip, 0.2, 0.5, generator).items():
        bound = chip.weight_bound(name, 0.2 * 0.5)
        assert float((chip.layers[name].sign * delta).max()) <= bound * (1 + 1e-5)
    mean = rcg_mean_perturbation(chip, 0.2, 1.0)
    name = chip.names[0]
    expected = chip.weight_delta(name, torch.full((chip.slices, *chip.layers[name].nominal.shape), rcg_mean(0.2, 1.0)))
    assert torch.allclose(mean[name], expected)


# -- A-TRICE ---------------------------------------------------------------------------------


def test_atrice_adversarial_chip_is_one_sign_step_from_the_rcg_mean(setup, training):
    trainer = ATriceTrainer(ATriceConfig(sigma=0.1, threshold=1.0, eta_train=0.02))
    run = trainer.new_run(setup.crossbar)
    run.extra["eta_train"] = 0.02
    chip = run.chip()
    x, y = training[0][:64], training[1][:64]
    adversarial = trainer.adversarial_perturbation(run, chip, x, y)
    mean = rcg_mean_perturbation(chip, 0.1, 1.0)
    step = chip.bounds(0.02)
    moved = 0
    for name in chip.names:
        distance = (adversarial[name] - mean[name]).abs()
        one_step = (distance - step[name]).abs() <= 1e-5 * step[name]
        assert (one_step | (distance == 0)).all()
        moved += int((distance > 0).sum())
    assert moved > 0.5 * chip.num_weights
    # It is adversarial: this batch's loss is higher on it than on the mean chip.
    loss_adv, _ = run.cross_entropy(chip, x, y, adversarial)
    loss_mean, _ = run.cross_entropy(chip, x, y, mean)
    assert float(loss_adv.detach()) > float(loss_mean.detach())


def test_atrice_adversarial_update_is_applied_to_the_weights(setup, training):
    x, y = training[0][:64], training[1][:64]

    def one_batch(alpha: float):
        trainer = ATriceTrainer(ATriceConfig(alpha=alpha))
        run = trainer.new_run(setup.crossbar)
        run.extra.update(trainer.prepare(setup.crossbar, x, y))
        start = {n: w.detach().clone() for n, w in run.weights.items()}
        trainer.adversarial_step(run, x, y)
        after_adversarial = {n: w.detach().clone() for n, w in run.weights.items()}
        trainer.noise_step(run, x, y)
        return start, after_adversarial, {n: w.detach().clone() for n, w in run.weights.items()}

    start, adv0, end0 = one_batch(0.0)
    _, adv1, end1 = one_batch(1.0)
    # α = 0: the adversarial step changes nothing; α > 0: it moves the weights, and the move is kept.
    assert all(torch.equal(start[n], adv0[n]) for n in start)
    assert all(not torch.equal(start[n], adv1[n]) for n in start)
    assert all(not torch.equal(end0[n], end1[n]) for n in start)
    # Adam's first step moves each weight by about lr (sign of the gradient): the update is really there.
    change = max(float((adv1[n] - start[n]).abs().max()) for n in start)
    assert change == pytest.approx(ATriceConfig().lr, rel=0.05)


# -- TRICE search -------------------------------------------------------------------------------


def test_trice_search_scores_candidates_on_a_training_validation_split(setup, training, monkeypatch):
    import cimguard_plugins.trainers.trice as trice

    reports = []

    def spy(*args, **kwargs):
        reports.append(trice_monte_carlo(*args, **kwargs))
        return reports[-1]

    trice_monte_carlo = trice.monte_carlo
    monkeypatch.setattr(trice, "monte_carlo", spy)
    config = TriceConfig(epochs=1, sigmas=(0.05, 0.4), thresholds=(1.0,), search_epochs=1, search_chips=4, kpp=10)
    trainer = TriceTrainer(config)
    x, y = training
    x_fit, y_fit, validation = trainer._split(setup.crossbar, x, y)
    assert len(x_fit) + len(validation.x) == len(x)
    assert len(validation.x) == round(0.2 * len(x))
    result = trainer.fit(setup.crossbar, x, y)
    search = result.chosen["search"]
    assert [(row["sigma"], row["threshold"]) for row in search] == [(0.05, 1.0), (0.4, 1.0)]
    # The score is the Monte Carlo report's own KPP 10 of each candidate's chips.
    assert [row["kpp"] for row in search] == [stats.percentiles["10"] for stats in reports]
    assert [row["mean"] for row in search] == [stats.mean for stats in reports]
    best = max(search, key=lambda row: (row["kpp"], row["mean"]))
    assert (result.chosen["sigma"], result.chosen["threshold"]) == (best["sigma"], best["threshold"])
    assert all(0 <= row["kpp"] <= row["mean"] <= 1 for row in search)


def test_trice_candidate_set_is_bounded():
    with pytest.raises(CimguardError, match="bounded"):
        TriceTrainer(TriceConfig(sigmas=tuple(0.01 * i for i in range(1, 11)), thresholds=(0.0, 1.0, 2.0)))
    for kpp in (120, 5, float("nan")):
        with pytest.raises(CimguardError, match="percentile"):
            TriceTrainer(TriceConfig(kpp=kpp))
    assert TriceTrainer(TriceConfig(kpp=50)).config.kpp == 50


# -- checkpoints and resume -----------------------------------------------------------------


class Stop(Exception):
    pass


@pytest.mark.parametrize("trainer_class, config", [
    (ATriceTrainer, ATriceConfig(epochs=3, batch_size=128)),
    (TriceTrainer, TriceConfig(epochs=3, batch_size=128, sigmas=(0.1, 0.3), thresholds=(1.0,), search_epochs=1,
                               search_chips=3)),
], ids=["atrice", "trice"])
def test_resume_after_interruption_equals_uninterrupted_run(setup, training, tmp_path, trainer_class, config):
    full = trainer_class(config).fit(setup.crossbar, *training, checkpoint=tmp_path / "full.pt")

    def interrupt(run):
        if run.epoch == 1:
            raise Stop

    checkpoint = tmp_path / "part.pt"
    with pytest.raises(Stop):
        trainer_class(config).fit(setup.crossbar, *training, checkpoint=checkpoint, on_epoch_end=interrupt)
    resumed = trainer_class(config).fit(setup.crossbar, *training, checkpoint=checkpoint, resume=True)
    assert resumed.resumed_from_epoch == 1
    for name in full.weights:
        assert torch.equal(full.weights[name], resumed.weights[name]), name
    assert resumed.history == full.history
    assert resumed.chosen == full.chosen


def test_checkpoint_misuse_is_refused(setup, training, tmp_path):
    trainer = VanillaTrainer(TrainerConfig(epochs=1, batch_size=256))
    checkpoint = tmp_path / "ck.pt"
    trainer.fit(setup.crossbar, *training, checkpoint=checkpoint)
    with pytest.raises(CimguardError, match="already exists"):
        trainer.fit(setup.crossbar, *training, checkpoint=checkpoint)
    with pytest.raises(CimguardError, match="different training options"):
        VanillaTrainer(TrainerConfig(epochs=1, batch_size=256, lr=1e-2)).fit(
            setup.crossbar, *training, checkpoint=checkpoint, resume=True)
    with pytest.raises(CimguardError, match="different trainer"):
        NoiseTrainer(TrainerConfig(epochs=1, batch_size=256)).fit(setup.crossbar, *training, checkpoint=checkpoint, resume=True)
    with pytest.raises(CimguardError, match="model, device mapping or training data"):
        trainer.fit(setup.crossbar, training[0][:100], training[1][:100], checkpoint=checkpoint, resume=True)
    with pytest.raises(CimguardError, match="does not exist"):
        trainer.fit(setup.crossbar, *training, checkpoint=tmp_path / "missing.pt", resume=True)
    with pytest.raises(CimguardError, match="needs --checkpoint"):
        trainer.fit(setup.crossbar, *training, resume=True)
    with pytest.raises(CimguardError, match="checkpoint folder"):
        trainer.fit(setup.crossbar, *training, checkpoint=tmp_path / "no" / "ck.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CimguardError, match="not a cimguard training checkpoint"):
        trainer.fit(setup.crossbar, *training, checkpoint=tmp_path / "junk.pt", resume=True)


def test_same_seed_same_weights_other_seed_other_weights(setup, training):
    config = ATriceConfig(epochs=1, batch_size=256)
    a = ATriceTrainer(config).fit(setup.crossbar, *training)
    b = ATriceTrainer(config).fit(setup.crossbar, *training)
    c = ATriceTrainer(dataclasses.replace(config, seed=1)).fit(setup.crossbar, *training)
    name = setup.crossbar.names[0]
    assert torch.equal(a.weights[name], b.weights[name])
    assert not torch.equal(a.weights[name], c.weights[name])


# -- options ------------------------------------------------------------------------------------


def test_options_are_checked():
    with pytest.raises(CimguardError, match="trainer 'noise' has no option alpha"):
        NoiseTrainer.from_options("noise", alpha=0.5, epochs=2)
    trainer = ATriceTrainer.from_options("atrice", alpha=0.5, epochs=None)
    assert trainer.config.alpha == 0.5 and trainer.config.epochs == ATriceConfig().epochs
    with pytest.raises(CimguardError, match="epochs"):
        TrainerConfig(epochs=0).validate()
    with pytest.raises(CimguardError, match="alpha"):
        ATriceTrainer(ATriceConfig(alpha=-1))
    with pytest.raises(CimguardError, match="sigma"):
        ATriceTrainer(ATriceConfig(sigma=float("nan")))


@pytest.mark.parametrize("options, message", [
    ({"threshold": -math.inf}, "threshold"),
    ({"threshold": math.nan}, "threshold"),
    ({"sigma": math.inf}, "sigma"),
    ({"alpha": math.nan}, "alpha"),
    ({"alpha": math.inf}, "alpha"),
    ({"eta_train": math.nan}, "eta_train"),
    ({"eta_train": math.inf}, "eta_train"),
    ({"kappa": math.nan}, "kappa"),
    ({"lr": math.nan}, "learning rate"),
])
def test_non_numbers_are_refused_before_training(options, message):
    with pytest.raises(CimguardError, match=message):
        ATriceTrainer(ATriceConfig(**options))


def test_censoring_threshold_minus_infinity_is_refused_in_every_trainer(setup):
    with pytest.raises(CimguardError, match="threshold"):
        TriceTrainer(TriceConfig(sigma=0.2, threshold=-math.inf))
    with pytest.raises(CimguardError, match="threshold"):
        TriceTrainer(TriceConfig(thresholds=(1.0, -math.inf)))
    # +inf is allowed: no censoring, plain Gaussian noise with a finite mean (zero).
    ATriceTrainer(ATriceConfig(threshold=math.inf))
    assert rcg_mean(0.2, math.inf) == 0.0
    noise = rcg_perturbation(setup.crossbar, 0.2, math.inf, setup.crossbar.generator(0))
    assert all(bool(torch.isfinite(delta).all()) for delta in noise.values())


def test_atrice_without_write_verify_needs_an_explicit_step(default_model_path, training):
    from cimguard.api import build_setup

    setup = build_setup(default_model_path, "digits", "gaussian", {"thg": float("inf")}, torch_device="cpu")
    with pytest.raises(CimguardError, match="eta-train"):
        ATriceTrainer(ATriceConfig(epochs=1)).fit(setup.crossbar, *training)
