"""Solver cost, printed as ratios (no pass/fail): run ``python benchmarks/bench_solvers.py``.

1. F-LWC time per iteration / one plain forward+backward pass over the same data
   (cross-entropy on the model's own parameters; target <= 1.3): F-LWC's overhead
   beyond the unavoidable gradient pass (its per-iteration accuracy is read off the
   gradient pass, so it should be close to 1).
2. LWC time / F-LWC time at the same bound, with both worst-case accuracies
   (the paper reports F-LWC about 2x faster than LWC).

Options: ``--thg`` (default 0.03), ``--repeats``, ``--lwc-iterations`` (LWC's pass
budget), ``--torch-device`` (auto/cpu/cuda), ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_forward_backward(setup) -> float:
    """One training-style pass: CE loss of the imported module over the data, backward to its parameters."""
    module = setup.imported.module
    params = [p for p in module.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    start = time.perf_counter()
    for x, y in setup.data.batches():
        output = module(x)
        output = output if isinstance(output, torch.Tensor) else output[0]
        loss = torch.nn.functional.cross_entropy(output, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        del grads
    _sync(setup.crossbar.torch_device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thg", type=float, default=0.03)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lwc-iterations", type=int, default=None, help="LWC pass budget (default: LWC's own)")
    parser.add_argument("--torch-device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cimguard.api import build_setup, run_solver
    from cimguard.sim.worst_case import make_problem

    setup = build_setup(None, torch_device=args.torch_device)
    device = setup.crossbar.torch_device
    problem = make_problem(setup.crossbar, setup.data, args.thg)
    print(f"model {setup.model_path.name}, {len(setup.data.labels)} evaluation samples, "
          f"{setup.crossbar.num_weights} mapped weights, torch device {device}, {torch.get_num_threads()} threads, "
          f"thg {args.thg:g}")

    # Warm up both code paths once (allocator, kernels).  The two are then timed interleaved and
    # compared best-of-N (the standard estimator when other processes share the machine).
    plain_forward_backward(setup)
    run_solver("flwc", problem)
    plains, per_iterations, flwc_runs = [], [], []
    for _ in range(args.repeats):
        plains.extend(plain_forward_backward(setup) for _ in range(3))
        run = run_solver("flwc", problem)
        iterations = sum(1 for record in run.worst.trace if record["iteration"] != "final")
        flwc_runs.append(run)
        per_iterations.append(run.seconds / iterations)
    flwc_time = min(run.seconds for run in flwc_runs)
    plain, per_iteration = min(plains), min(per_iterations)
    print("")
    print(f"plain forward+backward over the data      {plain * 1e3:9.2f} ms   (best of {len(plains)})")
    print(f"F-LWC per iteration ({iterations} iterations/run)    {per_iteration * 1e3:9.2f} ms   (best of "
          f"{len(per_iterations)} runs; includes scoring the last iterate and keeping the best chip)")
    print(f"F-LWC iteration / plain fwd+bwd           {per_iteration / plain:9.3f}   (target <= 1.3; medians give "
          f"{statistics.median(per_iterations) / statistics.median(plains):.3f})")

    options = {"iterations": args.lwc_iterations} if args.lwc_iterations else {}
    lwc = run_solver("lwc", problem, options=options)
    flwc = flwc_runs[0]
    print("")
    runs_of_c = sum(1 for record in lwc.worst.trace if record.get("record") == "run")
    print(f"LWC   {lwc.seconds:8.2f} s  accuracy {lwc.accuracy:.4f}  ({runs_of_c} runs of c, "
          f"{lwc.options['iterations']} pass budget)")
    print(f"F-LWC {flwc_time:8.2f} s  accuracy {flwc.accuracy:.4f}  ({iterations} iterations)")
    print(f"LWC time / F-LWC time                     {lwc.seconds / flwc_time:9.1f}")


if __name__ == "__main__":
    main()
