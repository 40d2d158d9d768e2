"""`protege generate` and `protege teacher {import,stats,key}`: the teacher writes the data."""

from __future__ import annotations

import click

from protege.cli.common import overrides_argument

TEACHER_KINDS = ["openai", "local", "replay"]


@click.command("generate")
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="GenerateConfig YAML.")
@click.option("--recipe", help="5w, explain, label, reverse, summarize, or a template file.")
@click.option("--input", "input_", help="Data file (JSONL/CSV/Parquet) or hub dataset name.")
@click.option("--output", type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option("--teacher", type=click.Choice(TEACHER_KINDS), help="Which kind of teacher.")
@click.option("--model", help="Teacher model name.")
@click.option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
@click.option("--concurrency", type=int, help="Requests in flight at once.")
@click.option("--max-cost", type=float, help="Dollar budget; stops before it could be passed.")
@click.option("--dry-run", is_flag=True, default=None, help="Count calls and cost; call nothing.")
@click.option("--limit", type=int, help="Use only the first N records.")
@overrides_argument
def generate(config, recipe, input_, output, teacher, model, base_url, concurrency, max_cost,
             dry_run, limit, overrides) -> None:  # fmt: skip
    """Run a recipe over a data set through a teacher, paying only for prompts never answered.

    \b
    protege generate --recipe explain --input data/train.jsonl --output out.jsonl \\
        --teacher openai --model gpt-4.1-mini --max-cost 5
    protege generate -c generate.yaml teacher.concurrency=32 --dry-run

    Every answer is kept in the teacher store; a rerun sends only what is missing. A YAML with
    a top-level `generate:` mapping is read from that section; a recipe (its `generate:` a list
    of steps) is priced step by step with --dry-run, and run with `protege run RECIPE`.
    """
    from protege.config import apply_overrides, from_dict, read_yaml
    from protege.generate import GenerateConfig, run_generate

    data = read_yaml(config) if config else {}
    if isinstance(data.get("generate"), list):
        return _recipe_dry_run(config, overrides, dry_run)
    if isinstance(data.get("generate"), dict):
        data = data["generate"]
    flags = {
        "recipe": recipe, "input": input_, "output": output, "teacher.kind": teacher,
        "teacher.model": model, "teacher.base_url": base_url, "teacher.concurrency": concurrency,
        "max_cost": max_cost, "dry_run": dry_run, "limit": limit,
    }  # fmt: skip
    data = apply_overrides(data, [])
    for key, value in flags.items():
        if value is not None:
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    cfg = from_dict(GenerateConfig, apply_overrides(data, list(overrides)))
    result = run_generate(cfg)
    _print_result(result)
    if result.n_failed or result.n_skipped:
        raise click.exceptions.Exit(1)


def _recipe_dry_run(path: str, overrides: tuple[str, ...], dry_run: bool | None) -> None:
    """`generate -c RECIPE --dry-run`: price every teacher step of a recipe."""
    from protege.errors import ConfigError
    from protege.plan import plan_lines, plan_recipe
    from protege.recipe import load_recipe

    if not dry_run:
        raise ConfigError(
            f"{path}: a recipe; its teacher steps run with `protege run {path}` (their data "
            "comes from the recipe's splits); add --dry-run to price them here"
        )
    steps, _ = plan_recipe(load_recipe(path, list(overrides)))
    lines = plan_lines(steps, [])
    click.echo("\n".join(lines[: lines.index("would train:")]))


def _print_result(r) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dry run: nothing was called" if r.dry_run else "generate", box=None)
    table.add_column("")
    table.add_column("", justify="right")
    rows = [
        ("records", r.n_records),
        ("distinct prompts", f"{r.n_requests} ({r.reduction:.0%} fewer calls than records)"),
        ("cached (no call)", r.n_cached),
    ]
    if r.dry_run:
        rows += [
            ("calls to make", r.n_requests - r.n_cached),
            ("est. input tokens", r.est_input_tokens),
            ("max output tokens", r.est_output_tokens),
            ("est. cost online (upper bound)", _cost(r, r.est_cost_usd)),
            ("est. cost batch (upper bound)", _cost(r, r.est_batch_cost_usd)),
        ]
    else:
        latency = f"{r.mean_latency_s:.3f}s" if r.mean_latency_s is not None else "-"
        rows += [
            ("calls made", f"{r.n_calls} ({r.n_retries} retries)"),
            ("answered by another process", r.n_elsewhere),
            ("failed (rerun to retry)", r.n_failed),
            ("skipped (budget)", r.n_skipped),
            ("flagged", r.n_flagged),
            ("cost", f"${r.cost_usd:.4f}"),
            ("mean latency", latency),
            ("written", f"{r.n_written} -> {r.output}"),
        ]
    for name, value in rows:
        table.add_row(name, str(value))
    console = Console(stderr=True)
    console.print(table)
    for error in r.errors:
        console.print(f"[red]error:[/red] {error}")
    for rule in r.learned:
        console.print(f"[yellow]learned from the endpoint:[/yellow] {rule}")


def _cost(r, dollars: float | None) -> str:
    if dollars is None:
        return "unknown price (set teacher.prices.<model>.input/output, $ per 1M tokens)"
    return f"${dollars:.4f} ({r.price_source})"


@click.group("teacher")
def teacher() -> None:
    """The teacher store: import recorded answers, show usage, keep API keys."""


@teacher.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt-field", default="teacher_prompt", show_default=True)
@click.option("--response-field", default="rationale", show_default=True)
@click.option("--model", default="gpt-3.5-turbo-0125", show_default=True)
@click.option("--system", default=None, help="System message the prompts were sent with.")
@click.option("--temperature", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=123, show_default=True)
@click.option("--max-tokens", type=int, default=400, show_default=True)
def import_(file, prompt_field, response_field, model, system, temperature, seed, max_tokens):
    """Record existing teacher outputs (prompt -> response) so replaying them costs nothing.

    The model and parameters must be those a later `generate` uses: they are part of the key.
    A file of answers the store once refused (`*.unwritten.jsonl`) is imported as it was saved.
    """
    from protege.teacher import rescue
    from protege.teacher.importer import import_answers

    if rescue.is_rescue_file(file):
        from protege.teacher.store import TeacherStore

        items = rescue.load(file)
        with TeacherStore() as store:
            store.put_many(items)
        click.echo(f"imported {len(items)} saved answers from {file}; it can be removed")
        return

    params = {"temperature": temperature, "seed": seed, "max_tokens": max_tokens}
    n = import_answers(file, prompt_field, response_field, model, system=system, params=params)
    click.echo(f"imported {n} answers from {file} as {model}")


@teacher.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--by", type=click.Choice(["day", "model", "run"]), help="Only spend grouped so.")
def stats(as_json: bool, by: str | None) -> None:
    """Calls, tokens, cost and failures per model; spend by day, model and run; the cap.

    `--json` prints the per-model rows; `--by run --json` the spend of each run."""
    import json

    from rich.console import Console
    from rich.table import Table

    from protege.teacher.endpoint_ids import describe
    from protege.teacher.endpoints import by_endpoint
    from protege.teacher.spend import get_cap, spend_by, total_spent
    from protege.teacher.store import TeacherStore

    with TeacherStore() as store:
        rows = store.stats()
        endpoints = by_endpoint(store)
        spends = {what: spend_by(store, what) for what in ("day", "model", "run")}
        cap, spent, path = get_cap(store), total_spent(store), store.path
    if as_json:
        click.echo(json.dumps(spends[by] if by else rows, indent=2))
        return
    if by:
        spends = {by: spends[by]}
    table = Table(title=str(path))
    for col in ("model", "calls", "ok", "failed", "imported", "input tok", "output tok", "cost",
                "mean latency"):  # fmt: skip
        if col == "model":  # whole names, wrapped where the terminal is narrow: never cut
            table.add_column(
                col,
                overflow="fold",
                min_width=min(24, max(map(len, ["model"] + [r["model"] for r in rows]))),
            )
        else:
            table.add_column(col, justify="right")
    for r in rows:
        latency = f"{r['mean_latency_s']:.3f}s" if r["mean_latency_s"] is not None else "-"
        table.add_row(r["model"], *(str(r[k]) for k in ("calls", "ok", "failed", "imported",
                      "input_tokens", "output_tokens")), f"${r['cost_usd']:.4f}", latency)  # fmt: skip
    console = Console()
    if not by:
        console.print(table)
        t = Table(title="answers by endpoint (teacher.reuse_answers_from takes these ids)",
                  box=None)  # fmt: skip
        for col in ("endpoint", "model", "ok answers"):
            t.add_column(col, overflow="fold", justify="right" if col == "ok answers" else "left")
        for eid, model, n in endpoints:
            t.add_row(describe(eid or ""), model, str(n))
        console.print(t)
    for what, items in spends.items():
        t = Table(title=f"spend by {what}", box=None)
        cols = [what, "calls", "ok", "cost"] + (["wrote"] if what == "run" else [])
        for col in cols:
            t.add_column(col, justify="left" if col in (what, "wrote") else "right")
        for r in items:
            extra = [str(r.get("label") or "-")] if what == "run" else []
            t.add_row(str(r[what]), str(r["calls"]), str(r["ok"]), f"${r['cost_usd']:.4f}", *extra)
        console.print(t)
    limit = f"cap {_usd(cap)}, ${max(0.0, cap - spent):.4f} left" if cap is not None else "no cap"
    console.print(f"spent ${spent:.4f} in all; {limit} (`protege teacher cap set DOLLARS`)")


@teacher.group("cap")
def cap() -> None:
    """A spending cap for the teacher store that no sequence of runs can pass."""


@cap.command("set")
@click.argument("dollars", type=float)
def cap_set(dollars: float) -> None:
    """Cap the store's total spend at DOLLARS (what was spent already counts)."""
    from protege.teacher.spend import set_cap, total_spent
    from protege.teacher.store import TeacherStore

    if dollars < 0:
        raise click.BadParameter("a cap is 0 dollars or more", param_hint="DOLLARS")
    with TeacherStore() as store:
        set_cap(store, dollars)
        spent = total_spent(store)
    click.echo(f"cap {_usd(dollars)} (spent so far ${spent:.4f})")
    if dollars < spent:
        click.secho(
            f"warning: the cap {_usd(dollars)} is below what the store has spent already "
            f"(${spent:.4f}): no paid request is sent until it is raised",
            fg="yellow",
            err=True,
        )


def _usd(dollars: float) -> str:
    """Dollars as set, not rounded to cents: $5.00, $0.002."""
    return f"${dollars:.2f}" if round(dollars, 2) == dollars else f"${dollars:.6f}".rstrip("0")


@cap.command("clear")
def cap_clear() -> None:
    """Remove the store's spending cap."""
    from protege.teacher.spend import set_cap
    from protege.teacher.store import TeacherStore

    with TeacherStore() as store:
        set_cap(store, None)
    click.echo("no cap")


@teacher.group("key")
def key() -> None:
    """API keys in a file only you can read (mode 600)."""


@key.command("set")
@click.argument("name", default="OPENAI_API_KEY")
def key_set(name: str) -> None:
    """Store the key NAME (read from a hidden prompt); used when $NAME is not set."""
    from protege.teacher.keys import set_key

    value = click.prompt(f"{name}", hide_input=True)
    set_key(name, value.strip())
    click.echo(f"saved {name}")


COMMANDS = [generate, teacher]
