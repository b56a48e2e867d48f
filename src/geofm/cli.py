"""The ``geofm`` command line: one subcommand per step, plus run, demo, search, serve, models, finetune.

The only place that prints, draws progress bars and maps errors to exit codes: every
:class:`~geofm.errors.GeofmError` is caught once (:class:`GeofmGroup`), printed as one line, and exits 2
for input and not-found errors, 1 for backend failures.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from typer.core import TyperGroup

from geofm.config import PipelineConfig, load_config, parse_set_options
from geofm.errors import ConfigError, GeofmError, exit_code
from geofm.report import StepReport, UnitResult

console = Console(stderr=True)
out_console = Console()


class GeofmGroup(TyperGroup):
    """Catches every GeofmError of every subcommand (nested groups included) once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GeofmError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exit_code(exc)) from None


app = typer.Typer(
    cls=GeofmGroup,
    help="Sentinel-2 chips, foundation-model embeddings, change over time and similarity search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# ---- progress ----------------------------------------------------------------------------------------
class BarProgress:
    """A rich progress bar per step (the :class:`~geofm.report.Progress` the CLI passes to the pipeline)."""

    def __init__(self) -> None:
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._failed = 0

    def start(self, step: str, total: int) -> None:
        self._failed = 0
        self._bar = RichProgress(TextColumn(f"[bold]{step}[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[red]{task.fields[failed]} failed"), TimeRemainingColumn(),
                                 console=console)
        self._bar.start()
        self._task = self._bar.add_task(step, total=total, failed=0)

    def advance(self, result: UnitResult) -> None:
        self._failed += result.status == "failed"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, failed=self._failed)

    def end(self, report: StepReport) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = None


def _progress(quiet: bool) -> BarProgress | None:
    return None if quiet else BarProgress()


# ---- options shared by every pipeline command ----------------------------------------------------
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of pipeline parameters.")]
AoiOpt = Annotated[str | None, typer.Option("--aoi", help="AOI GeoJSON file.")]
AoiNameOpt = Annotated[str | None, typer.Option("--aoi-name", help="AOI name (output folder).")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Output root: folder or s3://bucket/prefix.")]
StartOpt = Annotated[str | None, typer.Option("--start", help="Start date YYYY-MM-DD.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="End date YYYY-MM-DD.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Any parameter as key=value (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, logs only.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo units whose outputs are complete.")]


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def build_config(
    config: Path | None = None,
    aoi: str | None = None,
    aoi_name: str | None = None,
    out: str | None = None,
    start: str | None = None,
    end: str | None = None,
    set_: list[str] | None = None,
    **flags: Any,
) -> PipelineConfig:
    """Resolve parameters: YAML file, then ``--set`` pairs, then the flags that were given (flags win;
    a flag left out is None here and never hides a ``--set`` value)."""
    given = {"aoi": aoi, "aoi_name": aoi_name, "output_root": out, "start_date": _date(start, "--start"),
             "end_date": _date(end, "--end"), **flags}
    overrides = parse_set_options(set_)
    overrides.update({k: v for k, v in given.items() if v is not None})
    return load_config(config, **overrides)


def _run(cfg: PipelineConfig, steps: list[str], quiet: bool) -> None:
    """Run ``steps``, print the summary and exit 1 when any unit failed."""
    from geofm import pipeline

    record = pipeline.run_pipeline(cfg, steps, progress=_progress(quiet))
    console.print(record.summary(), highlight=False)
    console.print(f"run record: {cfg.layout.run_record(record.run_id)}", highlight=False)
    if not record.ok:
        raise typer.Exit(1)


def _flag(value: bool) -> bool | None:
    """A boolean flag as an override: True when given, None (no override) when left out."""
    return True if value else None


@app.command()
def discover(
    config: ConfigOpt = None, aoi: AoiOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    start: StartOpt = None, end: EndOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
    force: ForceOpt = False,
    stac_url: Annotated[str | None, typer.Option("--stac-url", help="STAC API root URL.")] = None,
    max_cloud_cover: Annotated[float | None, typer.Option("--max-cloud-cover", help="Percent.")] = None,
    grid_id: Annotated[str | None, typer.Option("--grid-id", help="Keep one MGRS tile.")] = None,
) -> None:
    """Step 0: search the STAC API for scenes over the AOI and write them to the input layout."""
    cfg = build_config(config, aoi, aoi_name, out, start, end, set_, stac_url=stac_url,
                       max_cloud_cover=max_cloud_cover, grid_id=grid_id, force=_flag(force))
    _run(cfg, ["discover"], quiet)
    console.print(f"{len(cfg.layout.scene_ids())} scenes in {cfg.layout.scenes_dir}", highlight=False)


@app.command()
def preprocess(
    config: ConfigOpt = None, aoi: AoiOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    set_: SetOpt = None, quiet: QuietOpt = False, force: ForceOpt = False,
    chip_size: Annotated[int | None, typer.Option("--chip-size", help="Chip side in pixels.")] = None,
    whole_tile: Annotated[bool, typer.Option("--whole-tile", help="Chip the whole tile.")] = False,
) -> None:
    """Step 1: cut each scene into chips (NetCDF + PNG) and write its chip metadata (GeoParquet)."""
    cfg = build_config(config, aoi, aoi_name, out, None, None, set_, chip_size=chip_size,
                       whole_tile=_flag(whole_tile), force=_flag(force))
    _run(cfg, ["preprocess"], quiet)


@app.command()
def embed(
    config: ConfigOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    set_: SetOpt = None, quiet: QuietOpt = False, force: ForceOpt = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="Checkpoint path.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Chips per batch.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda.")] = None,
) -> None:
    """Step 2: embed every chip with the model (class + patch embeddings as .npy)."""
    cfg = build_config(config, None, aoi_name, out, None, None, set_, model=model, checkpoint=checkpoint,
                       batch_size=batch_size, device=device, force=_flag(force))
    _run(cfg, ["embed"], quiet)


@app.command()
def analyze(
    config: ConfigOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    set_: SetOpt = None, quiet: QuietOpt = False, force: ForceOpt = False,
) -> None:
    """Step 3: global PCA and cosine similarity over time against the baseline, per chip."""
    cfg = build_config(config, None, aoi_name, out, None, None, set_, force=_flag(force))
    _run(cfg, ["analyze"], quiet)


@app.command()
def consolidate(
    config: ConfigOpt = None, aoi: AoiOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    set_: SetOpt = None, quiet: QuietOpt = False, force: ForceOpt = False,
) -> None:
    """Step 4: consolidated GeoParquet, chip-grid GeoJSONs, front-end config and the LanceDB table."""
    cfg = build_config(config, aoi, aoi_name, out, None, None, set_, force=_flag(force))
    _run(cfg, ["consolidate"], quiet)


@app.command()
def run(
    config: ConfigOpt = None, aoi: AoiOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    start: StartOpt = None, end: EndOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
    force: ForceOpt = False,
    steps: Annotated[str | None, typer.Option("--steps", help="Comma-separated steps (default all).")] = None,
    skip_discover: Annotated[bool, typer.Option("--skip-discover", help="Use the scenes already in the "
                                                "input folder.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show parameters and the plan only.")] = False,
    executor: Annotated[str | None, typer.Option("--executor", help="local or ray.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
) -> None:
    """Run the pipeline: discover, preprocess, embed, analyze, consolidate (resumable)."""
    from geofm import pipeline

    cfg = build_config(config, aoi, aoi_name, out, start, end, set_, force=_flag(force),
                       executor=executor, ray_address=ray_address, model=model)
    chosen = pipeline.chosen_steps(steps or None, skip_discover)
    console.print("[bold]parameters[/bold]\n" + cfg.to_yaml(), highlight=False, markup=True)
    if dry_run:
        pipeline.check_inputs(cfg, chosen)
        out_console.print("[bold]plan[/bold]\n" + json.dumps(pipeline.plan(cfg, chosen), indent=2),
                          highlight=False)
        return
    _run(cfg, [s.name for s in chosen], quiet)


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.")] = "demo-output",
    model: Annotated[str, typer.Option("--model", "-m", help="Model (spectral needs no weights).")] = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Synthesize a small AOI with planted change and run the whole pipeline on it, offline."""
    from geofm.demo import DEMO_DATES, DEMO_EXTENT_M, DEMO_GRID, run_demo

    out_console.print(f"[bold]geofm demo[/bold]: synthesizing {len(DEMO_DATES)} dates of tile {DEMO_GRID} "
                      f"({DEMO_EXTENT_M / 1000:.1f} km square) into {out}")
    result = run_demo(out, model=model, progress=_progress(quiet))
    out_console.print(f"model: [bold]{result.model}[/bold]"
                      + (" (weights-free; put Clay weights in the model cache to use Clay)"
                         if result.model == "spectral" else ""))
    out_console.print(result.record.summary(), highlight=False)
    if not result.record.ok or result.chips is None or result.hits is None:
        raise typer.Exit(1)
    where = Table(title="what the demo made, and where")
    where.add_column("artifact")
    where.add_column("location", overflow="fold")
    for name, url in result.where:
        where.add_row(name, url)
    out_console.print(where)
    table = Table(title="chips that changed most (lowest similarity to the baseline)")
    for col in ("chip_id", "lowest similarity", "on", "change_intensity", "planted truth"):
        table.add_column(col)
    for _, row in result.chips.head(8).iterrows():
        table.add_row(str(row["chip_id"]), f"{row['min_sim']:.3f}", str(row["min_sim_date"])[:10],
                      str(row["change_intensity"]), result.truth.get(str(row["chip_id"]), "-"))
    out_console.print(table)
    out_console.print(f"{result.scenes} scenes, {len(result.chips)} chips analysed, {len(DEMO_DATES)} dates; "
                      f"planted changes in {len(result.truth)} chips")
    out_console.print(f"similarity search from the steadiest chip, {result.query_chip}, "
                      f"on {result.query_date}:")
    out_console.print(result.hits[["chip_id", "date", "score"]].to_string(index=False), highlight=False)
    out_console.print(f"\nOpen the explorer: [bold].venv/bin/geofm serve --out {out}[/bold] "
                      "then browse http://127.0.0.1:8000")


@app.command()
def synth(
    out: Annotated[str, typer.Option("--out", "-o", help="Root folder or s3://bucket/prefix.")],
    aoi_name: Annotated[str, typer.Option("--aoi-name", help="AOI name (input layout folder).")] = "synth",
    grid: Annotated[str, typer.Option("--grid", help="MGRS tile, e.g. 33TWL.")] = "33TWL",
    start: Annotated[str, typer.Option("--start", help="First date YYYY-MM-DD.")] = "2023-01-01",
    end: Annotated[str, typer.Option("--end", help="Last date YYYY-MM-DD.")] = "2023-12-31",
    every: Annotated[int, typer.Option("--every", help="Days between dates.")] = 30,
    dates: Annotated[str | None, typer.Option("--dates", help="Explicit dates d1,d2,... (wins).")] = None,
    years: Annotated[int | None, typer.Option("--years", min=1, help="Dates over this many whole years "
                                              "from --start (instead of --end).")] = None,
    scenario: Annotated[str, typer.Option("--scenario", help="Landscape: default, or farmland (half the "
                                          "land in crops whose cycle varies by year).")] = "default",
    extent: Annotated[float, typer.Option("--extent", help="Side, m (109800: whole tile).")] = 10240.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    into_layout: Annotated[bool, typer.Option("--into-layout/--no-into-layout",
                                              help="Also write items and AOI to the input layout.")] = True,
) -> None:
    """Realistic synthetic Sentinel-2 L2A scenes (COGs, STAC items, AOI, planted-change truth)."""
    from geofm.config import check_name
    from geofm.layout import Layout
    from geofm.synth import default_dates, synthesize, years_end

    check_name(aoi_name, "--aoi-name")
    if dates:
        days = [d for d in (_date(x.strip(), "--dates") for x in dates.split(",") if x.strip()) if d]
    else:
        first, last = _date(start, "--start"), _date(end, "--end")
        assert first is not None and last is not None
        if years:
            last = years_end(first, years)
        days = default_dates(first, last, every)
    result = synthesize(out, aoi_name=aoi_name, grid=grid, dates=days, extent_m=extent, seed=seed,
                        into_layout=into_layout, scenario=scenario)
    say = out_console.print
    say(f"{len(result.scene_ids)} synthetic scenes ({result.scenario}) of {result.grid} "
        f"({result.extent_m:.0f} m square, {result.crs}) in {result.archive_dir}", highlight=False)
    for sid in result.scene_ids:
        say(f"  {sid}  sky {result.sky[sid]:<5}  eo:cloud_cover {result.cloud_cover[sid]:5.1f}",
            highlight=False)
    say(f"items (for rustac serve): {result.items_path}", highlight=False)
    say(f"AOI: {result.aoi_path}", highlight=False)
    say(f"planted changes: {result.truth_path} "
        + ", ".join(f"{c.kind} from {c.start_date}" for c in result.changes), highlight=False)
    say(f"land cover: {result.landcover_path}", highlight=False)
    if into_layout:
        say(f"input layout: {Layout(out, aoi_name).scenes_dir}", highlight=False)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print every pipeline parameter with its resolved value (YAML, usable as --config)."""
    typer.echo(build_config(config, set_=set_).to_yaml())


@app.command()
def search(
    chip: Annotated[str | None, typer.Option("--chip", help="Query chip id, e.g. 3_4 (a positive).")] = None,
    date_: Annotated[str | None, typer.Option(
        "--date", help="With --chip: its date. With --positive/--negative: the date whose chips are "
        "scored (default: the latest positive's); one --positive: only hits of that date.")] = None,
    positive: Annotated[list[str] | None, typer.Option(
        "--positive", help="A chip like what you look for, CHIP@YYYY-MM-DD (repeatable).")] = None,
    negative: Annotated[list[str] | None, typer.Option(
        "--negative", help="A chip unlike it, CHIP@YYYY-MM-DD (repeatable).")] = None,
    config: ConfigOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None,
    start: StartOpt = None, end: EndOpt = None, set_: SetOpt = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    min_score: Annotated[float | None, typer.Option("--min-score", help="Keep scores >= this.")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="MGRS grid filter (repeatable).")] = None,
    bbox: Annotated[str | None, typer.Option("--bbox", help="minx,miny,maxx,maxy (WGS84).")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="Few-shot classifier: svm, logreg or centroid (default: the one measured best, "
        "BENCHMARKS.md).")] = None,
    changed_since: Annotated[str | None, typer.Option(
        "--changed-since", help="Only chips that changed on or after this date (YYYY-MM-DD).")] = None,
    min_change: Annotated[float | None, typer.Option(
        "--min-change", help="Only chips whose change score reached this (1 - cosine, or the seasonal "
        "z-score).")] = None,
    geojson: Annotated[str | None, typer.Option(
        "--geojson", help="Write the score layer (chip polygons with score) to this file.")] = None,
    patch_maps: Annotated[bool, typer.Option(
        "--patch-maps", help="Per hit, where inside it the match sits (per-patch scores).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
) -> None:
    """Search the LanceDB table: the chips most like a chip (cosine, class embeddings), or, with
    several --positive and any --negative examples, every chip of a date scored by a small classifier
    (few-shot, "more like these, not like those"), optionally only among chips that changed."""
    from geofm import fewshot, storage
    from geofm.layout import Layout

    cfg = build_config(config, None, aoi_name, out, None, None, set_)
    pos: list[Any] = list(positive or [])
    day = _date(date_, "--date")
    if chip is not None:
        if day is None:
            raise ConfigError("--chip needs --date (the date of the query chip)")
        pos.insert(0, fewshot.Example(chip, day))
        day = None if (len(pos) == 1 and not negative) else day
    if not pos:
        raise ConfigError("give --chip and --date, or --positive CHIP@YYYY-MM-DD (repeatable)")
    query = fewshot.Query.of(pos, negative or [], grid, bbox, day=day, k=k, min_score=min_score,
                             method=method or fewshot.DEFAULT_METHOD,
                             changed_since=_date(changed_since, "--changed-since"), min_change=min_change)
    date_range = (_date(start, "--start"), _date(end, "--end")) if (start or end) else None
    result = fewshot.search(cfg.layout.lance_db, query, date_range)
    if geojson:
        storage.write_json(geojson, fewshot.score_layer(result.scored))
        console.print(f"score layer ({len(result.scored)} chips): {geojson}", highlight=False)
    hits = result.hits.copy()
    if len(hits) and {"aoi_name", "s3_location_png_thumbnail"} <= set(hits.columns):  # stored -> URLs
        pairs = zip(hits["aoi_name"], hits["s3_location_png_thumbnail"], strict=True)
        hits["s3_location_png_thumbnail"] = [Layout(cfg.output_root, a).resolve(v) for a, v in pairs]
    cols = [c for c in ("chip_id", "date", "score", "mgrs_grid", "cosine_sim", "change_score",
                        "s3_location_png_thumbnail") if c in hits.columns]
    records = hits[cols].to_dict("records")
    for rec in records:
        rec["date"] = str(rec["date"])[:10]
    if patch_maps:
        cols.append("best_patch")
        for rec, heat in zip(records, fewshot.patch_heatmaps(cfg.layout, result), strict=True):
            rec["patch_scores"] = [[None if v != v else round(float(v), 4) for v in r] for r in heat]
            rec["best_patch"] = fewshot.best_patch(heat)
    if as_json:
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    title = (f"most similar to chip {query.positives[0]}" if query.single else
             f"{result.method} on {result.date}: {len(query.positives)} positive, {len(query.negatives)} "
             "negative examples")
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for rec in records:
        table.add_row(*[f"{rec[c]:.4f}" if isinstance(rec[c], float) else str(rec[c]) for c in cols])
    out_console.print(table)


@app.command()
def serve(
    out: Annotated[str, typer.Option("--out", "-o", help="Output root to explore: folder or s3://bucket/prefix.")],
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; 0.0.0.0 exposes it to the network (name the host that clients use "
        "with --allow-host).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.", min=1, max=65535)] = 8000,
    archive: Annotated[list[str] | None, typer.Option(
        "--archive", help="Scene archive folder (or s3:// prefix) whose COGs map tiles may read, besides the "
        "output root (which holds geofm synth's synthetic-archive/). Repeatable.")] = None,
    allow_remote_assets: Annotated[bool, typer.Option(
        "--allow-remote-assets", help="Read scene COGs from the public http(s)/s3 hosts their STAC items "
        "name (never loopback or private addresses). Off: tiles fall back to the chip thumbnails.")] = False,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Another name the explorer answers to in the Host header, besides localhost "
        "and the bound address (e.g. a reverse proxy's name). Repeatable.")] = None,
    render_slots: Annotated[int | None, typer.Option(
        "--render-slots", min=1, max=64, help="Map tiles and index images rendered at once (default: CPU "
        "cores, at most 4).")]
    = None,
) -> None:
    """Start the explorer (web map: similarity search, change detection, a before/after split map; true
    colour or NDVI/NBR/NDWI from the chips; the view in the URL) and print its address."""
    from geofm import storage
    from geofm.errors import NotFoundError
    from geofm.layout import Layout
    from geofm.server import ExplorerOptions
    from geofm.server import serve as run_serve

    if not storage.exists(Layout.outputs_dir(out)):
        raise NotFoundError(f"--out {out!r}: no pipeline output there (expected {Layout.outputs_dir(out)})")
    for a in archive or []:
        if not storage.exists(a):
            raise NotFoundError(f"--archive {a!r}: no such folder")
    opts = ExplorerOptions(archives=tuple(archive or ()), allow_remote_assets=allow_remote_assets,
                           allow_hosts=tuple(allow_host or ()),
                           **({"render_slots": render_slots} if render_slots else {}))
    shown = f"[{host}]" if ":" in host else host
    console.print(f"geofm explorer on http://{shown}:{port}/ (API docs: http://{shown}:{port}/docs) "
                  f"for {out}")
    run_serve(out, host=host, port=port, options=opts)


# ---- export --------------------------------------------------------------------------------------
export_app = typer.Typer(help="Change results out of the tool: alert polygons, per-patch change rasters.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
ExportGridOpt = Annotated[list[str] | None, typer.Option("--grid", help="Only this MGRS grid (repeatable).")]


@export_app.command("alerts")
def export_alerts(
    config: ConfigOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None, set_: SetOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="geojson, gpkg or parquet (GeoParquet).")]
    = "geojson",
    dest: Annotated[str | None, typer.Option("--dest", help="File to write (default: "
                                             "output/<aoi>/exports/change_alerts.<format>).")] = None,
    grid: ExportGridOpt = None,
) -> None:
    """Changed patches dissolved into polygons: first-detected date, confirmed, magnitude, chip id, rule.

    A patch is alerted once changed on alert_min_dates (2) observations in a row, or on every one up to
    its last (unconfirmed). The rule is the one the run recorded; the thresholds are the config's (--set
    patch_z_threshold=..., patch_change_threshold=..., alert_min_dates=...), so alerts can be
    re-thresholded without rerunning."""
    from geofm.alerts import export_alerts as run_export

    cfg = build_config(config, None, aoi_name, out, None, None, set_)
    url, frame = run_export(cfg, fmt, dest, grid)
    firsts = sorted(frame["first_detected"]) if len(frame) else []
    console.print(f"{len(frame)} alert polygons" + (f", first detected {firsts[0]} .. {firsts[-1]}"
                                                     if firsts else ""), highlight=False)
    typer.echo(url)


@export_app.command("change-raster")
def export_change_raster(
    date_: Annotated[str, typer.Option("--date", help="Date of the change layer, YYYY-MM-DD.")],
    config: ConfigOpt = None, aoi_name: AoiNameOpt = None, out: OutOpt = None, set_: SetOpt = None,
    dest: Annotated[str | None, typer.Option(
        "--dest", help="File to write, one grid only (default: "
        "output/<aoi>/exports/<grid>/change_raster_<date>.tif).")] = None,
    grid: ExportGridOpt = None,
) -> None:
    """Per-patch change scores of one date over the AOI as a COG per grid (float32, NaN = no data)."""
    from geofm.alerts import export_change_raster as run_export

    cfg = build_config(config, None, aoi_name, out, None, None, set_)
    day = _date(date_, "--date")
    assert day is not None
    for url in run_export(cfg, day, grid, dest):
        typer.echo(url)


# ---- sub-apps ----------------------------------------------------------------------------------
from geofm.models.cli import models_app  # noqa: E402

app.add_typer(models_app, name="models")

from geofm.finetune.cli import finetune_app  # noqa: E402

app.add_typer(finetune_app, name="finetune")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
