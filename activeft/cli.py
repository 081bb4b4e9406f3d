"""The ``activeft`` command line: one sub-command per stage, mirroring the Python API.

Bad input ends in one line on stderr and exit code 1 (usage errors: 2); set
``ACTIVEFT_DEBUG=1`` for the full traceback. Ray is started locally on demand, or joined at
``RAY_ADDRESS`` (which ``ray job submit`` sets).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from typing import Annotated

import typer

from . import stages
from .errors import ConfigError, suggest
from .params import REQUIRED, cli_help, cli_parameters, docstring_summary
from .runtime.console import error_exit, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Active finetuning at scale on Ray: embed an image pool, select what to label, finetune.")


def _command(entry: stages.Stage):
    """The sub-command of a stage: its declared parameters as arguments and options (and its command's
    further options, each None: the method's own default), its docstring's first line and example as help;
    it runs the stage and prints its summary."""
    command = entry.command
    params, extra = entry.params, command.options() if command.options else {}

    def body(**values):
        given = {k: values.pop(k) for k in params}
        result = entry.fn(**given, **{k: v for k, v in values.items() if v is not None})
        if command.summary:
            typer.echo(command.summary(result, given))

    sig = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             annotation=Annotated[str, typer.Argument(help=cli_help(params[n]))])
           for n in command.arguments]
    options = {k: (dataclasses.replace(p, default=REQUIRED) if k in command.required else p)
               for k, p in params.items() if k not in command.arguments and not k.startswith("_")}
    sig += cli_parameters(options)
    sig += cli_parameters({k: p for k, p in extra.items() if k not in params}, method_defaults=True)
    sig.sort(key=lambda p: p.default is not inspect.Parameter.empty and p.kind != p.POSITIONAL_OR_KEYWORD)
    body.__signature__ = inspect.Signature(sig)
    body.__annotations__ = {p.name: p.annotation for p in sig}
    summary = docstring_summary(entry.fn)
    body.__doc__ = summary + (f"\n\nExample: {command.example}" if command.example else "")
    return body


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_pipeline(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="Pipeline: curate (embed, select, report, export), train "
                                                 "(calibrate, finetune, evaluate) or active_loop (multi-round ASVP). "
                                                 "Its own options follow: --config X.yaml [--set KEY=VALUE ...] "
                                                 "[--date D]; `activeft run NAME --help` lists them.")],
):
    """Run a pipeline from a config, resuming at its first unfinished stage.

    The same parser serves `python pipelines/NAME.py`, e.g. on a cluster:
    ray job submit --working-dir . -- python pipelines/curate.py --config X.yaml

    Example: activeft run curate --config configs/demo.yaml --set select.method=kmeans
    """
    import importlib

    from .pipeline import main as pipeline_main

    try:
        module = importlib.import_module(f"activeft.pipelines.{pipeline}")
    except ModuleNotFoundError:
        import pkgutil

        from . import pipelines

        names = [m.name for m in pkgutil.iter_modules(pipelines.__path__)]
        raise ConfigError(suggest(pipeline, names, "pipeline")) from None
    code = pipeline_main(module.run, ctx.args, prog=f"activeft run {pipeline}")
    if code:
        raise typer.Exit(code)


@app.command("demo-data")
def demo_data(
    folder: Annotated[str, typer.Argument(help="Folder to write the PNG files into.")] = "data/digits",
    size: Annotated[int, typer.Option(help="Side of the upscaled PNGs in pixels.")] = 32,
):
    """Write a small real image set for trying activeft: scikit-learn's 1,797 handwritten digits as PNGs,
    and a small backbone trained on them without labels (SimCLR, seconds on a CPU).

    Needs scikit-learn (pip install "activeft[demo]"). Also writes FOLDER/_manifest.csv with the labels
    and FOLDER/backbone.safetensors (timm test_resnet at 16 px, as configs/demo.yaml embeds it).
    """
    from .demo import BACKBONE, MODEL, write_backbone, write_digits

    n = write_digits(folder, size)
    encoder = write_backbone(folder, size)
    typer.echo(f"{folder}: {n} images; {os.path.join(folder, BACKBONE)}: {MODEL} trained without labels in "
               f"{encoder.seconds} s (SimCLR, NT-Xent {encoder.losses[0]:.2f} -> {encoder.losses[-1]:.2f})")


def _app() -> typer.Typer:
    """The command line: one sub-command per stage of the table (registered now), ``run`` and ``demo-data``."""
    import activeft  # noqa: F401  (registers every stage)

    cli = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      pretty_exceptions_enable=False, help=app.info.help)
    for entry in stages.list_stages():
        if entry.command:
            cli.command(entry.command.name)(_command(entry))
    for info in app.registered_commands:
        cli.registered_commands.append(info)
    return cli


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        _app()(args=argv, prog_name="activeft")  # usage errors: typer prints them and exits 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except KeyboardInterrupt:
        print("activeft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return error_exit(e, "activeft")
    return 0

if __name__ == "__main__":
    sys.exit(main())
