"""The ``activeft`` command line: one sub-command per stage, mirroring the Python API.

Bad input ends in one line on stderr and exit code 1 (usage errors: 2); set
``ACTIVEFT_DEBUG=1`` for the full traceback. Ray is started locally on demand, or joined at
``RAY_ADDRESS`` (which ``ray job submit`` sets).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Annotated

import typer

from .console import error_exit, setup_logging
from .errors import ConfigError, suggest
from .params import REQUIRED, cli_parameters
from .select import PARAMS as select_params
from .select import get_selector, list_selectors

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Active finetuning at scale on Ray: embed an image pool, select what to label, finetune.")

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an existing output instead of failing on it.")]


def _generated(body, params: dict, *, arguments=(), required=(), method_params: dict | None = None):
    """``body(**values)`` as a typer command whose arguments and options are the declared ``params``
    (and ``method_params``, each defaulting to None: the method's own default)."""
    sig = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             annotation=Annotated[str, typer.Argument(help=params[n].help)]) for n in arguments]
    options = {k: (dataclasses.replace(p, default=REQUIRED) if k in required else p)
               for k, p in params.items() if k not in arguments}
    sig += cli_parameters(options)
    sig += cli_parameters({k: p for k, p in (method_params or {}).items() if k not in params}, method_defaults=True)
    sig.sort(key=lambda p: p.default is not inspect.Parameter.empty and p.kind != p.POSITIONAL_OR_KEYWORD)

    def command(**values):
        return body(**values)

    command.__signature__ = inspect.Signature(sig)
    command.__annotations__ = {p.name: p.annotation for p in sig}
    command.__doc__ = body.__doc__
    return command


@app.command()
def embed(
    source: Annotated[str, typer.Argument(help="Image directory or prefix (local, s3://, gs://, any fsspec URI), "
                                               "or a .csv/.parquet manifest with a 'uri' column and optional 'id', "
                                               "'label' and pass-through columns. For very large pools use a "
                                               "manifest: listing billions of keys is slow.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Embedding store to write (directory or prefix).")],
    model: Annotated[str, typer.Option(help="timm model name.")] = "vit_small_patch16_224.dino",
    pretrained: Annotated[str, typer.Option(help="Weights: 'hub' (timm download), 'none' (random init) or a "
                                                 ".safetensors/.pth path or URI.")] = "hub",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    image_size: Annotated[int | None, typer.Option(help="Override the model's input size.")] = None,
    num_actors: Annotated[str | None, typer.Option(help="Model actors: N, or MIN,MAX to autoscale. Default: one "
                                                           "per GPU, or one per 4 CPUs.")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option(help="GPUs per actor (fractions share a GPU). "
                                                                 "Default: 1 on GPU clusters.")] = None,
    partition_size: Annotated[int, typer.Option(help="Images per input partition = rows per output shard "
                                                     "(the unit of resume).")] = 10_000,
    dtype: Annotated[str, typer.Option(help="Storage dtype of embeddings: float32 or float16.")] = "float32",
    max_error_fraction: Annotated[float, typer.Option(help="Fail when more images than this fraction cannot be "
                                                           "decoded (they are listed in _errors.parquet).")] = 0.01,
    resume: Resume = False,
    overwrite: Overwrite = False,
):
    """Embed images into a Parquet embedding store (Ray Data; resumable).

    Example: activeft embed s3://bucket/images/ --output s3://bucket/stores/pool --pretrained hub
    """
    from .embed import embed as run

    store = run(source, output, model=model, pretrained=pretrained, batch_size=batch_size, image_size=image_size,
                num_actors=num_actors, gpus_per_actor=gpus_per_actor, partition_size=partition_size, dtype=dtype,
                max_error_fraction=max_error_fraction, resume=resume, overwrite=overwrite)
    run_ = store.manifest["last_run"]
    typer.echo(f"{store.uri}: {len(store)} rows, dim {store.dim}, {store.manifest['errors']} errors; "
               f"embedded {run_['embedded']} images in {run_['seconds']} s ({run_['images_per_s']} images/s)")


@app.command("import-embeddings")
def import_embeddings(
    table: Annotated[str, typer.Argument(help="Parquet table with an id and an embedding (list) column, "
                                              "or a .npy (N, D) matrix.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Embedding store to write.")],
    ids: Annotated[str | None, typer.Option(help="For .npy: ids file (.txt one per line, or a one-column "
                                                    ".csv/.parquet).")] = None,
    id_column: Annotated[str, typer.Option(help="Id column of the Parquet table.")] = "id",
    embedding_column: Annotated[str, typer.Option(help="Embedding column of the Parquet table.")] = "embedding",
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize",
                                            help="L2-normalise the vectors (default); with --no-normalize "
                                                 "they must already be unit-norm.")] = True,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float32 or float16.")] = "float32",
    partition_size: Annotated[int, typer.Option(help="Rows per shard.")] = 100_000,
    overwrite: Overwrite = False,
):
    """Write the embedding-store contract from embeddings you already have (CLIP, DINO, ...).

    Example: activeft import-embeddings clip.parquet --output stores/clip --id-column key --embedding-column vec
    """
    from .importer import import_embeddings as run

    store = run(table, output, ids=ids, id_column=id_column, embedding_column=embedding_column,
                normalize=normalize, dtype=dtype, partition_size=partition_size, overwrite=overwrite)
    typer.echo(f"{store.uri}: {len(store)} rows, dim {store.dim}")


def _select_command(**kwargs):
    """Select the samples worth labeling, sharded over Ray Train workers. The method's own
    parameters (below the common ones) default to the method's defaults.

    Example: activeft select stores/pool --budget 1% --output sel/activeft --num-workers 8 --use-gpu
    """
    from .select import select as run

    common = {k: kwargs.pop(k) for k in SELECT_PARAMS}
    sel = run(**common, **{k: v for k, v in kwargs.items() if v is not None})
    info = sel.info
    typer.echo(f"{common['output']}: {len(sel)} of {info['pool_size']} selected by {common['method']} in "
               f"{info['seconds_total']} s; coverage {info['coverage']:.4f} (random: {info['coverage_random']:.4f})")


def _method_params() -> dict:
    """Every registered selector's parameters, each once (help prefixed by the methods using it)."""
    out: dict = {}
    for name in list_selectors():
        for key, p in get_selector(name).params.items():
            out.setdefault(key, []).append((name, p))
    return {k: dataclasses.replace(v[0][1], help="; ".join(f"{m}: {p.help} (default {p.default})" for m, p in v))
            for k, v in out.items()}


SELECT_PARAMS = {k: v for k, v in select_params.items() if k != "store"}
app.command("select")(_generated(_select_command, select_params, arguments=("store",), required=("output",),
                                 method_params=_method_params()))


@app.command()
def calibrate(
    store: Annotated[str, typer.Argument(help="Embedding store the selection was made from.")],
    selection: Annotated[str, typer.Option(help="Selection directory whose ids were labeled.")],
    labels: Annotated[str, typer.Option(help="Table (.csv/.parquet) 'id,label' for exactly the selected ids.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Directory for calibrated.parquet and "
                                                             "calibration.json.")],
    alpha: Annotated[float, typer.Option(help="beta = 1 - exp(-alpha * labeled %) weighs the labeled class mean "
                                              "against its cluster's mean (official: 0.7 on CIFAR-10 1%).")] = 0.7,
    xi: Annotated[float, typer.Option(help="Added to every entry of the cluster covariance.")] = 0.2,
    tukey_lambda: Annotated[float, typer.Option(help="Tukey transform exponent (0: log).")] = 0.5,
    clusters: Annotated[int | None, typer.Option(help="k of the k-means (default: number of labeled "
                                                      "classes).")] = None,
    samples_per_label: Annotated[str, typer.Option(help="Draws per labeled sample: auto (2 below 50 labels per "
                                                        "class, else 1) or N.")] = "auto",
    emd_filter: Annotated[bool, typer.Option("--emd-filter", help="Keep a draw only if it does not raise the 1-D "
                                                                  "Wasserstein distance of mean activations.")] = False,
    max_draws: Annotated[int, typer.Option(help="Draws per labeled sample before it is skipped.")] = 50,
    kmeans_runs: Annotated[int, typer.Option(help="k-means runs; the lowest inertia is kept.")] = 10,
    num_workers: Annotated[int, typer.Option(help="Ray Train workers (1: in this process).")] = 1,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="Run on GPUs.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Overwrite = False,
):
    """ActiveDC: add pseudo-labeled pool samples drawn from calibrated class distributions.

    Example: activeft calibrate stores/pool --selection sel/activeft --labels labels.csv --output cal/
    """
    from .calibrate import calibrate as run

    table = run(store, selection=selection, labels=labels, output=output, alpha=alpha, xi=xi,
                tukey_lambda=tukey_lambda, clusters=clusters, samples_per_label=samples_per_label,
                emd_filter=emd_filter, max_draws=max_draws, kmeans_runs=kmeans_runs, num_workers=num_workers,
                use_gpu=use_gpu, seed=seed, overwrite=overwrite)
    pseudo = sum(s == "pseudo" for s in table.column("source").to_pylist())
    typer.echo(f"{output}: {table.num_rows - pseudo} labeled + {pseudo} pseudo-labeled samples")


@app.command()
def finetune(
    store: Annotated[str, typer.Argument(help="Embedding store holding the training ids.")],
    train: Annotated[str, typer.Option(help="Table 'id,label' (.csv/.parquet): labels of a selection, or "
                                            "ActiveDC's calibrated.parquet.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Run directory (local or s3://).")],
    mode: Annotated[str, typer.Option(help="linear (head on stored embeddings), full (Ray Train on images) or "
                                           "lp-ft (linear probe, then full).")] = "linear",
    val: Annotated[str | None, typer.Option(help="Held-out 'id,label' table of the same store.")] = None,
    val_store: Annotated[str | None, typer.Option(help="A second store whose 'label' column is the ground "
                                                       "truth (e.g. an embedded test set).")] = None,
    model: Annotated[str | None, typer.Option(help="timm model for full / lp-ft (default: the store's).")] = None,
    pretrained: Annotated[str | None, typer.Option(help="Weights: hub, none or a path (default: the "
                                                        "store's).")] = None,
    head: Annotated[str, typer.Option(help="linear: 'linear' (logistic regression) or 'mlp' (ASVP's "
                                           "proxy).")] = "linear",
    epochs: Annotated[int | None, typer.Option(help="full / lp-ft: epochs (default 50); linear: L-BFGS "
                                                    "iterations (500) or MLP epochs (50).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (full: 0.01 x global batch / 512).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per worker and step.")] = 64,
    weight_decay: Annotated[float | None, typer.Option(help="linear: 1/n (sklearn C=1); full: 1e-4.")] = None,
    eval_every: Annotated[int, typer.Option(help="Epochs between validations and checkpoints.")] = 5,
    num_workers: Annotated[int, typer.Option(help="Ray Train workers (full, lp-ft).")] = 1,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="Train on GPUs (DDP over nccl, bf16).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_failures: Annotated[int, typer.Option(help="Worker-group restarts from the last checkpoint.")] = 3,
    resume: Resume = False,
    overwrite: Overwrite = False,
):
    """Finetune on the labeled set: a linear head on the embeddings, or the whole backbone on Ray Train.

    Example: activeft finetune stores/pool --train cal/calibrated.parquet --val-store stores/test -o runs/r1 --mode full
    """
    from .finetune import finetune as run

    info = run(store, train=train, output=output, mode=mode, val=val, val_store=val_store, model=model,
               pretrained=pretrained, head=head, epochs=epochs, lr=lr, batch_size=batch_size,
               weight_decay=weight_decay, eval_every=eval_every, num_workers=num_workers, use_gpu=use_gpu,
               seed=seed, max_failures=max_failures, resume=resume, overwrite=overwrite)
    typer.echo(f"{output}: {mode} on {info['config']['train_rows']} samples, {len(info['classes'])} classes; "
               f"val top-1 final {info['final_val_accuracy']}, best {info['best_val_accuracy']}")


@app.command()
def loop(
    store: Annotated[str, typer.Argument(help="Embedding store of the pool.")],
    state: Annotated[str, typer.Option(help="Directory (local or s3://) of the loop's state; re-run to "
                                            "continue.")],
    round_budget: Annotated[str, typer.Option(help="Labels per round: N (with --rounds) or B1,B2,...")],
    rounds: Annotated[int | None, typer.Option(help="Number of rounds (with a single --round-budget).")] = None,
    strategy: Annotated[str, typer.Option(help="margin, entropy, confidence, badge, coreset, activeft or "
                                               "random.")] = "margin",
    first: Annotated[str, typer.Option(help="Cold-start round: activeft or random.")] = "activeft",
    refresh: Annotated[str, typer.Option(help="Feature refresh: never, at-labels:N or logme.")] = "never",
    refresh_mode: Annotated[str, typer.Option(help="Backbone finetuning of a refresh: lp-ft or full.")] = "lp-ft",
    refresh_epochs: Annotated[int | None, typer.Option(help="Epochs of that finetuning (default 50).")] = None,
    final: Annotated[str, typer.Option(help="Final model: auto (LP-FT below --final-threshold labels per class, "
                                            "full above), linear, lp-ft, full or none.")] = "auto",
    final_threshold: Annotated[int, typer.Option(help="Labels per class from which auto picks full "
                                                      "finetuning.")] = 100,
    oracle: Annotated[str | None, typer.Option(help="store-labels: the store's label column answers "
                                                    "(benchmarks).")] = None,
    labels: Annotated[str | None, typer.Option(help="Human in the loop: the growing 'id,label' table; each "
                                                    "round exports its selection and stops.")] = None,
    eval_store: Annotated[str | None, typer.Option(help="Labeled store to score a linear probe on after every "
                                                        "round.")] = None,
    num_workers: Annotated[int, typer.Option(help="Ray Train workers for scoring and finetuning.")] = 1,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="Use GPUs.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    label_cost: Annotated[float, typer.Option(help="Dollars per label, for the cost account.")] = 0.0,
    gpu_hour_cost: Annotated[float, typer.Option(help="Dollars per GPU-hour, for the cost account.")] = 3.0,
    cpu_hour_cost: Annotated[float, typer.Option(help="Dollars per CPU-hour, for the cost account.")] = 0.05,
    proxy_epochs: Annotated[int, typer.Option(help="Epochs of the proxy MLP each round.")] = 50,
):
    """Multi-round active learning through a proxy (ASVP), with feature refresh and LP-FT.

    Example: activeft loop stores/pool --state loops/l1 --round-budget 1000 --rounds 5 --labels labels.csv
    """
    from .loop import loop as run

    st = run(store, state=state, round_budget=round_budget, rounds=rounds, strategy=strategy, first=first,
             refresh=refresh, refresh_mode=refresh_mode, refresh_epochs=refresh_epochs, final=final,
             final_threshold=final_threshold,
             oracle=oracle, labels=labels, eval_store=eval_store, num_workers=num_workers, use_gpu=use_gpu,
             seed=seed, label_cost=label_cost, gpu_hour_cost=gpu_hour_cost, cpu_hour_cost=cpu_hour_cost,
             proxy_epochs=proxy_epochs)
    done = sum(r["status"] == "labeled" for r in st["rounds"])
    typer.echo(f"{state}: {done} of {len(st['config']['budgets'])} rounds done, {st['cost']['labels']} labels; "
               f"final model: {st['final'] and st['final']['run']}")


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
    """Write a small real image set for trying activeft: scikit-learn's 1,797 handwritten digits as PNGs.

    Needs scikit-learn (pip install "activeft[demo]"). Also writes FOLDER/_manifest.csv with the labels.
    """
    from .demo import write_digits

    typer.echo(f"{folder}: {write_digits(folder, size)} images")


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
