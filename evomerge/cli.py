"""The ``evomerge`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from evomerge.errors import EvomergeError

app = typer.Typer(
    help="evomerge: search, apply and export model-merge recipes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipe_app = typer.Typer(help="Inspect and convert recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

console = Console()
err_console = Console(stderr=True)


def _fail(err: EvomergeError) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evomerge.merge.engine import merge_to_disk, with_overrides
    from evomerge.recipe import Recipe

    try:
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
            )
    except EvomergeError as err:
        _fail(err)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if not quiet:
        gbps = result.input_bytes / 1e9 / max(result.seconds, 1e-9)
        console.print(
            f"wrote {result.out} ({result.tensors} tensors, {result.output_bytes / 1e6:.1f} MB) "
            f"in {result.seconds:.1f} s, {gbps:.2f} GB/s of input"
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

    try:
        recipe = Recipe.load(recipe_path)
        text = to_mergekit_yaml(recipe) if mergekit else recipe.to_yaml()
    except EvomergeError as err:
        _fail(err)
    console.print(f"# hash: {recipe.content_hash()}", highlight=False)
    sys.stdout.write(text)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo models and merges go.")] = Path(
        "runs/demo-output"
    ),
) -> None:
    """Merge tiny generated models with the recipes in runs/demo/ (no download)."""
    from evomerge.demo import run

    try:
        run(out, console)
    except EvomergeError as err:
        _fail(err)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
