"""Project commands. Kedro loads this ``cli`` group; its ``run`` replaces Kedro's own.

``kedro run`` here is Kedro's, with the project's locking runner (concurrent runs on one
data folder never duplicate a node), ``--recompute``, and a user's mistake printed as one
message. What must hold on every path (the spec and input checks before any node runs,
the demo data, cache reuse, the run history) lives in the hooks (:mod:`giblet_kedro.hooks`),
so ``KedroSession.run()`` and notebooks get it too.

``kedro giblet spec`` prints the compiled spec with every stage's fingerprint;
``kedro giblet caches`` lists cache folders and ``--prune`` removes unreferenced ones;
``kedro giblet runs`` lists past runs and ``kedro giblet compare A B`` compares two;
``kedro giblet schema`` writes the spec's JSON Schema; ``kedro giblet weights`` says
where each pretrained model the spec needs was looked for and found.
Each takes ``--env`` and ``--params`` as ``kedro run`` does.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import _split_params

from giblet_kedro.errors import GibletError
from giblet_kedro.hooks import RUN_REGISTRY
from giblet_kedro.paths import data_dir, project_root
from giblet_kedro.preflight import preflight, user_error
from giblet_kedro.spec.compile import STAGES, compile_experiment
from giblet_kedro.spec.load import available_experiments, find_spec_file
from giblet_kedro.spec.reference import make_reference, parse_reference, split_runtime_params


def default_experiment(env: str | None = None) -> str:
    """``default_experiment`` from the globals of ``conf/base`` merged with ``conf/<env>``
    (``local`` when not given), as Kedro reads them."""
    from giblet_kedro.config_loader import GibletConfigLoader

    loader = GibletConfigLoader(str(project_root() / "conf"), env=env, base_env="base", default_run_env="local")
    try:
        return str(loader["globals"]["default_experiment"])
    except (KeyError, TypeError):
        return "demo"


def experiment_reference(experiment: str | None, params: dict[str, Any] | None, env: str | None) -> str:
    """The spec named by ``-e`` (or ``--params experiment=``, or the env's default) with
    the other ``--params`` keys as overrides."""
    project, overrides = split_runtime_params(params)
    name = experiment or project.get("experiment") or default_experiment(env)
    return make_reference(str(find_spec_file(str(name), env)), overrides)


def _fail(error: GibletError) -> None:
    click.secho(f"Error: {error}", fg="red", err=True)
    sys.exit(2)


# ----------------------------------------------------------------------------- run
def _run(recompute: bool, **kwargs: Any) -> Any:
    """Kedro's ``run``, with the project's locking runner and one message for a user's
    mistake. Everything else (preflight, demo data, cache reuse, history) is in the hooks,
    so it holds for ``KedroSession.run()`` too."""
    # Concurrent runs on one data folder: each node's outputs are locked while it runs, and
    # a node another run finished meanwhile is skipped (giblet_kedro.runner).
    kwargs["runner"] = kwargs.get("runner") or "giblet_kedro.runner.LockingRunner"
    if recompute:  # no cache reuse; training starts over instead of resuming
        kwargs["params"] = {**(kwargs.get("params") or {}), "recompute": True}
    try:
        result = kedro_run.callback(**kwargs)
    except Exception as exc:  # a user mistake: one message, no traceback
        error = user_error(exc)
        if error is None:
            raise
        _fail(error)
    if _is_the_kedro_command():
        _exit_without_teardown()
    return result


def _is_the_kedro_command() -> bool:
    """This process is the ``kedro`` command itself (not a test's in-process call, nor a
    notebook), and ``GIBLET_FULL_TEARDOWN`` is not set."""
    return bool(sys.argv) and Path(sys.argv[0]).name == "kedro" and not os.environ.get("GIBLET_FULL_TEARDOWN")


def _exit_without_teardown() -> NoReturn:
    """End a finished ``kedro run`` now: every exit handler runs (logging's flush and
    close, MLflow's, temporary folders'), then the process exits with status 0 without
    the interpreter's teardown, which frees the objects of Kedro, MLflow, pandas and
    pandera one by one: 1.6 s of a 9 s run with nothing to do, measured."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


@click.group(name="giblet-kedro")
def cli() -> None:
    """giblet-kedro project commands."""


cli.add_command(click.Command(
    name="run",
    params=[*kedro_run.params, click.Option(
        ["--recompute"], is_flag=True,
        help="Recompute every node even where a valid (same-fingerprint) output exists.")],
    callback=_run,
    help=("Run the pipeline for an experiment spec (--params experiment=NAME_OR_PATH), reusing "
          "every cache whose fingerprint is unchanged."),
))


# --------------------------------------------------------------------- giblet group
@cli.group()
def giblet() -> None:
    """Inspect experiment specs and caches."""


def experiment_options(command):
    """``-e/--experiment``, ``--env`` and ``--params``, as ``kedro run`` reads them."""
    command = click.option("--params", "params", default="", callback=_split_params,
                           help="Spec key overrides, as for kedro run: train.epochs=50,fmri.mode=per_subject")(command)
    command = click.option("--env", default=None, help="Kedro configuration environment (default: local).")(command)
    return click.option("--experiment", "-e", default=None,
                        help="Experiment name (conf/<env>/experiments/ or conf/base/experiments/) or spec file "
                             "path.")(command)


@giblet.command()
@experiment_options
def spec(experiment: str | None, env: str | None, params: dict[str, Any]) -> None:
    """Print the compiled spec (with any --params overrides) with each stage's fingerprint
    and cache folder."""
    try:
        compiled = compile_experiment(experiment_reference(experiment, params, env), check_files=False, env=env)
    except GibletError as exc:
        _fail(exc)
    click.echo(yaml.safe_dump(compiled.describe(), sort_keys=False, width=100))


def _known_references(extra: tuple[str, ...], env: str | None) -> list[str]:
    """Every spec file under the env's and base experiments folders and those given with
    -e, and every spec (with its overrides) run here whose file still exists."""
    references = {str(find_spec_file(name, env)) for name in available_experiments(env)}
    references |= {str(find_spec_file(name, env)) for name in extra}
    try:
        references |= {ref for ref in json.loads((data_dir() / RUN_REGISTRY).read_text())
                       if Path(parse_reference(ref)[0]).is_file()}
    except (OSError, ValueError):
        pass
    return sorted(references)


def _cache_folders() -> list[Path]:
    return sorted(p for stage in STAGES.values() if stage.cache_root().is_dir()
                  for p in stage.cache_root().iterdir() if p.is_dir())


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@giblet.command()
@click.option("--prune", is_flag=True, help="Delete the cache folders no known spec refers to.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation before deleting.")
@click.option("--experiment", "-e", "extra", multiple=True,
              help="Also keep the caches of this spec (name or path); repeatable.")
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
@click.option("--verify", is_flag=True,
              help="Hash every cached file against its recorded digest (runs only hash files whose size, "
                   "time or inode changed); damaged ones are reported and recomputed by the next kedro run.")
def caches(prune: bool, yes: bool, extra: tuple[str, ...], env: str | None, verify: bool) -> None:
    """List cache folders, marking those that no known spec refers to.

    Known specs: every file in conf/<env>/experiments/ and conf/base/experiments/, every
    spec `kedro run` has run here, with its --params overrides (while its file still
    exists), and those given with -e. A spec whose inputs
    cannot be fingerprinted stops --prune: its caches cannot be told apart.
    """
    if verify:
        _verify_caches()
        return
    referenced: dict[Path, list[str]] = {}
    try:
        for reference in _known_references(extra, env):
            compiled = compile_experiment(reference, check_files=prune, env=env)
            for stage in compiled.fingerprints:
                referenced.setdefault(compiled.cache_dir(stage).resolve(), []).append(compiled.spec.name)
    except GibletError as exc:
        _fail(GibletError(f"{exc}\n(--prune needs every known spec's inputs to fingerprint its caches; "
                          "fix the path, or delete the spec file)"))
    unreferenced = []
    for folder in _cache_folders():
        users = referenced.get(folder.resolve())
        rel = folder.relative_to(project_root()) if folder.is_relative_to(project_root()) else folder
        click.echo(f"{'used by ' + ','.join(sorted(set(users))) if users else 'UNREFERENCED':<28} "
                   f"{_size(folder) / 1e6:9.1f} MB  {rel}")
        if not users:
            unreferenced.append(folder)
    if not prune:
        if unreferenced:
            click.echo(f"{len(unreferenced)} unreferenced cache folder(s); remove them with --prune")
        return
    if not unreferenced:
        click.echo("nothing to prune")
        return
    if not yes and not click.confirm(f"delete {len(unreferenced)} unreferenced cache folder(s)?"):
        return
    for folder in unreferenced:
        shutil.rmtree(folder)
    click.echo(f"removed {len(unreferenced)} folder(s)")


def _verify_caches() -> None:
    """``caches --verify``: every cache folder's files hashed; exit 1 when one is damaged."""
    from giblet_kedro.datasets.atomic import verify_folder

    folders = _cache_folders()
    damaged = []
    for folder in folders:
        problems = verify_folder(folder)
        rel = folder.relative_to(project_root()) if folder.is_relative_to(project_root()) else folder
        click.echo(f"{'DAMAGED' if problems else 'ok':<8} {_size(folder) / 1e6:9.1f} MB  {rel}")
        for path, problem in problems:
            click.echo(f"         {path.name}: {problem}")
        damaged += problems
    if damaged:
        click.echo(f"{len(damaged)} damaged file(s); the next `kedro run` that needs them recomputes them", err=True)
        raise SystemExit(1)
    click.echo(f"every file of {len(folders)} cache folder(s) matches its recorded digest")


@giblet.command()
@experiment_options
def job(experiment: str | None, env: str | None, params: dict[str, Any]) -> None:
    """Write the training job file for a multi-node torchrun launch and print its path.

    The fMRI and stimulus caches and the job must exist (run the train pipeline with
    --to-nodes=build_training_job first). Then on every node:
    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT
    --rdzv-id ID -m giblet_kedro.training.ddp JOB.json
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    name = experiment or params.get("experiment") or "the default experiment"
    try:
        reference = experiment_reference(experiment, params, env)
        preflight(reference)
        name = parse_reference(reference)[0]
        bootstrap_project(project_root())
        with KedroSession.create(project_path=project_root(), env=env,
                                 runtime_params={**params, "experiment": name}) as session:
            context = session.load_context()
            train_job = context.catalog.load("train_job")
            run_dir = Path(context.params["train_run_dir"])
    except GibletError as exc:
        _fail(exc)
    except Exception as exc:  # a missing cache: say which step to run first
        error = user_error(exc)
        if error is not None:
            _fail(error)
        _fail(GibletError(f"cannot load the training job of {name!r} ({exc}); run "
                          f"`kedro run --pipelines=train --to-nodes=build_training_job --params experiment={name}` "
                          "first"))
    # Where the job runs (world size, backend, device) is resolved by each torchrun rank;
    # with train.seeds, one job file per seed (one torchrun launch each), in seed order.
    from giblet_kedro.training.job import TrainJob
    from giblet_kedro.training.seeds import write_seed_jobs

    job_file = TrainJob.from_dict({**train_job, "run_dir": str(run_dir)})
    for path in write_seed_jobs(job_file):
        click.echo(str(path))


@giblet.command()
@click.option("--experiment", "-e", default=None, help="Only this experiment's runs (its name).")
@click.option("--last", "-n", default=20, show_default=True, help="How many of the latest runs to show.")
def runs(experiment: str | None, last: int) -> None:
    """List past runs: id, date, spec fingerprint, pipelines and headline metrics."""
    from giblet_kedro.runs import load_history

    records = [r for r in load_history() if experiment is None or r["experiment"] == experiment]
    if not records:
        click.echo("no recorded runs" + (f" of {experiment!r}" if experiment else "") + " yet")
        return
    for record in records[-last:]:
        metrics = record["metrics"]
        shown = {k: metrics[k] for k in ("verify.passed", "eval.mean_r", "eval.r_over_ceiling", "eval.minus_ridge")
                 if k in metrics}
        click.echo(f"{record['run_id']}  {record['date']}  {record['experiment']:<16} spec {record['spec_fingerprint']}"
                   f"  {','.join(record['pipelines'])}  " + "  ".join(f"{k}={_short(v)}" for k, v in shown.items()))


def _short(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


SWEEP_METRICS = ("verify.passed", "eval.mean_r", "eval.r_over_ceiling", "eval.minus_ridge")


def _sweep_folder(base: str) -> Path:
    return project_root() / "conf" / "local" / "experiments" / "sweeps" / base


@giblet.command()
@click.option("--experiment", "-e", default=None, help="The base spec (name or path).")
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
@click.option("--grid", "grid_items", multiple=True, metavar="KEY=V1,V2,...",
              help="A spec key and its values; repeat for more keys (every combination is a point).")
@click.option("--run", "run_points", is_flag=True, help="Run the points here, one after another.")
@click.option("--slurm", is_flag=True, help="Print an sbatch --array script that runs one point per task.")
@click.option("--pipelines", default="evaluate", show_default=True, help="What each point runs.")
def sweep(experiment: str | None, env: str | None, grid_items: tuple[str, ...], run_points: bool, slurm: bool,
          pipelines: str) -> None:
    """Write one spec per point of a grid of spec keys (conf/local/experiments/sweeps/<base>/);
    run them, or print a SLURM job array. Points share every cache whose stage does not read
    a swept key. Then `kedro giblet compare --sweep <base>` tabulates their metrics."""
    import subprocess

    from giblet_kedro.spec.load import load_spec
    from giblet_kedro.spec.sweep import parse_grid, slurm_array, write_sweep

    try:
        base_file = find_spec_file(experiment or default_experiment(env), env)
        base = load_spec(str(base_file), env)[0].name
        points = write_sweep(base_file, parse_grid(grid_items), _sweep_folder(base))
    except GibletError as exc:
        _fail(exc)
    for point in points:
        click.echo(f"{point.name}  {', '.join(f'{k}={v}' for k, v in point.values.items())}  {point.path}")
    if slurm:
        click.echo(slurm_array(points, pipelines, project_root()))
    if run_points:
        kedro_cli = str(Path(sys.executable).parent / "kedro")
        for point in points:
            click.echo(f"--- {point.name}")
            done = subprocess.run([kedro_cli, "run", f"--pipelines={pipelines}", "--params",
                                   f"experiment={point.path}"], cwd=project_root(), check=False)
            if done.returncode != 0:
                _fail(GibletError(f"sweep point {point.name} failed (exit {done.returncode}); the points before it "
                                  "are done, rerun the sweep to continue (cached stages are not recomputed)"))
        click.echo(f"{len(points)} point(s) done: kedro giblet compare --sweep {base}")


def _compare_sweep(base: str) -> None:
    from giblet_kedro.runs import load_history
    from giblet_kedro.spec.sweep import read_sweep

    try:
        index = read_sweep(_sweep_folder(base))
    except GibletError as exc:
        _fail(exc)
    latest = {record["experiment"]: record for record in load_history()}
    keys = list(index["grid"])
    header = ["point", *keys, "run", *SWEEP_METRICS]
    rows = []
    for point in index["points"]:
        record = latest.get(point["name"])
        metrics = record["metrics"] if record else {}
        rows.append([point["name"], *(_short(point["values"][k]) for k in keys),
                     record["run_id"] if record else "not run", *(_short(metrics.get(m)) for m in SWEEP_METRICS)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(f"{str(v):<{w}}" for v, w in zip(row, widths, strict=True)).rstrip())


@giblet.command(name="compare")
@click.argument("run_a", required=False)
@click.argument("run_b", required=False)
@click.option("--sweep", "sweep_base", default=None, help="Tabulate the latest run of each point of this sweep.")
def compare_runs(run_a: str | None, run_b: str | None, sweep_base: str | None) -> None:
    """Compare two runs side by side: RUN is a run id (or unique prefix) or EXPERIMENT~N,
    the N-th latest run of EXPERIMENT (demo~0 is the latest, demo~1 the one before). With
    --sweep BASE: one row per sweep point, its values and its latest run's metrics."""
    from giblet_kedro.runs import compare, find_run, load_history

    if sweep_base is not None:
        _compare_sweep(sweep_base)
        return
    if run_a is None or run_b is None:
        _fail(GibletError("give two runs (RUN_A RUN_B), or --sweep BASE"))
    records = load_history()
    try:
        a, b = find_run(records, run_a), find_run(records, run_b)
    except GibletError as exc:
        _fail(exc)
    diff = compare(a, b)
    width = max([len(k) for section in diff.values() for k, _, _ in section] + [10])
    click.echo(f"{'':<{width}}  {'A: ' + a['run_id']:<28}  {'B: ' + b['run_id']:<28}")
    click.echo(f"{'date':<{width}}  {a['date']:<28}  {b['date']:<28}")
    click.echo(f"{'experiment':<{width}}  {a['experiment']:<28}  {b['experiment']:<28}")
    for title, rows in (("spec keys that differ", diff["spec"]), ("stages recomputed", diff["stages"]),
                        ("metrics", diff["metrics"])):
        click.echo(f"\n{title}:" + ("" if rows else " none"))
        for key, left, right in rows:
            delta = f"  ({right - left:+.4g})" if isinstance(left, float) and isinstance(right, float) else ""
            click.echo(f"{key:<{width}}  {_short(left):<28}  {_short(right):<28}{delta}")


@giblet.command()
@click.argument("movie_a", type=click.Path(dir_okay=False))
@click.argument("movie_b", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the contrast (NIfTI: volume 1 the difference a - b, volume 2 Welch's t).")
def contrast(movie_a: str, movie_b: str, output: str) -> None:
    """Contrast two movies' predicted responses: MOVIE_A and MOVIE_B are the
    predicted_bold.nii.gz of two `kedro run --pipelines=predict` runs of one experiment."""
    import numpy as np

    from giblet_kedro.datasets.nifti import load_nifti, save_nifti
    from giblet_kedro.evaluation.insilico import movie_contrast

    try:
        image = movie_contrast(load_nifti(movie_a, "MOVIE_A"), load_nifti(movie_b, "MOVIE_B"), ("MOVIE_A", "MOVIE_B"))
    except GibletError as error:
        _fail(error)
    save_nifti(image, output)
    difference = np.asarray(image.dataobj)[..., 0]
    inside = np.asarray(image.dataobj).any(axis=3)
    click.echo(f"{output}: mean predicted response of A minus B over {int(inside.sum())} voxels: median "
               f"{float(np.median(difference[inside])):+.4f}, range {float(difference[inside].min()):+.4f} to "
               f"{float(difference[inside].max()):+.4f} (z units); volume 2 is Welch's t, descriptive only")


@giblet.command()
@click.option("--output", "-o", default="docs/spec.schema.json", show_default=True,
              help="Where to write the JSON Schema (relative to the project root).")
@click.option("--reference/--no-reference", default=False,
              help="Also regenerate docs/spec-reference.md from the schema.")
def schema(output: str, reference: bool) -> None:
    """Write the spec's JSON Schema, for completion and checking in editors: put
    `# yaml-language-server: $schema=<path>` at the top of a spec."""
    from giblet_kedro.spec.docs import REFERENCE_FILE, json_schema, render_reference

    written = {Path(output) if Path(output).is_absolute() else project_root() / output: json_schema()}
    if reference:
        written[project_root() / REFERENCE_FILE] = render_reference()
    for path, text in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)  # documentation, not a cache: no digest sidecar
        click.echo(str(path))


@giblet.command(name="weights")
@experiment_options
def weights_command(experiment: str | None, env: str | None, params: dict[str, Any]) -> None:
    """List each pretrained model the spec needs: where it was looked for, what was found
    (with its sha256), and the exact file to fetch when one is missing. Exits with 1 when
    one is missing. Nothing is downloaded."""
    from giblet_kedro.stimulus.weights import sha256

    try:
        compiled = compile_experiment(experiment_reference(experiment, params, env), check_files=False, env=env)
    except GibletError as exc:
        _fail(exc)
    if not compiled.weights:
        click.echo(f"{compiled.spec.name}: no pretrained model needed (no EnCodec audio, no CLIP text)")
        return
    missing = 0
    for lookup in compiled.weights.values():
        click.echo(f"{lookup.key}  ({lookup.model})")
        click.echo(f"  spec says: {'null' if lookup.requested is None else lookup.requested}")
        for place in lookup.looked:
            click.echo(f"  looked in: {place}")
        if lookup.is_random:
            click.echo("  found:     RANDOM weights, on purpose (reports say so)")
        elif lookup.found is not None:
            click.echo(f"  found:     {lookup.found}\n  sha256:    {sha256(lookup.found)}")
        elif lookup.requested is None and compiled.spec.demo is not None:
            click.echo("  found:     nothing; this demo spec uses RANDOM weights (write `weights: random` to say so)")
        else:
            missing += 1
            click.secho(f"  MISSING:   {lookup.fetch}", fg="red")
    if missing:
        sys.exit(1)
