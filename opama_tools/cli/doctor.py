from __future__ import annotations

from rich.table import Table

from rich.console import Console

from opama_tools.cli.app import app


@app.command(
    help="Show every pretrained component opama can use, where it is looked for, and whether it was found.\n\n"
    "Example: OPAMA_SD2_INPAINT=/models/sd2-inpainting opama doctor"
)
def doctor() -> None:
    from opama_tools.doctor import component_status, inpaint_checkpoints, runtime_status

    console = Console()  # created per call so $COLUMNS is honoured

    table = Table(title="opama doctor: pretrained components (never downloaded)", show_lines=True)
    for col in ("component", "weights", "looked for (flag; env; cache)", "found", "needed by"):
        table.add_column(col, overflow="fold")
    from rich.markup import escape

    from opama_tools.io import printable_path

    rows = component_status()
    for r in rows:  # paths come from the environment: shown as plain text, never as markup
        found = f"[green]yes[/] ({escape(r.source)}): {escape(printable_path(r.found))}" if r.found else "[red]missing[/]"
        table.add_row(f"{r.title}\n[dim]{r.key}[/]", r.what, escape(printable_path(r.looked)), found, r.needed_by)
    console.print(table)
    from opama_model.weights import hf_cache_dir

    inp = Table(title="SD inpainting checkpoints in the Hugging Face cache (opama outpaint --model REPO_ID, no "
                "training)", show_header=True)
    inp.add_column("repo id")
    inp.add_column("snapshot", overflow="fold")
    found_inpaint = inpaint_checkpoints()
    for repo_id, snap in found_inpaint:
        inp.add_row(escape(repo_id), escape(printable_path(snap)))
    if not found_inpaint:
        inp.add_row("[dim]none[/]", escape(printable_path(f"looked in {hf_cache_dir()}")))
    console.print(inp)
    rt = Table(title="runtime", show_header=False)
    rt.add_column("what")
    rt.add_column("value", overflow="fold")
    for k, v in runtime_status().items():
        rt.add_row(k, v)
    console.print(rt)
    n = sum(r.found is not None for r in rows)
    console.print(
        f"{n}/{len(rows)} components found. Tiny presets (tests, `opama demo`) need none of them."
    )
