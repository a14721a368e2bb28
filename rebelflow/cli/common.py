"""What every `rebelflow` command shares: the Typer app, the rich consoles, the option types, a run's
console (the quiet console and its log file), the one-message report of a failed run, table columns."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rebelflow.ops.console import run_console

app = typer.Typer(help="Iterative RLHF with REBEL and REFUEL as Prefect flows.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[str, typer.Argument(help="campaign YAML, e.g. configs/demo-rebel.yaml")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override, e.g. --set generate.n=4 (repeatable)")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="artifact store root (default: the config's)")]
RehearseOpt = Annotated[bool, typer.Option(
    "--rehearse", help="run the preset on this CPU first: tiny models of the same families, generated data, "
    "small sizes, every substitution printed; its own store (<store>-rehearsal unless --store)")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="show everything here (Prefect's log lines, stage output, wandb, warnings) instead of "
    "in the run's log file")]


@contextlib.contextmanager
def console_for(store_root: str, name: str, verbose: bool):
    """A run's console: the progress lines and the CLI's tables here, the rest in <store>/logs/run-….log
    unless verbose."""
    path = Path(store_root) / "logs" / f"run-{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with run_console(path, (console, err), quiet=not verbose):
        if not verbose:
            err.print(f"Full output (Prefect, stages, wandb, warnings): {path}   (-v shows it here)", highlight=False)
        try:
            yield
        except (typer.Exit, KeyboardInterrupt):
            raise
        except BaseException:
            if not verbose:
                err.print(f"The run stopped on an unexpected error; its full output: {path}", highlight=False)
            raise


def report(exc: BaseException, store_root) -> None:
    """The one message of a failed run (its traceback, if any, is in the stage's log), then exit 1."""
    err.print(f"[bold red]{type(exc).__name__}[/]: {escape(str(exc))}", markup=True, highlight=False)
    err.print(f"Finished stages are kept in {store_root}; fix the problem and run the same command again.")
    raise typer.Exit(1) from None


def add_column(table: Table, name: str, ids: list[str] | None = None) -> None:
    """A table column; artifact ids are never cut (a cut id would not work in `rebelflow show`)."""
    if ids is None:
        table.add_column(name)
    else:
        table.add_column(name, no_wrap=True, min_width=max((len(i) for i in ids), default=len(name)))

