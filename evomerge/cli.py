"""The ``evomerge`` command line."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from evomerge.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    DiskFullError,
    EvomergeError,
    RunFailedError,
)


def _console(stderr: bool = False) -> Console:
    # rich wraps at 80 columns when output is not a terminal (CI logs, pipes); tables need more.
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, width=160)
    return c


console = _console()
err_console = _console(stderr=True)


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, delivered like Ctrl-C so every ``finally`` runs (workers, locks)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stopped(signum)


class EvomergeGroup(TyperGroup):
    """The one place where errors become messages and exit codes (README, "Exit codes").

    ``--debug`` is accepted anywhere on the command line (users add it at the end of the
    command that failed) and lets every traceback through.
    """

    debug = False
    interrupt_hint = ""  # what to run next after Ctrl-C, set by the command that knows it

    def parse_args(self, ctx, args):
        end = args.index("--") if "--" in args else len(args)
        EvomergeGroup.debug = "--debug" in args[:end]
        EvomergeGroup.interrupt_hint = ""
        args = [a for i, a in enumerate(args) if not (i < end and a == "--debug")]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        debug = EvomergeGroup.debug or os.environ.get("EVOMERGE_DEBUG", "") not in ("", "0")
        handlers = {}
        if _main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, _raise_stopped)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, SystemExit):  # usage errors: exit 2
            raise
        except EvomergeError as err:
            if debug:
                raise
            _print_error(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt as err:
            if debug:
                raise
            signum = getattr(err, "signum", signal.SIGINT)
            err_console.print(f"interrupted ({signal.Signals(signum).name}){EvomergeGroup.interrupt_hint}",
                              highlight=False)
            raise typer.Exit(128 + signum if signum != signal.SIGINT else EXIT_INTERRUPTED) from None
        except OSError as err:
            if debug or err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                if debug:
                    raise
                _internal_error(err)
            where = f" writing {err.filename}" if err.filename else ""
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                e: EvomergeError = DiskFullError(
                    f"The disk filled up{where} ({err.strerror}). What was being written was "
                    "discarded and finished results are kept; free space (or point --out "
                    "elsewhere) and run the command again.")
            else:
                e = EvomergeError(
                    f"Cannot write {err.filename or 'the output'}: {err.strerror}. Choose a writable "
                    "location (--out) or fix the directory's permissions.")
            _print_error(str(e))
            raise typer.Exit(e.exit_code) from None
        except Exception as err:  # noqa: BLE001 - a bug: one line here, the traceback in a file
            if debug:
                raise
            _internal_error(err)
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _print_error(message: str) -> None:
    from rich.markup import escape  # the message is text: "evomerge[botorch]" is not a style tag

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)


def _internal_error(err: BaseException) -> None:
    fd, path = tempfile.mkstemp(prefix="evomerge-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(type(err), err, err.__traceback__, file=f)
    _print_error(
        f"unexpected {type(err).__name__}: {err}. This is a bug in evomerge, not in your input; "
        f"the traceback is in {path} (or rerun with --debug). Please report it with that file.")
    raise typer.Exit(EXIT_FAILED) from None


app = typer.Typer(
    cls=EvomergeGroup,
    help="evomerge: search, apply and export model-merge recipes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipe_app = typer.Typer(help="Inspect and convert recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks (also accepted after the command, or EVOMERGE_DEBUG=1).")] = False,
) -> None:
    if debug:
        EvomergeGroup.debug = True


def _parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise EvomergeError(
            f"--shard-size {text!r} is not a size; write e.g. 2G, 500M or 1000000."
        ) from None


@app.command()
def merge(
    recipe_path: Annotated[
        Path, typer.Argument(metavar="RECIPE.yaml", help="An evomerge recipe or a mergekit YAML.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[
        Optional[str], typer.Option(help="Compute dtype (overrides the recipe).")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Seed of randomised methods (overrides the recipe).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Load .bin/.pt checkpoints with torch.load(weights_only=True).")
    ] = False,
    shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5G.")] = "5G",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Merge the models of a recipe into a new model directory (streamed, atomic)."""
    import os

    from evomerge.io.prefill import start_output_prefill

    # Before torch loads OpenMP: idle workers sleep rather than spin. Spinning made merges
    # several times slower whenever another process shared the cores; alone it costs ~nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Before the heavy imports: warm the output file on the other core while torch loads.
    prefill = start_output_prefill(recipe_path, out, force)
    try:
        _merge(recipe_path, out, device, dtype, seed, force, allow_pickle, shard_size, quiet, prefill)
    finally:
        if prefill is not None:
            prefill.discard()
    global _EXIT_NOW
    _EXIT_NOW = True  # the model is written and closed: nothing is left to tear down


def _merge(recipe_path, out, device, dtype, seed, force, allow_pickle, shard_size, quiet, prefill):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evomerge.merge.engine import merge_to_disk, with_overrides
    from evomerge.recipe import Recipe

    recipe = with_overrides(Recipe.load(recipe_path), dtype=dtype, seed=seed)
    with Progress(
        TextColumn("merging"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.description}"),
        console=err_console,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=name)

        result = merge_to_disk(
            recipe,
            out,
            device=device,
            force=force,
            allow_pickle=allow_pickle,
            max_shard_bytes=_parse_size(shard_size),
            search_dirs=[recipe_path.resolve().parent],
            progress=progress,
            prefill=prefill,
        )
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if not quiet:
        gbps = result.input_bytes / 1e9 / max(result.seconds, 1e-9)
        console.print(
            f"wrote {result.out} ({result.tensors} tensors, {result.output_bytes / 1e6:.1f} MB) "
            f"in {result.seconds:.2f} s, {gbps:.2f} GB/s of input"
        )


@recipe_app.command("show")
def recipe_show(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE.yaml")],
    mergekit: Annotated[
        bool, typer.Option("--mergekit", help="Print it as a mergekit config.")
    ] = False,
) -> None:
    """Validate a recipe and print it (canonical form, or as mergekit YAML) with its hash."""
    from evomerge.mergekit_compat import to_mergekit_yaml
    from evomerge.recipe import Recipe

    recipe = Recipe.load(recipe_path)
    text = to_mergekit_yaml(recipe) if mergekit else recipe.to_yaml()
    console.print(f"# hash: {recipe.content_hash()}", highlight=False)
    sys.stdout.write(text)


convert_app = typer.Typer(help="Convert other tools' configs into evomerge searches.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@convert_app.command("mergekit-evolve")
def convert_mergekit_evolve(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yml", help="A mergekit-evolve config.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Directory for space.yaml and run.yaml (created; a non-empty one needs --force)."))],
    task_search_path: Annotated[Optional[list[Path]], typer.Option(help=(
        "mergekit-evolve's --task-search-path: a directory of lm-eval task YAMLs (repeatable)."))] = None,
    max_fevals: Annotated[int, typer.Option(help="mergekit-evolve's --max-fevals: the trial budget.")] = 100,
    sigma0: Annotated[float, typer.Option(help="mergekit-evolve's --sigma0: CMA-ES's initial step.")] = 1 / 6,
    batch_size: Annotated[Optional[int], typer.Option(help=(
        "mergekit-evolve's --batch-size: lm-eval's batch size."))] = None,
    num_layers: Annotated[Optional[int], typer.Option(help=(
        "The models' layer count, for layer_granularity when the first model is no local directory."))] = None,
    device: Annotated[str, typer.Option(help="Where the search merges and evaluates: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option(help="Replace space.yaml and run.yaml in a non-empty --out.")] = False,
) -> None:
    """Write an evomerge search space and run config equivalent to a mergekit-evolve config."""
    from evomerge.scaffold.mergekit_evolve import Options, convert_file

    written = convert_file(config, out, Options(
        task_search_path=tuple(str(p) for p in task_search_path or ()), max_fevals=max_fevals,
        sigma0=sigma0, batch_size=batch_size, num_layers=num_layers, device=device,
    ), force=force)
    console.print(f"wrote {' and '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
    run_file = out / "run.yaml"
    console.print(f"next: evomerge search --dry-run {run_file}, then evomerge search {run_file} "
                  f"--out RUN_DIR", highlight=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo models and merges go.")] = Path(
        "runs/demo-output"
    ),
) -> None:
    """Merge tiny generated models with the recipes in runs/demo/ (no download)."""
    from evomerge.demo import run

    run(out, console)


zoo_app = typer.Typer(help="The embedded toy model zoo (trained locally, offline).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def zoo_build(
    out: Annotated[
        Optional[Path], typer.Option(help="Zoo directory (default: zoo/ in the repository).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the zoo is up to date.")] = False,
    report: Annotated[
        bool, typer.Option(help="Print the accuracy table of models and merges afterwards.")
    ] = True,
    family: Annotated[
        str,
        typer.Option(
            help="Which zoo: 'default' (experts fine-tune every weight; zoo/) or 'blocks' (one "
            "identity block appended to the default base, each expert trains only that block; "
            "zoo-blocks/, where layer-path search pays)."
        ),
    ] = "default",
) -> None:
    """Train the base model and the experts (cached: a second call returns at once)."""
    from evomerge.zoo.build import FAMILIES, build_zoo, default_zoo_dir, read_manifest

    if family not in FAMILIES:
        raise typer.BadParameter(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    path = build_zoo(
        out or default_zoo_dir(family),
        FAMILIES[family](),
        force=force,
        log=lambda s: err_console.print(s, highlight=False),
        # A family that shares the default zoo's base copies it from there when it is built.
        base_from=None if family == "default" else default_zoo_dir(),
    )
    if report:
        manifest = read_manifest(path) or {}
        if "report" not in manifest:
            _zoo_report(path)
        else:
            _render_saved_report(manifest["report"])


def _zoo_report(path: Path) -> None:
    import json

    from evomerge.io.atomic import atomic_write_text
    from evomerge.zoo.build import MANIFEST, read_manifest
    from evomerge.zoo.report import render, zoo_report

    rep = zoo_report(path, log=lambda s: err_console.print(f"  {s}", highlight=False))
    render(rep, console)
    manifest = read_manifest(path)
    if manifest is not None:  # cache the table with the zoo it describes
        manifest["report"] = rep.to_dict()
        atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _render_saved_report(saved: dict) -> None:
    from evomerge.zoo.report import Row, ZooReport, render

    rep = ZooReport(saved["skills"], [Row(r["name"], r["scores"], None, r["note"]) for r in saved["rows"]])
    render(rep, console)


@zoo_app.command("report")
def zoo_report_cmd(
    zoo: Annotated[Optional[Path], typer.Option(help="Zoo directory.")] = None,
) -> None:
    """Score base, experts and merges of a built zoo on every skill's test split."""
    from evomerge.zoo.build import default_zoo_dir, read_manifest

    path = zoo or default_zoo_dir()
    if read_manifest(path) is None:
        raise EvomergeError(f"No built zoo in {path}; run `evomerge zoo build` first.")
    _zoo_report(path)


@zoo_app.command("data")
def zoo_data(
    check: Annotated[
        bool, typer.Option(help="Only check that evaluators/data matches the generator.")
    ] = False,
) -> None:
    """(Re)generate the zoo tasks' search/test data under evaluators/data/."""
    from evomerge.eval.task import evaluators_dir
    from evomerge.zoo.data import write_task_data

    changed = write_task_data(evaluators_dir(), check=check)
    if check and changed:
        raise RunFailedError(f"evaluators/ data differs from the generator: {', '.join(changed)}; run `evomerge zoo data` to regenerate it.")
    console.print(f"{len(changed)} file(s) {'differ' if check else 'written'}", highlight=False)


@app.command("eval")
def eval_cmd(
    model_dir: Annotated[str, typer.Argument(metavar="MODEL", help=(
        "A model directory, a Hub id (org/name[@revision]) or MODEL+ADAPTER (a PEFT LoRA adapter)."))],
    task: Annotated[
        list[str], typer.Option("--task", "-t", help="Task name or YAML path (repeatable).")
    ],
    fidelity: Annotated[
        Optional[int], typer.Option(help="Score a nested subset of this many examples.")
    ] = None,
    split: Annotated[str, typer.Option(help="search or test.")] = "test",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        help="Run the Python code a model directory ships (config.json `auto_map`); read it first.")] = False,
    include_path: Annotated[Optional[list[Path]], typer.Option(
        "--include-path", help="A directory of lm-eval task YAMLs for `-t lm_eval:NAME` tasks (repeatable; "
        "lm-eval's --include_path).")] = None,
    run: Annotated[Optional[Path], typer.Option(
        help="The run that searched this model: its lm-eval documents are not reported on (an exported "
             "model's own evomerge_splits.json is read anyway).")] = None,
    allow_seen_documents: Annotated[bool, typer.Option(
        help="Report on lm-eval documents the search scored (its scores then measure the fit, not "
             "generalisation).")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", help="Also write the scores to FILE.json in lm-eval's results format (every "
        "task kind; written only when every task scored).")] = None,
) -> None:
    """Score a model directory on one or more tasks and print a table."""
    import json
    import time

    from rich.table import Table

    from evomerge.eval import load_task
    from evomerge.eval.task import inline_ref
    from evomerge.io.sources import load_source_lm
    from evomerge.merge.engine import check_device

    if include_path:
        paths = [str(p) for p in include_path]
        task = [inline_ref(t, {"include_path": paths}, Path.cwd()) if t.startswith("lm_eval:") and
                not t.startswith("lm_eval:{") else t for t in task]
    if output is not None:
        from evomerge.eval.results_file import check_output_path

        check_output_path(output)
    evaluators = [load_task(t, split=split) for t in task]
    _refuse_seen_documents(model_dir, run, evaluators, allow_seen_documents)
    dev = check_device(device)
    started, clock = time.time(), time.perf_counter()
    model, tokenizer = load_source_lm(model_dir, device=dev, trust_remote_code=trust_remote_code)
    results = [ev.evaluate(model, tokenizer, fidelity) for ev in evaluators]
    if output is not None:
        _write_results_file(output, model_dir, model, tokenizer, evaluators, results, device=str(dev),
                            fidelity=fidelity, started=started, seconds=time.perf_counter() - clock)
    if json_out:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    else:
        table = Table(title=f"{model_dir} ({split} split)")
        for col in ("task", "objective", "value", "better", "examples", "seconds"):
            table.add_column(col)
        for ev, r in zip(evaluators, results, strict=True):
            if not r.ok:
                table.add_row(r.task, "-", f"[red]failed: {r.error}", "", "", f"{r.seconds:.2f}")
                continue
            for o in ev.objectives():
                table.add_row(
                    r.task,
                    o.name,
                    f"{r.values[o.name]:.4g}",
                    "higher" if o.direction == "maximize" else "lower",
                    str(r.n_examples),
                    f"{r.seconds:.2f}",
                )
        console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _write_results_file(path: Path, model_ref: str, model, tokenizer, evaluators, results, **run) -> None:
    from evomerge.eval.results_file import results_document, write_results_file

    failed = [r.task for r in results if not r.ok]
    if failed:  # a results file with tasks missing would read as a complete report
        err_console.print(f"{path} not written: {', '.join(failed)} failed.", highlight=False)
        return
    write_results_file(path, results_document(model_ref, model, tokenizer, evaluators, results, **run))


def _refuse_seen_documents(model: str, run: Path | None, evaluators, allowed: bool) -> None:
    from evomerge.search import task_splits

    recorded = task_splits.read_record(run) if run else {}
    if Path(model).is_dir():
        recorded = {**task_splits.read_record(Path(model), task_splits.EXPORTED), **recorded}
    seen = task_splits.seen_documents(recorded, evaluators)
    if seen and not allowed:
        raise EvomergeError(
            f"{run or model}: the search scored the documents this would report on ({'; '.join(seen)}). "
            f"Report the test split with the run's split options (`--split test`, the same "
            f"partition_seed and search_fraction), or pass --allow-seen-documents to report them anyway."
        )


space_app = typer.Typer(help="Inspect search spaces.", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("show")
def space_show(
    space_path: Annotated[Path, typer.Argument(metavar="SPACE.yaml")],
    seed: Annotated[
        Optional[int], typer.Option(help="Decode a random point (default: the cube's centre).")
    ] = None,
) -> None:
    """Validate a search space (any kind), list its genes and print a decoded sample recipe."""
    import random

    from rich.markup import escape
    from rich.table import Table

    from evomerge.search.space import load_space

    space = load_space(space_path)
    genes = space.genes()
    rng = random.Random(seed)
    point = [0.5] * len(genes) if seed is None else [rng.random() for _ in genes]
    recipe = space.decode(point)
    sources = space.source_models()
    table = Table(title=f"{space_path} ({space.kind} space): {len(genes)} genes")
    table.add_column("#", justify="right")
    table.add_column("gene")
    table.add_column("range")
    for i, g in enumerate(genes):
        table.add_row(str(i), escape(g.name), escape(g.describe()))
    console.print(table)
    console.print(f"source models: {', '.join(sources)}", highlight=False, markup=False)
    where = "the centre of the cube" if seed is None else f"a random point (seed {seed})"
    n = sum(s.num_layers for s in recipe.slices or [])
    depth = f", {n} layer{'s' if n != 1 else ''}" if recipe.slices else ""
    console.print(f"# recipe at {where}, hash {recipe.content_hash()[:12]}{depth}", highlight=False)
    sys.stdout.write(recipe.to_yaml())


@app.command()
def init(
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Directory for run.yaml and space.yaml (created; a non-empty one needs --force)."))],
    base: Annotated[str, typer.Option(help=(
        "The model the others were fine-tuned from: a directory or a Hub id org/name[@revision]."))],
    models: Annotated[list[str], typer.Option("--models", "--model", "-m", help=(
        "Models merged onto the base (repeatable or comma-separated): directories, Hub ids, "
        "MODEL+ADAPTER."))],
    tasks: Annotated[list[str], typer.Option("--tasks", "--task", "-t", help=(
        "What the search maximises (repeatable or comma-separated): lm-eval task, group or tag names "
        "(arc_easy, or lm_eval:arc_easy), evomerge task names (evaluators/tasks/) or task YAML paths."))],
    method: Annotated[Optional[list[str]], typer.Option("--method", "--methods", help=(
        "Merge method(s) searched (repeatable or comma-separated; several: a gene picks one). "
        "Default: ties."))] = None,
    trials: Annotated[int, typer.Option(help="Trial budget: candidate recipes evaluated.")] = 50,
    include_path: Annotated[Optional[list[Path]], typer.Option(help=(
        "A directory of your own lm-eval task YAMLs, found by name (repeatable)."))] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help=(
        "Few-shot examples for every lm-eval task (default: each task's own)."))] = None,
    apply_chat_template: Annotated[bool, typer.Option(
        "--apply-chat-template", help="Prompt lm-eval tasks through the model's chat template.")] = False,
    fidelity: Annotated[Optional[int], typer.Option(help=(
        "Examples scored per task and trial (default: all)."))] = None,
    optimizer: Annotated[str, typer.Option(help="tpe (a Pareto search), cmaes, gp, nsga2 or random.")] = "tpe",
    workers: Annotated[int, typer.Option(help=(
        "Evaluations at once, each worker holding every model."))] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help=(
        "auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or float16."))] = "auto",
    layers_per_group: Annotated[Optional[int], typer.Option(help=(
        "Own weights and densities per group of this many layers (default: one per model)."))] = None,
    seed: Annotated[int, typer.Option(help="Seed of the search and of DARE's masks.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace run.yaml and space.yaml in a non-empty --out.")] = False,
) -> None:
    """Write a commented run config and search space for your own models (flags only, no prompts)."""
    from evomerge.scaffold.init import DEFAULT_METHOD, InitOptions, split_values
    from evomerge.scaffold.init import init as write_init

    result = write_init(InitOptions(
        out=out, base=base, models=split_values(models), tasks=split_values(tasks),
        methods=split_values(method) or [DEFAULT_METHOD], trials=trials, include_paths=list(include_path or []),
        num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, fidelity=fidelity,
        optimizer=optimizer, workers=workers, device=device, dtype=dtype,
        layers_per_group=layers_per_group, seed=seed, force=force,
    ))
    console.print(f"wrote {' and '.join(str(p) for p in result.files)}", highlight=False)
    for note in result.notes:
        console.print(note, highlight=False)
    run_file = result.files[0]
    console.print(f"next: evomerge search --dry-run {run_file}, then evomerge search {run_file} "
                  f"--out {out / 'output'}", highlight=False, soft_wrap=True)


@app.command()
def search(
    run_config: Annotated[Path, typer.Argument(metavar="RUN.yaml", help="A run config (see runs/).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (ledger, run.yaml); "
                                                "required unless --dry-run.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Override the trial budget.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Run the evaluations on Ray: auto (the running cluster), ray://HOST:PORT, or local "
        "(start Ray here). Sets executor.kind to ray.")] = None,
    take_over: Annotated[bool, typer.Option(
        help="Take the run's lease from a controller that is gone (shared ledgers).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check everything the run needs, print its plan and a wall-time estimate "
        "(one timed evaluation); write nothing.")] = False,
) -> None:
    """Search a space for merge recipes; progress on stderr, a summary on stdout."""
    from evomerge.run import run_search
    from evomerge.search.progress import ProgressPrinter

    if dry_run:
        from evomerge.dry_run import dry_run as plan_run
        from evomerge.search.plan import print_plan

        print_plan(plan_run(run_config, out, trials=trials, ray_address=_ray_address(ray_address)), console)
        return
    if out is None:
        raise EvomergeError("search needs --out RUN_DIR, the run directory its ledger and config go to "
                            "(only --dry-run goes without it).")
    EvomergeGroup.interrupt_hint = f"; finished trials are kept: `evomerge resume {out}` goes on"
    result = run_search(
        run_config, out, trials=trials, log=lambda s: err_console.print(s, highlight=False),
        progress=ProgressPrinter(err_console), take_over=take_over,
        ray_address=_ray_address(ray_address),
    )
    _print_search_result(result)


def _ray_address(value: str | None) -> str | None:
    """``--ray-address local`` starts Ray in this process (the config's ``address: null``)."""
    return None if value is None else ("" if value == "local" else value)


def _utilisation(result) -> str:
    u = result.utilisation or {}
    if "slot_utilisation" not in u:
        return ""
    slots = [v for k, v in sorted(u.items()) if k.startswith("slot_utilisation/")]
    each = f" (per slot {', '.join(f'{v:.0%}' for v in slots)})" if len(slots) > 1 else ""
    return f"; slots busy {u['slot_utilisation']:.0%} of the time{each}"


def _print_search_result(result) -> None:
    _print_search_summary(result)
    if result.all_failed:
        raise RunFailedError(
            f"No trial of {result.run_dir} was scored: all {result.failed} evaluations failed, the "
            f"first with: {result.first_error}. Check the sources and tasks with `evomerge search "
            "--dry-run RUN.yaml`, fix the run config, and start a new run.")


def _print_search_summary(result) -> None:
    best = "none" if result.best_fitness is None else f"trial {result.best_trial}, fitness {result.best_fitness:.4f}"
    if result.infeasible:
        best += f" ({result.infeasible} infeasible trial(s) not counted)"
    saved = ""
    if result.examples_at_top and result.examples_scored < result.examples_at_top:
        saved = (
            f"; multi-fidelity scored {result.examples_scored:.0f} examples instead of "
            f"{result.examples_at_top:.0f} ({1 - result.examples_scored / result.examples_at_top:.0%} saved)"
        )
    console.print(
        f"{result.evaluated} evaluations in this session ({result.trials} trials in the run, "
        f"{result.failed} evaluations failed, {result.duplicates} duplicates told from earlier results); "
        f"best: {best}{saved}; {result.ledger} ledger in {result.run_dir}{_utilisation(result)}",
        highlight=False,
    )


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    trials: Annotated[Optional[int], typer.Option(help="Raise the trial budget.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Continue on Ray: auto, ray://HOST:PORT, or local.")] = None,
    take_over: Annotated[bool, typer.Option(
        help="Take the run's lease from a controller that is gone (shared ledgers).")] = False,
    ledger_url: Annotated[Optional[str], typer.Option(
        help="Resume a run kept in a database from a machine without its run directory: the "
        "database URL (no password; see --password-env). RUN_DIR is then created here.")] = None,
    run: Annotated[Optional[str], typer.Option(help="The run's name in that database.")] = None,
    password_env: Annotated[Optional[str], typer.Option(
        help="The environment variable holding the database password.")] = None,
    allow_changed_sources: Annotated[bool, typer.Option(
        "--allow-changed-sources", help="Resume although a source model's files changed since the "
        "run started (its recorded scores are then of the old weights).")] = False,
) -> None:
    """Continue an interrupted search: finished trials are kept, never run again."""
    from evomerge.run import resume_search
    from evomerge.search.progress import ProgressPrinter

    ledger = None
    if ledger_url is not None:
        ledger = {"url": ledger_url, "run": run, "password_env": password_env}
    EvomergeGroup.interrupt_hint = f"; finished trials are kept: `evomerge resume {run_dir}` goes on"
    result = resume_search(
        run_dir, trials=trials, log=lambda s: err_console.print(s, highlight=False),
        progress=ProgressPrinter(err_console), take_over=take_over,
        ray_address=_ray_address(ray_address), ledger=ledger,
        allow_changed_sources=allow_changed_sources,
    )
    _print_search_result(result)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    trial: Annotated[Optional[int], typer.Option(help="Trial number (default: the best).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    allow_infeasible: Annotated[bool, typer.Option(
        help="Export a --trial that misses the run's constraints.")] = False,
) -> None:
    """Write a trial of a search as a model: weights, recipe, mergekit YAML and a model card."""
    from evomerge.search.export import export_trial

    number, path = export_trial(run_dir, out, trial=trial, force=force, device=device,
                                allow_infeasible=allow_infeasible)
    console.print(f"trial {number} -> {path}", highlight=False)


@app.command()
def front(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Print the Pareto front of a run's objectives (and its hypervolume)."""
    from rich.table import Table

    from evomerge.search.front import run_front

    objectives, trials, _, hv = run_front(run_dir)
    if not trials:
        console.print(f"{run_dir}: no trial meets the run's constraints; its front is empty.", highlight=False)
        return
    table = Table(title=f"Pareto front of {run_dir}: {len(trials)} trial(s)")
    table.add_column("trial", justify="right")
    for o in objectives:
        table.add_column(f"{o.key} ({'max' if o.sign > 0 else 'min'})", justify="right")
    table.add_column("recipe (method or layer path)")
    from evomerge.recipe import Recipe

    for t in trials:
        summary = Recipe.from_yaml(t.recipe, f"trial {t.trial}").summary()
        table.add_row(str(t.trial), *(f"{t.scores[o.key]:.4g}" for o in objectives), summary)
    console.print(table)
    if hv is not None:
        console.print(f"hypervolume (reference: each objective's `reference:`, else its worst value "
                      f"over the run; the same number as MLflow's): {hv:.4g}")


@app.command()
def ui(
    run_dir: Annotated[Optional[Path], typer.Argument(metavar="[RUN_DIR]", help="A search run (default: the newest under runs/).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port (default: a free one).")] = None,
) -> None:
    """Start the MLflow UI on a search run's tracking store; print links to its front and its trials.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the server's whole process tree."""
    from evomerge.tracking.ui import find_search, start_ui, stop_group, store_of, wait_until_up
    from evomerge.tracking.view import FRONT_HTML, FRONT_PLOT, artifact_url, runs_table_url

    if run_dir is None:
        runs = sorted((p.parent for p in Path("runs").glob("*/run.yaml")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise EvomergeError("No search run under runs/; give RUN_DIR.")
        run_dir = runs[-1]
    uri = store_of(run_dir)
    try:
        search = find_search(uri, run_dir)
    except Exception as err:  # noqa: BLE001 - the links are a convenience; the UI still starts
        err_console.print(f"warning: could not find the search in {uri} ({type(err).__name__}: {err}); "
                          "the link opens MLflow's home page", highlight=False)
        search = None
    if host != "127.0.0.1":
        err_console.print(f"warning: the UI is reachable by anyone who can reach {host}", highlight=False)
    proc, url = start_ui(uri, host, port)
    try:  # every way out (server exit, error, Ctrl-C, SIGTERM, SIGHUP) ends the server's group
        wait_until_up(url, proc)
        if search is None:
            console.print(f"MLflow UI for {run_dir}: {url}  (Ctrl-C stops it)", highlight=False)
        else:
            front = runs_table_url(url, search.experiment_id, search.front_view)
            trials = runs_table_url(url, search.experiment_id, search.view)
            console.print(f"MLflow UI for {run_dir}, the front's members, best fitness first: {front}  "
                          "(Ctrl-C stops it)", highlight=False, soft_wrap=True)
            console.print(f"every trial, nested under run '{search.run_name}': {trials}", highlight=False,
                          soft_wrap=True)
            where = f"front plot: run '{search.run_name}', artifact {FRONT_PLOT} (interactive: {FRONT_HTML})"
            if search.front_logged:
                plot = artifact_url(url, search.experiment_id, search.parent_id, FRONT_PLOT)
                console.print(f"{where}: {plot}", highlight=False, soft_wrap=True)
            else:
                console.print(f"{where}, logged when the search ends", highlight=False, soft_wrap=True)
        code = proc.wait()
    finally:
        stop_group(proc)
    raise typer.Exit(code)


@app.command()
def dashboard(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port (default: a free one).")] = None,
    refresh: Annotated[float, typer.Option(
        help="Seconds between updates of the mirror while the dashboard runs (0: none).")] = 10.0,
) -> None:
    """Mirror a search run into Optuna and start optuna-dashboard on it (docs/optuna.md).

    The storage is tracking.optuna's in the run config, else RUN_DIR/optuna.journal. SIGINT
    (Ctrl-C), SIGTERM and SIGHUP stop the server."""
    from evomerge.tracking.dashboard import (
        open_mirror,
        serve_until_stopped,
        start_dashboard,
        study_url,
        update_mirror,
        wait_until_answers,
    )
    from evomerge.tracking.optuna_mirror import shown
    from evomerge.tracking.ui import stop_group

    mirror = open_mirror(run_dir, log=lambda s: err_console.print(s, highlight=False))
    done = update_mirror(mirror)
    console.print(f"{done.trials} trials of {run_dir} in Optuna study {done.study!r} at {shown(done.storage)} "
                  f"({done.added} added now)", highlight=False, soft_wrap=True)
    if host != "127.0.0.1":
        err_console.print(f"warning: the dashboard is reachable by anyone who can reach {host}", highlight=False)
    warned = False

    def refresh_mirror() -> None:
        nonlocal warned
        try:
            update_mirror(mirror)
            warned = False
        except Exception as err:  # noqa: BLE001 - the dashboard goes on with what it has
            if not warned:
                err_console.print(f"warning: the mirror could not be updated ({err}); retrying every "
                                  f"{refresh:g} s", highlight=False)
            warned = True

    proc, url = start_dashboard(done.storage, host, port)
    try:  # every way out (server exit, error, Ctrl-C, SIGTERM, SIGHUP) ends the server's group
        wait_until_answers(url, proc)
        console.print(f"optuna-dashboard for {run_dir}, study {done.study!r}: {study_url(url, done.study_id)}  "
                      "(Ctrl-C stops it)", highlight=False, soft_wrap=True)
        code = serve_until_stopped(proc, refresh, refresh_mirror)
    finally:
        stop_group(proc)
    raise typer.Exit(code)


@app.command()
def track(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Log to MLflow whatever of a run's ledger is not there yet (after tracking failures)."""
    from evomerge.config.run import RunConfig
    from evomerge.search.constraints import bind_constraints
    from evomerge.search.ledgers import open_ledger
    from evomerge.search.objectives import bind_objectives
    from evomerge.search.rundir import RUN_FILE, has_run
    from evomerge.search.space import load_space
    from evomerge.tracking.mlflow_tracker import MLflowTracker

    if not has_run(run_dir):
        raise EvomergeError(f"{run_dir} is not a search run (no ledger).")
    config = RunConfig.load(run_dir / RUN_FILE)
    tasks, objectives = bind_objectives(config, run_dir / RUN_FILE)
    _, constraints = bind_constraints(config, run_dir / RUN_FILE, tasks)
    space = load_space(config.space)
    ledger = open_ledger(run_dir, readonly=True)
    try:
        records = ledger.completions()
    finally:
        ledger.close()
    tracker = MLflowTracker(run_dir, config, objectives, space.genes(), constraints=constraints,
                            settings=config.tracking, log=lambda s: err_console.print(s, highlight=False))
    if not tracker.finish(records):
        raise typer.Exit(1)
    console.print(f"{len(records)} evaluations in MLflow at {tracker.uri}", highlight=False)


# Set by a command whose work is done and on disk (every file closed): the console entry point
# then leaves without the interpreter's teardown, which after a merge took ~1 s (freeing the
# mapped inputs and torch's modules) of a ~6 s command.
_EXIT_NOW = False


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except SystemExit as done:
        if not _EXIT_NOW:
            raise
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
