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

from .calibrate import PARAMS as calibrate_params
from .calibrate import calibrate
from .runtime.console import error_exit, setup_logging
from .embed import PARAMS as embed_params
from .embed import embed
from .errors import ConfigError, suggest
from .finetune import PARAMS as finetune_params
from .finetune import finetune
from .embed.importer import PARAMS as import_params
from .embed.importer import import_embeddings
from .loop import PARAMS as loop_params
from .loop import loop
from .params import REQUIRED, cli_parameters
from .select import PARAMS as select_params
from .select import get_selector, list_selectors, select

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Active finetuning at scale on Ray: embed an image pool, select what to label, finetune.")


def _generated(body, params: dict, *, arguments=(), required=(), method_params: dict | None = None):
    """``body(**values)`` made a typer command whose arguments and options are the declared ``params``
    (and ``method_params``, each defaulting to None: the method's own default)."""
    sig = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             annotation=Annotated[str, typer.Argument(help=params[n].help)]) for n in arguments]
    options = {k: (dataclasses.replace(p, default=REQUIRED) if k in required else p)
               for k, p in params.items() if k not in arguments}
    sig += cli_parameters(options)
    sig += cli_parameters({k: p for k, p in (method_params or {}).items() if k not in params}, method_defaults=True)
    sig.sort(key=lambda p: p.default is not inspect.Parameter.empty and p.kind != p.POSITIONAL_OR_KEYWORD)

    body.__signature__ = inspect.Signature(sig)
    body.__annotations__ = {p.name: p.annotation for p in sig}
    return body


def _embed_command(**values):
    """Embed images into a Parquet embedding store (Ray Data; resumable).

    Example: activeft embed s3://bucket/images/ --output s3://bucket/stores/pool --pretrained hub
    """
    store = embed(**values)
    run = store.manifest["last_run"]
    typer.echo(f"{store.uri}: {len(store)} rows, dim {store.dim}, {store.manifest['errors']} errors; "
               f"embedded {run['embedded']} images in {run['seconds']} s ({run['images_per_s']} images/s)")


def _import_command(**values):
    """Write the embedding-store contract from embeddings you already have (CLIP, DINO, ...).

    Example: activeft import-embeddings clip.parquet --output stores/clip --id-column key --embedding-column vec
    """
    store = import_embeddings(**values)
    typer.echo(f"{store.uri}: {len(store)} rows, dim {store.dim}")


def _select_command(**values):
    """Select the samples worth labeling, sharded over Ray Train workers. The method's own
    parameters (after the common ones) default to the method's defaults.

    Example: activeft select stores/pool --budget 1% --output sel/activeft --num-workers 8 --use-gpu
    """
    common = {k: values.pop(k) for k in select_params}
    sel = select(**common, **{k: v for k, v in values.items() if v is not None})
    info = sel.info
    typer.echo(f"{common['output']}: {len(sel)} of {info['pool_size']} selected by {common['method']} in "
               f"{info['seconds_total']} s; coverage {info['coverage']:.4f} (random: {info['coverage_random']:.4f})")


def _method_params() -> dict:
    """Every registered selector's parameters, each once (its help names the methods using it)."""
    out: dict = {}
    for name in list_selectors():
        for key, p in get_selector(name).params.items():
            out.setdefault(key, []).append((name, p))
    return {k: dataclasses.replace(v[0][1], help="; ".join(f"{m}: {p.help} (default {p.default})" for m, p in v))
            for k, v in out.items()}


def _calibrate_command(**values):
    """ActiveDC: add pseudo-labeled pool samples drawn from calibrated class distributions.

    Example: activeft calibrate stores/pool --selection sel/activeft --labels labels.csv --output cal/
    """
    table = calibrate(**values)
    pseudo = sum(s == "pseudo" for s in table.column("source").to_pylist())
    typer.echo(f"{values['output']}: {table.num_rows - pseudo} labeled + {pseudo} pseudo-labeled samples")


def _finetune_command(**values):
    """Finetune on the labeled set: a linear head on the embeddings, or the whole backbone on Ray Train.

    Example: activeft finetune stores/pool --train cal/calibrated.parquet --val-store stores/test -o runs/r1 --mode full
    """
    info = finetune(**values)
    typer.echo(f"{values['output']}: {values['mode']} on {info['config']['train_rows']} samples, "
               f"{len(info['classes'])} classes; val top-1 final {info['final_val_accuracy']}, "
               f"best {info['best_val_accuracy']}")


def _loop_command(**values):
    """Multi-round active learning through a proxy (ASVP), with feature refresh and LP-FT.

    Example: activeft loop stores/pool --state loops/l1 --round-budget 1000 --rounds 5 --labels labels.csv
    """
    st = loop(**values)
    done = sum(r["status"] == "labeled" for r in st["rounds"])
    typer.echo(f"{values['state']}: {done} of {len(st['config']['budgets'])} rounds done, {st['cost']['labels']} "
               f"labels; final model: {st['final'] and st['final']['run']}")


app.command("embed")(_generated(_embed_command, embed_params, arguments=("source",)))
app.command("import-embeddings")(_generated(_import_command, import_params, arguments=("table",)))
app.command("select")(_generated(_select_command, select_params, arguments=("store",), required=("output",),
                                 method_params=_method_params()))
app.command("calibrate")(_generated(_calibrate_command, calibrate_params, arguments=("store",),
                                    required=("output",)))
app.command("finetune")(_generated(_finetune_command, finetune_params, arguments=("store",)))
app.command("loop")(_generated(_loop_command, loop_params, arguments=("store",)))


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


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        app(args=argv, prog_name="activeft")  # usage errors: typer prints them and exits 2
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
