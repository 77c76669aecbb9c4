"""Command line: ``scgeneformer <command>`` (or ``python -m scgeneformer <command>``) on ``.h5ad``/``.h5mu`` files.

Each command reads a file, runs the function of the same name of the Python API with the same options, and writes
the result atomically (a temporary file renamed into place). Messages and progress go to stderr; errors print their
text and exit with status 1 (2 for bad command-line usage). The commands that run a model declare their own options
only; :func:`model_command` adds the input, output, model, encoding and execution options they share.

Before any work, :func:`check_paths` checks every file a command reads and writes: inputs are ``.h5ad``/``.h5mu``
HDF5 files, the data output's suffix names the format written (``.h5ad`` or ``.h5mu``), tables are ``.csv``/``.tsv``
and never overwrite an AnnData file (the input, the output, or an existing HDF5 file), no two outputs are one file,
and every output can be written (not a folder, its folder exists or can be created, writable).
"""

# No ``from __future__ import annotations``: typer reads the commands' annotations, which must be objects, not strings
# (model_command keeps only those and replaces the rest).
import functools
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ._compute._execution import Execution
    from .model import GeneformerModel, InferenceModel

app = typer.Typer(
    name="scgeneformer",
    help="Geneformer for scverse: rank-encode, embed, annotate and perturb cells in .h5ad files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich's option table truncates long option names on an 80-column terminal
    rich_markup_mode=None,
)

Input = Annotated[Path, typer.Argument(help="Input .h5ad (or .h5mu) file.", exists=True, dir_okay=False)]
Output = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="Output .h5ad or .h5mu file (may be the input); the suffix names the format written."
    ),
]
Model = Annotated[
    str, typer.Option("--model", "-m", help="Published checkpoint name, Hugging Face folder or saved model folder.")
]


class Precision(StrEnum):
    """Precisions offered on the command line."""

    auto = "auto"
    fp32 = "32"
    bf16 = "bf16"
    fp16 = "16"


def _parameter(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    # Keyword-only: click passes every value by name, and required options may then follow optional ones.
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


#: The command-line options of :class:`~scgeneformer.Execution`, shared by every command that runs a model.
EXECUTION_OPTIONS = tuple(
    _parameter(name, Annotated[kind, option], default)
    for name, kind, default, option in [
        ("accelerator", str, "auto", typer.Option(help="auto, cpu, cuda or mps.")),
        ("devices", int, 1, typer.Option(help="Devices (processes) to spread the work over (Lightning).")),
        ("strategy", str, "auto", typer.Option(help="Lightning strategy with several devices, e.g. ddp.")),
        ("precision", Precision, Precision.auto, typer.Option(help="Numerical precision.")),
        ("token_budget", int | None, None, typer.Option(help="Padded tokens per batch (default by device).")),
        ("batch_size", int | None, None, typer.Option(help="At most this many cells per batch.")),
        ("progress", bool, True, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")),
    ]
)
#: The file and model a model command reads (before its own options) and the encoding it reads (after them).
_FILE_AND_MODEL = (_parameter("input", Input), _parameter("output", Output), _parameter("model", Model))
_ENCODING_KEY = _parameter(
    "encoding_key", Annotated[str, typer.Option(help="key_added of the encoding.")], "geneformer"
)


def model_command(run_tool: Callable[..., None] | None = None, *, tables: Sequence[str] = ()) -> Callable[..., None]:
    """A command that runs a model on a file, from a function that runs the tool on data already read.

    ``run_tool(data, model, <its own options>, *, encoding_key, execution)`` declares only its own options. The
    command takes INPUT, ``--output`` and ``--model`` before them, ``--encoding-key`` and the
    :data:`EXECUTION_OPTIONS` after them; it checks the paths (:func:`check_paths`), reads INPUT, loads the model,
    calls ``run_tool`` (the execution options arrive as one :class:`~scgeneformer.Execution`) and writes the data to
    ``--output``. Used as ``@model_command`` or ``@model_command(tables=[...])``.

    Parameters
    ----------
    run_tool
        The function running the tool.
    tables
        Its options naming table files it writes (checked with the outputs before any work).
    """
    if run_tool is None:
        return functools.partial(model_command, tables=tables)
    shared = {"data", "model", "encoding_key", "execution"}
    own = [p for p in inspect.signature(run_tool).parameters.values() if p.name not in shared]

    @functools.wraps(run_tool)
    def command(*, input: Path, output: Path, model: str, encoding_key: str, **options) -> None:
        execution = _execution(**{p.name: options.pop(p.name) for p in EXECUTION_OPTIONS})
        check_paths([input], {"--output": output}, {_option_name(t): options[t] for t in tables})
        data = _read(input)
        run_tool(data, _load_model(model), **options, encoding_key=encoding_key, execution=execution)
        _write(data, output)

    parameters = [*_FILE_AND_MODEL, *(p.replace(kind=p.KEYWORD_ONLY) for p in own), _ENCODING_KEY, *EXECUTION_OPTIONS]
    command.__signature__ = inspect.Signature(parameters, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in parameters}  # what typer reads, resolved
    return command


def _execution(accelerator, devices, strategy, precision, token_budget, batch_size, progress) -> "Execution":
    import scgeneformer as sgf

    return sgf.Execution(
        accelerator=accelerator,
        devices=None if devices == 1 else devices,
        strategy=strategy,
        precision=precision.value,
        token_budget=token_budget,
        batch_size=batch_size,
        progress_bar=progress,
    )


def _option_name(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


#: Data formats read and written, by suffix: what the file holds.
DATA_FORMATS = {".h5ad": "AnnData", ".h5mu": "MuData"}
#: Table formats written (``perturb --table``, ``stats --output``), by suffix: their column separator.
TABLE_FORMATS = {".csv": ",", ".tsv": "\t"}
#: Suffixes of AnnData stores that a table must never replace (besides any existing HDF5 file).
ANNDATA_SUFFIXES = (*DATA_FORMATS, ".zarr", ".loom", ".h5")


def check_paths(
    inputs: Sequence[Path | None], outputs: Mapping[str, Path], tables: Mapping[str, Path | None] | None = None
) -> None:
    """Check, before any work, the files a command reads and writes; raise with what to do.

    Parameters
    ----------
    inputs
        Data files read (``None``: an optional input not given): each must be a ``.h5ad`` or ``.h5mu`` HDF5 file
        holding what its suffix names (an ``.h5ad`` file is not a MuData, an ``.h5mu`` file is one).
    outputs
        Data files written, by option name: the suffix names the format (``.h5ad``, or ``.h5mu``: an AnnData input
        is wrapped in a MuData with the modality ``rna``); a MuData input is not written as ``.h5ad``.
    tables
        Table files written, by option name (``None``: not asked for): ``.csv`` or ``.tsv``; never an input or a
        data output, an AnnData name (``.h5ad``, ``.h5mu``, ``.zarr`` …) or an existing HDF5 file or folder.

    Every output must be writable (:func:`~scgeneformer._utils._files.check_writable`) and no two outputs may be the
    same file. Inputs may be written over by a data output (``-o`` may be the input).
    """
    from ._utils._files import check_writable

    given = [path for path in inputs if path is not None]
    for path in given:
        _check_input(path)
    mudata_in = any(path.suffix == ".h5mu" for path in given)
    for option, path in outputs.items():
        check_writable(path, option)
        if path.suffix not in DATA_FORMATS:
            advice = " (.zarr stores are not written here: convert the .h5ad with anndata)" if path.suffix else ""
            msg = (
                f"{option} {path}: the suffix names the format written, .h5ad (AnnData) or .h5mu (MuData); "
                f"{path.suffix or 'no suffix'} is not one of them{advice}."
            )
            raise ValueError(msg)
        if mudata_in and path.suffix == ".h5ad":
            msg = (
                f"{option} {path}: the input is a MuData (.h5mu); write it as .h5mu, an .h5ad file holds one modality."
            )
            raise ValueError(msg)
    tables = {option: path for option, path in (tables or {}).items() if path is not None}
    written = list(outputs.items())
    for option, path in tables.items():
        check_writable(path, option)
        if path.suffix in ANNDATA_SUFFIXES:
            msg = f"{option} {path}: a table is never written over an AnnData file ({path.suffix}); give a .csv path."
            raise ValueError(msg)
        for other_option, other in [*(("input", p) for p in given), *written]:
            if _same_file(path, other):
                msg = (
                    f"{option} {path} is the same file as {other_option} {other}: a table never overwrites another "
                    "file of the command; give it a .csv path of its own."
                )
                raise ValueError(msg)
        if path.suffix not in TABLE_FORMATS:
            msg = f"{option} {path}: tables are written as .csv or .tsv; {path.suffix or 'no suffix'} is neither."
            raise ValueError(msg)
        if _is_hdf5(path):
            msg = f"{option} {path} holds HDF5 data (an AnnData file?): a table never overwrites it."
            raise ValueError(msg)
        written.append((option, path))


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _is_hdf5(path: Path) -> bool:
    import h5py

    return path.is_file() and h5py.is_hdf5(path)


def _check_input(path: Path) -> None:
    import h5py

    if not path.is_file():
        msg = f"{path} does not exist or is not a file."
        raise FileNotFoundError(msg)
    if path.suffix not in DATA_FORMATS:
        msg = f"{path}: the command line reads .h5ad (AnnData) and .h5mu (MuData) files."
        raise ValueError(msg)
    if not h5py.is_hdf5(path):
        msg = f"{path} is not a readable {path.suffix} file: it is not HDF5 (a CSV or text file named {path.suffix}?)."
        raise ValueError(msg)
    with h5py.File(path, "r") as f:
        is_mudata = isinstance(f.get("mod"), h5py.Group)
    if is_mudata != (path.suffix == ".h5mu"):
        holds = "a MuData (it has modalities): name it .h5mu" if is_mudata else "no MuData modalities: name it .h5ad"
        msg = f"{path} is not a readable {path.suffix} file: it holds {holds}."
        raise ValueError(msg)


def _read(path: Path):
    """The data of an ``.h5ad``/``.h5mu`` file (checked by :func:`check_paths`), or an error naming it."""
    if path.suffix == ".h5mu":
        import mudata

        read = mudata.read_h5mu
    else:
        import anndata

        read = anndata.read_h5ad
    try:
        return read(path)
    except Exception as e:  # any failure to read is told with the file's name
        msg = f"{path} is not a readable {path.suffix} file ({type(e).__name__}: {e})."
        raise ValueError(msg) from e


def _write(data, path: Path) -> None:
    """Write ``data`` atomically in the format ``path``'s suffix names (an AnnData into ``.h5mu``: modality ``rna``)."""
    from ._utils._files import atomic_path

    is_mudata = type(data).__name__ == "MuData"
    if path.suffix == ".h5mu" and not is_mudata:
        import mudata

        data, is_mudata = mudata.MuData({"rna": data}), True
    with atomic_path(path) as temporary:
        if is_mudata:
            data.write_h5mu(temporary)
        else:
            data.write_h5ad(temporary)
    typer.echo(f"wrote {path}", err=True)


def _write_table(table, path: Path) -> None:
    """Write a DataFrame atomically as CSV or TSV (by ``path``'s suffix), without its index."""
    from ._utils._files import atomic_write

    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        table.to_csv(f, index=False, sep=TABLE_FORMATS[path.suffix])


def _load_model(name: str) -> "InferenceModel":
    """The model of ``--model`` for inference: no scvi-tools or Lightning to import (several seconds saved)."""
    import scgeneformer as sgf

    return sgf.InferenceModel.from_pretrained(name)


@app.callback()
def _options(
    verbosity: Annotated[str, typer.Option(help="error, warning, info or debug.")] = "info",
    local_files: Annotated[
        Path | None,
        typer.Option(help="Folder with copies of the published files (offline use).", envvar="SGF_LOCAL_FILES"),
    ] = None,
) -> None:
    import scgeneformer as sgf

    sgf.settings.verbosity = verbosity
    if local_files is not None:
        sgf.settings.local_files = local_files


@app.command()
def encode(
    input: Input,
    output: Output,
    vocabulary: Annotated[
        str,
        typer.Option(
            help="V1, V2 or a folder of dictionary files; must match the model used next "
            "(V2 for Geneformer-V2-*, V1 for Geneformer-V1-*, e.g. the demo's default)."
        ),
    ] = "V2",
    gene_id_key: Annotated[str | None, typer.Option(help=".var column with gene IDs (default: var_names).")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer with raw counts (default: X).")] = None,
    n_counts_key: Annotated[str | None, typer.Option(help=".obs column with total counts.")] = None,
    filter_key: Annotated[str | None, typer.Option(help="Boolean .obs column: encode only these cells.")] = None,
    key_added: Annotated[str, typer.Option(help="Prefix of the keys written.")] = "geneformer",
    allow_non_integer: Annotated[bool, typer.Option(help="Accept non-integer counts.")] = False,
    reference_quirks: Annotated[bool, typer.Option(help="Reproduce the reference tokenizer exactly.")] = False,
    chunk_size: Annotated[int, typer.Option(help="Cells encoded at a time.")] = 2048,
) -> None:
    """Rank-value encode cells (sgf.pp.rank_encode)."""
    import scgeneformer as sgf

    check_paths([input], {"--output": output})
    data = _read(input)
    sgf.pp.rank_encode(
        data,
        vocabulary=vocabulary,
        gene_id_key=gene_id_key,
        layer=layer,
        n_counts_key=n_counts_key,
        filter_key=filter_key,
        key_added=key_added,
        allow_non_integer=allow_non_integer,
        reference_quirks=reference_quirks,
        chunk_size=chunk_size,
    )
    _write(data, output)


@app.command()
@model_command
def embed(
    data: "AnnData | MuData",
    model: "GeneformerModel",
    layer: Annotated[int, typer.Option(help="Hidden state: -1 second to last, 0 last, k>0 layer k.")] = -1,
    pooling: Annotated[str, typer.Option(help="mean or cls (V2).")] = "mean",
    key_added: Annotated[
        str, typer.Option(help="Name of the results: obsm['X_<name>'], uns['<name>_embed'].")
    ] = "geneformer",
    gene_embeddings: Annotated[bool, typer.Option(help="Also write gene embeddings into .varm.")] = False,
    *,
    encoding_key: str,
    execution: "Execution",
) -> None:
    """Cell (and gene) embeddings (sgf.tl.embed)."""
    import scgeneformer as sgf

    sgf.tl.embed(
        data,
        model,
        layer=layer,
        pooling=pooling,
        key_added=key_added,
        gene_embeddings=gene_embeddings,
        encoding_key=encoding_key,
        execution=execution,
    )


@app.command()
@model_command
def annotate(
    data: "AnnData | MuData",
    model: "GeneformerModel",
    key_added: Annotated[str, typer.Option(help="obs key of the labels.")] = "geneformer_label",
    *,
    encoding_key: str,
    execution: "Execution",
) -> None:
    """Cell labels from a fine-tuned classifier (sgf.tl.annotate)."""
    import scgeneformer as sgf

    sgf.tl.annotate(data, model, key_added=key_added, encoding_key=encoding_key, execution=execution)


@app.command()
@model_command(tables=["table"])
def perturb(
    data: "AnnData | MuData",
    model: "GeneformerModel",
    genes: Annotated[
        list[str] | None, typer.Option("--gene", "-g", help="Gene perturbed (repeat for a set); default: all genes.")
    ] = None,
    perturbation: Annotated[str, typer.Option(help="delete, mask, overexpress, inhibit or activate.")] = "delete",
    combine: Annotated[
        str, typer.Option(help="With several --gene: together (one set) or separately (one row per gene).")
    ] = "together",
    anchor_gene: Annotated[
        str | None, typer.Option(help="With all genes: also perturb this gene alone and with each other gene.")
    ] = None,
    screen: Annotated[
        str, typer.Option(help="exact, or two_stage: estimate each single-gene perturbation, confirm the strongest.")
    ] = "exact",
    n_confirm: Annotated[
        float,
        typer.Option(
            help="two_stage: exact perturbations per cell after its anchors (below 1: a share).",
            callback=lambda value: _count_or_share(value, "--n-confirm"),
        ),
    ] = 60,
    n_confirm_genes: Annotated[
        int, typer.Option(help="two_stage: top genes by estimate, confirmed exactly in all their cells.")
    ] = 20,
    min_cells: Annotated[int, typer.Option(help="Summary: leave out genes seen in fewer cells.")] = 1,
    dry_run: Annotated[bool, typer.Option(help="Print what the run would cost (JSON) and write nothing.")] = False,
    state_key: Annotated[str | None, typer.Option(help="Goal-state mode: .obs column of the states.")] = None,
    start_state: Annotated[str | None, typer.Option(help="State whose cells are perturbed.")] = None,
    goal_state: Annotated[str | None, typer.Option(help="State to move toward.")] = None,
    alt_state: Annotated[list[str] | None, typer.Option(help="Alternative state (repeatable).")] = None,
    cells_key: Annotated[str | None, typer.Option(help="Boolean .obs column selecting the cells.")] = None,
    max_cells: Annotated[int | None, typer.Option(help="Perturb at most this many cells.")] = None,
    layer: Annotated[int, typer.Option(help="Hidden state compared.")] = -1,
    pooling: Annotated[str | None, typer.Option(help="mean or cls (default by model).")] = None,
    gene_shifts: Annotated[bool, typer.Option(help="Also report every other gene's shift.")] = False,
    vocabulary: Annotated[str | None, typer.Option(help="Dictionaries naming the genes.")] = None,
    key_added: Annotated[str, typer.Option(help="uns key of the results.")] = "geneformer_perturb",
    table: Annotated[Path | None, typer.Option(help="Also write the per-cell table (.csv or .tsv).")] = None,
    *,
    encoding_key: str,
    execution: "Execution",
) -> None:
    """In silico perturbation (sgf.tl.perturb); results in .uns[key_added]."""
    import scgeneformer as sgf

    states = None
    if any(v is not None for v in (state_key, start_state, goal_state)) or alt_state:
        states = {"state_key": state_key, "start_state": start_state, "goal_state": goal_state}
        states["alt_states"] = list(alt_state or [])
    plan = sgf.tl.perturb(
        data,
        model,
        genes or "all",
        perturbation=perturbation,
        combine=combine,
        anchor_gene=anchor_gene,
        screen=screen,
        n_confirm=n_confirm,
        n_confirm_genes=n_confirm_genes,
        min_cells=min_cells,
        dry_run=dry_run,
        states=states,
        cells=cells_key,
        max_cells=max_cells,
        layer=layer,
        pooling=pooling,
        gene_shifts=gene_shifts,
        vocabulary=vocabulary,
        key_added=key_added,
        encoding_key=encoding_key,
        execution=execution,
    )
    if dry_run:
        import json

        typer.echo(json.dumps(plan, indent=1))
        raise typer.Exit(0)  # nothing ran: no output file
    if table is not None:
        from ._data._anndata import resolve_adata

        _write_table(resolve_adata(data).uns[key_added]["cells"], table)


def execution_command(run: Callable[..., None]) -> Callable[..., None]:
    """A command with the :data:`EXECUTION_OPTIONS` after its own, which ``run`` receives as one ``execution``."""
    own = [p for p in inspect.signature(run).parameters.values() if p.name != "execution"]

    @functools.wraps(run)
    def command(**options) -> None:
        execution = _execution(**{p.name: options.pop(p.name) for p in EXECUTION_OPTIONS})
        run(**options, execution=execution)

    parameters = [*(p.replace(kind=p.KEYWORD_ONLY) for p in own), *EXECUTION_OPTIONS]
    command.__signature__ = inspect.Signature(parameters, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


@app.command()
@execution_command
def train(
    input: Input,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder written (annotate --model takes it).")],
    model: Model,
    label: Annotated[str, typer.Option("--label", "-l", help=".obs column of the cell labels to learn.")],
    epochs: Annotated[int, typer.Option(help="Maximum passes over the training cells.")] = 10,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-5,
    freeze_layers: Annotated[int, typer.Option(help="Freeze the first N encoder layers.")] = 0,
    group_key: Annotated[
        str | None, typer.Option(help=".obs column (e.g. donor) kept whole across train/validation/test.")
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help="Train LoRA adapters of this rank instead of the weights (lora extra).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the splits and the initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a model saved in --output before.")] = False,
    encoding_key: Annotated[str, typer.Option(help="key_added of the encoding.")] = "geneformer",
    *,
    execution: "Execution",
) -> None:
    """Fine-tune a cell classifier on an encoded file (GeneformerModel.train_classifier); save it to a folder."""
    check_paths([input], {})
    if output.exists() and not output.is_dir():
        msg = f"--output {output} is a file: the model is saved as a folder; give a folder path."
        raise ValueError(msg)
    if epochs < 1:
        msg = f"--epochs must be at least 1, got {epochs}."
        raise ValueError(msg)
    data = _read(input)
    from ._data._anndata import resolve_adata

    adata = resolve_adata(data)
    _check_labels(adata, label)
    import scgeneformer as sgf

    if encoding_key != "geneformer":
        sgf.GeneformerModel.setup_anndata(adata, encoding_key=encoding_key)
    trained = sgf.GeneformerModel.from_pretrained(model, adata)
    if lora_rank is not None:
        trained.add_lora(r=lora_rank)
    report = trained.train_classifier(
        max_epochs=epochs,
        labels_key=label,
        freeze_layers=freeze_layers,
        group_key=group_key,
        seed=seed,
        plan_kwargs={"lr": learning_rate},
        execution=execution,
    )
    trained.save(output, overwrite=overwrite)
    typer.echo(
        f"test set: accuracy {report['accuracy']:.3f}, macro F1 {report['macro_f1']:.3f} on {report['n_cells']} "
        f"cells; classes {', '.join(map(str, report['classes']))}",
        err=True,
    )
    typer.echo(f"wrote {output} (scgeneformer annotate ... --model {output})", err=True)


def _count_or_share(value: float, flag: str) -> int | float:
    """A whole number of items, or a share in (0, 1) (typer reads both as a float)."""
    if 0 < value < 1:
        return value
    if value < 0 or not float(value).is_integer():  # a usage error, before the input is read
        msg = f"{flag} takes a whole number >= 0 or a share between 0 and 1, got {value:g}."
        raise typer.BadParameter(msg)
    return int(value)


def _check_labels(adata: "AnnData", label: str) -> None:
    """Refuse, before a model is loaded, a label column that is missing or has fewer than two labels."""
    if label not in adata.obs:
        columns = ", ".join(map(str, adata.obs.columns[:20])) or "none"
        msg = f"--label {label}: no such .obs column in the input (its columns: {columns})."
        raise ValueError(msg)
    n_labels = adata.obs[label].dropna().nunique()
    if n_labels < 2:
        msg = f"--label {label}: a classifier needs at least two labels; the column has {n_labels}."
        raise ValueError(msg)


@app.command()
def stats(
    input: Input,
    output: Annotated[Path, typer.Option("--output", "-o", help="Table of the statistics (.csv or .tsv).")],
    mode: Annotated[str, typer.Option(help="goal_state_shift, vs_null, mixture_model, aggregate_data, ...")],
    key: Annotated[str, typer.Option(help="uns key of the perturbation results.")] = "geneformer_perturb",
    null: Annotated[Path | None, typer.Option(help="File with the null run's results (vs_null).")] = None,
    alpha: Annotated[float, typer.Option(help="FDR threshold of 'significant'.")] = 0.05,
) -> None:
    """Statistics of perturbation results (sgf.tl.perturbation_stats), as CSV."""
    import scgeneformer as sgf

    check_paths([input, null], {}, {"--output": output})
    table = sgf.tl.perturbation_stats(
        _read(input), mode, key=key, null=None if null is None else _read(null), alpha=alpha, inplace=False
    )
    _write_table(table, output)
    typer.echo(f"wrote {output} ({len(table)} rows)", err=True)


@app.command()
def models() -> None:
    """List the published checkpoints (tab-separated)."""
    import scgeneformer as sgf

    typer.echo(sgf.list_models().to_csv(sep="\t"), nl=False)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Checkpoint name or folder.")] = "Geneformer-V1-10M",
    local_files: Annotated[Path | None, typer.Option(help="Folder with copies of the published files.")] = None,
) -> None:
    """Run the main job end to end on the bundled PBMC example."""
    import scgeneformer as sgf

    from .demo import local_files_folder, run_demo

    # The global `scgeneformer --local-files DIR demo` (or SGF_LOCAL_FILES) counts as much as the command's own option.
    given = local_files if local_files is not None else sgf.settings.local_files
    run_demo(model, local_files_folder(None if given is None else str(given)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``scgeneformer`` and ``python -m scgeneformer``."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - every failure becomes a clear message and a non-zero status
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # a usage error of the command line (exit status 2)
            sys.exit(e.exit_code)
        # KeyError's str() adds quotes around the message
        text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
        typer.echo(f"error: {cli_text(text)}", err=True)
        sys.exit(1)


def cli_text(text: str) -> str:
    """Name command-line flags, not Python arguments, in an error text (``encoding_key=`` -> ``--encoding-key``)."""
    import re

    return re.sub(r"`(\w+)=[^`]*`", lambda m: "--" + m.group(1).replace("_", "-"), text)


def demo_main(argv: list[str] | None = None) -> None:
    """Entry point of ``sgf-demo``: the ``demo`` command."""
    main(["demo", *(argv or [])])
