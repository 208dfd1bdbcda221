"""Worst case per pass: every solver, and a plain projected PGD written here, at budgets of 10, 20, 40, 80 passes.

A pass is one forward + backward over the evaluation set (an accuracy read-out that is not part of a
gradient pass counts as one too).  Each solver runs with ``budget=B`` (its own options otherwise); the
plain PGD is the baseline of issue 21 (30 lines): full-set margin gradient, sign step ``2.5·bound/B``, halved
after half the steps, best iterate kept, every iterate scored from its own gradient pass (so B passes).
Same box, same data, same budget.  Printed: the worst case (accuracy) per solver and budget, and
whether the default search (``apgd``) is at or below the best of the others at every budget.

Problems: the shipped LeNet (digits evaluation split, 360 images, gaussian device) at thg 0.01 and 0.03,
and a harder model: a LeNet trained here (seeded, 6 epochs: 2–13 s measured here) on the 8,000 training images
of the MNIST test set in ``--mnist`` (``i % 5 != 0``; its README's split), evaluated on the 2,000 others.
The package never needs that data; without it the harder model is skipped (said so).

Options: ``--budgets``, ``--thg``, ``--mnist PATH`` (default ``../shared/data/mnist-t10k`` relative to the
repository), ``--threads``, ``--json FILE`` (write the numbers, e.g. under ``benchmarks/results``),
``--plot FILE`` (any-time curves, accuracy against passes, of every solver at the largest budget).
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
SOLVERS = ("apgd", "flwc", "pgd", "lwc")
DEFAULT = "apgd"


def plain_pgd(problem, budget: int) -> list[float]:
    """The baseline: projected sign-gradient descent, step 2.5·bound/budget halved after half, best iterate;
    its any-time curve (the best accuracy after each pass, the last entry its answer)."""
    from cimguard.sim.gradients import margin_gradient_with_accuracy

    bounds = problem.bounds
    delta = {name: torch.zeros_like(bound) for name, bound in bounds.items()}
    best = math.inf
    curve = []
    for t in range(budget):
        grad, _, acc = margin_gradient_with_accuracy(problem.crossbar, problem.data, delta)
        best = min(best, acc)
        curve.append(best)
        step = 2.5 / budget * (0.5 if t >= budget // 2 else 1.0)
        delta = {name: torch.clamp(value - step * bounds[name] * torch.sign(grad[name]), -bounds[name], bounds[name])
                 for name, value in delta.items()}
    return curve


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=offset)


def harder_model(mnist: Path, seed: int = 0, epochs: int = 6):
    """A LeNet-5 trained on MNIST t10k's training split; returns (module, eval x, eval y, clean float acc)."""
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    held_out = np.arange(len(labels)) % 5 == 0
    x_train, y_train = torch.from_numpy(images[~held_out]), torch.from_numpy(labels[~held_out])
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84),
                          nn.ReLU(), nn.Linear(84, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), 64):
            index = order[start:start + 64]
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    x_eval, y_eval = images[held_out], labels[held_out]
    with torch.no_grad():
        float_accuracy = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
    return model, x_eval, y_eval, float_accuracy


def run_problem(problem, budgets: list[int]) -> dict[str, Any]:
    """Worst case per solver and budget, the baseline's, and the largest budget's any-time curves."""
    from cimguard.api import run_solver

    worst: dict[str, dict[int, float]] = {name: {} for name in (*SOLVERS, "plain PGD")}
    passes: dict[str, dict[int, int]] = {name: {} for name in SOLVERS}
    curves: dict[str, list[float | None]] = {}
    for budget in budgets:
        for name in SOLVERS:
            run = run_solver(name, problem, seed=0, budget=budget)
            worst[name][budget] = run.accuracy
            passes[name][budget] = run.worst.passes
            if budget == max(budgets):
                curves[name] = run.worst.curve
        baseline = plain_pgd(problem, budget)
        worst["plain PGD"][budget] = baseline[-1]
        if budget == max(budgets):
            curves["plain PGD"] = baseline
    return {"worst": worst, "passes": passes, "curves": curves}


def print_table(title: str, result: dict[str, Any], budgets: list[int]) -> bool:
    """Print one problem's table; True when the default is at or below every other entry at every budget."""
    worst, passes = result["worst"], result["passes"]
    print(f"\n{title}")
    print("| budget (passes) | " + " | ".join(f"`{n}`" if n in SOLVERS else n for n in worst) + " | default best? |")
    print("|---" * (len(worst) + 2) + "|")
    ok_all = True
    for budget in budgets:
        others = min(value[budget] for name, value in worst.items() if name != DEFAULT)
        ok = worst[DEFAULT][budget] <= others + 1e-12
        ok_all &= ok
        cells = [f"{values[budget]:.3f}" + (f" ({passes[name][budget]})" if name in passes
                                             and passes[name][budget] < budget else "")
                 for name, values in worst.items()]
        print(f"| {budget} | " + " | ".join(cells) + f" | {'yes' if ok else 'NO'} |")
    return ok_all


def problems(thgs: list[float], mnist: Path, torch_device: str = "cpu") -> list[tuple[str, Any]]:
    """``(title, AttackProblem)``: the shipped LeNet at each thg, then the harder model (when ``mnist`` exists)."""
    import cimguard
    from cimguard.api import build_setup
    from cimguard.sim.worst_case import make_problem

    found: list[tuple[str, Any]] = []
    shipped = build_setup(None, torch_device=torch_device)
    for thg in thgs:
        found.append((f"shipped LeNet, digits ({len(shipped.data.labels)} images), thg {thg:g}",
                      make_problem(shipped.crossbar, shipped.data, thg)))
    if not (mnist / "t10k-images-idx3-ubyte.gz").exists():
        print(f"(no MNIST at {mnist}: the harder model is skipped)")
        return found
    started = time.perf_counter()
    model, x_eval, y_eval, float_accuracy = harder_model(mnist)
    print(f"(harder model trained in {time.perf_counter() - started:.0f} s)")
    chip = cimguard.setup(model, "gaussian", data=(x_eval, y_eval), example_input=torch.from_numpy(x_eval[:1]),
                          torch_device=torch_device)
    described = (f"harder LeNet-5, MNIST t10k split ({len(y_eval)} images, float accuracy {float_accuracy:.3f}, "
                 f"clean chip {chip.clean_accuracy():.3f})")
    for thg in thgs:
        found.append((f"{described}, thg {thg:g}", make_problem(chip.crossbar, chip.data, thg)))
    return found


def measure(budgets: list[int], thgs: list[float], mnist: Path, torch_device: str = "cpu") -> dict[str, Any]:
    """Every problem's table (printed as it is measured) and the record ``--json`` writes."""
    print("worst-case accuracy found within each budget (lower is stronger); a pass = forward + backward over "
          "the evaluation set; (n): passes used when fewer than the budget")
    record: dict[str, Any] = {"settings": {"budgets": budgets, "thg": thgs, "seed": 0, "device": "gaussian",
                                           "baseline": "plain PGD: step 2.5*bound/B, halved after B/2"},
                              "problems": {}}
    verdict = True
    for title, problem in problems(thgs, mnist, torch_device):
        result = run_problem(problem, budgets)
        verdict &= print_table(title, result, budgets)
        record["problems"][title] = result
    record["default_best"] = verdict
    print(f"\ndefault ({DEFAULT}) at or below the best of the others at every budget and problem: "
          f"{'yes' if verdict else 'NO'}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="10,20,40,80")
    parser.add_argument("--thg", default="0.01,0.03")
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = measure([int(b) for b in args.budgets.split(",")], [float(t) for t in args.thg.split(",")], args.mnist,
                     args.torch_device)
    if args.json is not None:
        from cimguard.report import write_json

        write_json(args.json, record)
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(record, args.plot)
        print(f"wrote {args.plot}")


def short_title(title: str) -> str:
    """``shipped LeNet, thg 0.01`` / ``MNIST LeNet-5, thg 0.03`` for a problem's full title (tables, panels)."""
    model, _, thg = title.rpartition(", thg ")
    return ("shipped LeNet" if model.startswith("shipped") else "MNIST LeNet-5") + f", thg {thg}"


def plot(record: dict[str, Any], path: Path) -> None:
    """The any-time curves of every solver at the largest budget, one panel per problem."""
    from cimguard.plot import plot_anytime_grid

    plot_anytime_grid({short_title(title): result["curves"] for title, result in record["problems"].items()}, path,
                      title=f"worst case found vs passes (budget {max(record['settings']['budgets'])})")


if __name__ == "__main__":
    main()
