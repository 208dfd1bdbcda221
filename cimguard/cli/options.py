"""Click options shared by commands, so every command spells them the same way."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import click

from cimguard.api import Setup, build_setup
from cimguard.errors import CimguardError
from cimguard.factories import DEVICE_BOX
from cimguard.seeds import SEED_MAX
from cimguard.sim.crossbar import CrossbarConfig

F = Callable[..., Any]

# File options are plain paths: cimguard checks them itself, so a missing file, a folder where a file
# belongs and an unreadable file are all one-line errors with exit status 1 (click would give 2 for a folder).
# Exit status 2 stays for a malformed command line (unknown option, a value that is not a number or out of range).

#: Most Monte Carlo chips one command may ask for (10^6 chips of the embedded model take hours already).
MAX_CHIPS = 1_000_000
#: Most passes, epochs or steps one option may ask for.
MAX_COUNT = 1_000_000


class _NonNegativeFloat(click.ParamType):
    """A float ``>= 0``: NaN refused, ``inf`` kept (a threshold where it means "none")."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if number != number or number < 0:
            self.fail(f"{value!r} is not a number >= 0", param, ctx)
        return number


#: ``--thg`` of evaluate and harden (level units; ``inf``: no write-verify).
THG = _NonNegativeFloat()
#: Every ``--seed``: one 64-bit range in every command (torch and the Monte Carlo chip seeds take 64 bits).
SEED = click.IntRange(0, SEED_MAX)


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def model_argument(command: F) -> F:
    """``[MODEL]`` positional, or ``--model MODEL``: one way to name the model in every command (both: an error).

    The command receives ``model`` (``None``: the embedded LeNet on digits).  Apply it outermost (first
    under ``@click.command``), so the wrapper carries every option declared below it.
    """
    @functools.wraps(command)
    def run(*args: Any, model_arg: str | None = None, model_opt: str | None = None, **kwargs: Any) -> Any:
        if model_arg is not None and model_opt is not None:
            raise CimguardError(f"the model is given twice ({model_arg} and --model {model_opt}); give MODEL or "
                                "--model MODEL, not both")
        return command(*args, model=model_arg if model_arg is not None else model_opt, **kwargs)

    run = click.option("--model", "model_opt", type=click.Path(), default=None,
                       help="The ONNX model, as MODEL (default: the embedded LeNet on digits).")(run)
    return click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path())(run)


_SCORES_HELP = "The graph output that holds the class scores (default: the first)."
#: ``--output NAME`` (and ``--score-output NAME``): which graph output is scored.  ``harden`` spells it
#: ``--score-output`` only: its ``-o/--output`` names the ONNX file it writes.
output_option = click.option("--output", "--score-output", "output_name", default=None, metavar="NAME",
                             help=_SCORES_HELP)
_SCORE_OUTPUT = click.option("--score-output", "output_name", default=None, metavar="NAME", help=_SCORES_HELP)

_LABEL_FREE = click.option("--label-free", is_flag=True,
                           help="Use the clean model's predictions as labels (agreement).")


def _setup_options(*, label_free: bool) -> Callable[[F], F]:
    return _compose(*(option for option in (
        click.option("--data", default="digits", show_default=True, help="Dataset: NAME, NAME:ARG or a .npz file."),
        click.option("--device", "device_name", default="gaussian", show_default=True, help="Device model or profile name."),
        click.option("--device-param", "device_params", multiple=True, metavar="FIELD=VALUE", help="Override one device parameter (repeatable)."),
        click.option("--device-file", type=click.Path(), default=None, help="TOML file of device profiles."),
        click.option("--weight-bits", type=int, default=None,
                     help="Bits per weight magnitude (K)  [default: 8; a quantized file's own width]"),
        _LABEL_FREE if label_free else None,
        click.option("--verify/--no-verify", default=True, show_default=True,
                     help="Check the converted model against onnxruntime on the first samples before computing "
                          "anything (a mismatch names the first node that differs); --no-verify skips it and "
                          "the header and report say so."),
        click.option("--torch-device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--max-samples", type=click.IntRange(min=1, max=2**62), default=None, help="Use only the first N evaluation samples."),
        output_option if label_free else _SCORE_OUTPUT,
    ) if option is not None))


setup_options = _setup_options(label_free=True)
"""The options every evaluating command shares (``--data`` … ``--max-samples``)."""

training_setup_options = _setup_options(label_free=False)
""":data:`setup_options` without ``--label-free``, for commands that train on labelled data (``harden``)."""

seed_option = click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed (0 <= seed < 2^64).")


def setup_from_options(
    model: str | None,
    data: str,
    device_name: str,
    device_params: Mapping[str, Any],
    device_file: str | None,
    weight_bits: int | None,
    label_free: bool,
    verify: bool,
    torch_device: str,
    max_samples: int | None,
    thg: float | None = None,
    output_name: str | None = None,
) -> Setup:
    """Build a :class:`Setup` from the shared options: ``device_params`` as parsed by
    :func:`cimguard.factories.parse_param_overrides`; ``thg`` overrides the device's threshold."""
    params: dict[str, Any] = dict(device_params)
    if thg is not None:
        params["thg"] = thg
    return build_setup(
        model, data, device_name, params, device_file, CrossbarConfig(weight_bits=weight_bits),
        label_free=label_free, verify=verify, torch_device=torch_device, max_samples=max_samples, output=output_name,
    )


DEFAULT_THG = DEVICE_BOX
"""``attack`` and ``compare`` search the device's own box unless told to sweep thresholds."""


def solver_options(default: tuple[str, ...] = ("apgd",)) -> Callable:
    """Decorator: ``--solver``, ``--iterations``, ``--budget`` and ``--solver-param``, spelled the same in
    every command.

    The command receives ``solver_names``, ``iterations``, ``budget`` and ``solver_params``; turn them into
    built (so checked) solvers, ``{name: Solver}``, with :func:`cimguard.factories.solvers_from_options`.
    """

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--solver-param", "solver_params", multiple=True, metavar="[SOLVER.]FIELD=VALUE",
            help="Set one solver option, e.g. flwc.k=20 or pgd.restarts=4 (repeatable; without SOLVER. it "
                 "goes to every chosen solver that has FIELD).")(command)
        command = click.option(
            "--iterations", type=click.IntRange(min=1, max=MAX_COUNT), default=None,
            help="Iterations per solver (per start for pgd; Adam passes for lwc); default: each solver's own. "
                 "--budget caps the passes.")(command)
        command = click.option(
            "--budget", type=click.IntRange(min=1, max=MAX_COUNT), default=None,
            help="Most passes (forward + backward over the evaluation data, read-outs included) each solver "
                 "may use; the report records the passes used and the best accuracy after each.")(command)
        return click.option(
            "--solver", "solver_names", multiple=True, default=default, show_default=True,
            help="Worst-case solver(s): repeat or comma-separate (see `cimguard plugins`).")(command)

    return decorate


def sweep_options(command: Callable) -> Callable:
    """``--thg`` (the device's own box or a threshold sweep) and ``--samples``, spelled once for attack and compare."""
    command = click.option("--samples", type=click.IntRange(min=0, max=MAX_CHIPS), default=100, show_default=True,
                           help="Monte Carlo chips per thg; 0 skips Monte Carlo (worst case only, the table shows '-')."
                           )(command)
    return click.option("--thg", "thg_text", default=DEFAULT_THG, show_default=True,
                        help="'device': the device's own worst-case box (its deviation_bound, per level), or "
                             "write-verify thresholds to sweep, in level units, comma-separated "
                             "(e.g. 0.005,0.01,0.02,0.03).")(command)


#: ``--certify [interval|crown|joint]`` of attack and compare: the proof side of the worst case (docs/certify.md).
certify_option = click.option(
    "--certify", "certify_method", type=click.Choice(["interval", "crown", "joint"]), default=None, is_flag=False,
    flag_value="crown", help="Also prove per sample that no chip in the box misclassifies it (certified accuracy, "
    "a lower bound on the worst chip): crown (the default) or interval; joint adds a bound on how many of the "
    "samples left one chip can misclassify (slower; docs/certify.md).")
