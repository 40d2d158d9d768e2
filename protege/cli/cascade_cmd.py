"""`protege proxy`, `protege calibrate`, `protege traffic export`: the student in the teacher's
place (with `protege serve --teacher ...`), and the traffic it sees as the next training data."""

from __future__ import annotations

import os
from contextlib import contextmanager

import click

TEACHER_KINDS = ["openai", "local"]


def teacher_options(f):
    """The teacher options of `protege generate`, for commands that call the teacher live."""
    options = [
        click.option("--teacher", type=click.Choice(TEACHER_KINDS), help="Which teacher."),
        click.option("--model", help="Teacher model name (default: the kind's default)."),
        click.option("--base-url", help="OpenAI-compatible endpoint of the teacher."),
        click.option("--max-cost", type=float,
                     help="Dollars this server may pay the teacher (the store's cap also holds)."),
        click.option("--teacher-option", "teacher_opts", multiple=True, metavar="KEY=VALUE",
                     help="Any teacher setting, e.g. api_key_env=MY_KEY, timeout_s=30 (repeat)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def teacher_config(teacher, model, base_url, opts):
    """A TeacherConfig from the options (the replay kind cannot answer new requests)."""
    from protege.config import apply_overrides, from_dict
    from protege.teacher import TeacherConfig

    data = {"kind": teacher or "openai"}
    if model:
        data["model"] = model
    if base_url:
        data["base_url"] = base_url
    return from_dict(TeacherConfig, apply_overrides(data, list(opts)), "teacher")


@contextmanager
def live_teacher(tcfg, source: str, max_cost, label: str):
    """A TeacherRelay for the block (the local kind's llama.cpp server runs meanwhile)."""
    from protege.serve.relay import TeacherRelay
    from protege.teacher.chat import endpoint

    with endpoint(tcfg) as (base_url, api_key):
        yield TeacherRelay(tcfg, base_url, api_key, source, max_cost, label)


@click.command()
@teacher_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--allowed-host", multiple=True, help="Host header name to accept (repeat).")
def proxy(teacher, model, base_url, max_cost, teacher_opts, host, port, allowed_host) -> None:
    """An OpenAI-compatible pass-through to the teacher that stores every answer.

    \b
    protege proxy --teacher openai --model gpt-4.1-mini --port 8001
    # the application: OpenAI(base_url="http://127.0.0.1:8001/v1")

    Identical requests are answered from the teacher store at no cost; every answer becomes
    training data (`protege traffic export`). Set $PROTEGE_API_KEY to require a key.
    """
    from protege.serve.proxy import run_proxy
    from protege.serve.server import ServeConfig, check_key_policy

    cfg = ServeConfig(host=host, port=port, allowed_hosts=list(allowed_host))
    check_key_policy(host, os.environ.get("PROTEGE_API_KEY"))
    tcfg = teacher_config(teacher, model, base_url, teacher_opts)
    with live_teacher(tcfg, "proxy", max_cost, f"proxy :{port}") as relay:
        click.echo(f"proxying {tcfg.model_name} at {relay.base_url} on http://{host}:{port}/v1 "
                   "(Ctrl-C to stop)", err=True)  # fmt: skip
        run_proxy(relay, cfg)


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Held-out rows carrying the teacher's answers (a run's dev split, or "
              "exported traffic).")  # fmt: skip
@click.option("--target-agreement", type=click.FloatRange(0, 1, min_open=True), default=0.97,
              show_default=True, help="Share of its answers on which the student must agree "
              "with the teacher.")  # fmt: skip
@click.option("--teacher-field", help="Field holding the teacher's answer (default: the task's "
              "label or target field).")  # fmt: skip
@click.option("--fast/--generate", default=True, show_default=True,
              help="Calibrate the path you serve: label scoring, or generation.")  # fmt: skip
def calibrate(model_dir, data_path, target_agreement, teacher_field, fast) -> None:
    """Choose the cascade's threshold for MODEL_DIR on held-out rows.

    The threshold is the lowest student confidence at which the student agrees with the
    teacher on at least the target share of the rows it keeps; it is written with the
    coverage it gives into MODEL_DIR (protege_cascade.json, cascade_curve.png).
    """
    from protege.data.io import read_records
    from protege.serve.calibrate import calibrate as run

    cal = run(model_dir, read_records(data_path), target_agreement, teacher_field, data_path,
              fast=fast)  # fmt: skip
    agreement = "-" if cal.agreement is None else f"{cal.agreement:.1%}"
    click.echo(
        f"threshold {cal.threshold:.4f}: the student answers {cal.coverage:.1%} of {cal.n} rows "
        f"with {agreement} agreement ({cal.agreement_metric}); target {target_agreement:g}"
    )
    if cal.agreement is None:
        click.echo("warning: no confidence reaches the target; the teacher would answer all",
                   err=True)  # fmt: skip


@click.group()
def traffic() -> None:
    """Traffic the proxy and the cascade stored, as training data."""


@traffic.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--template",
    help="The prompt the application sends (a recipe name such as "
    "label, or a .j2 file); default: the user message itself is the input.",
)
@click.option("--since", help="Only traffic since a date (2026-12-01) or an age (24h, 7d).")
@click.option("--labels", help="Comma-separated label set (default: the request's schema enum).")
@click.option(
    "--input-template",
    default="Premise: {premise} Hypothesis: {hypothesis}",
    show_default=True,
    help="How the template's {{ input }} splits into fields.",
)
@click.option("--model", help="Only answers of this teacher model.")
def traffic_export(output, template, since, labels, input_template, model) -> None:
    """Write stored traffic as task rows (JSONL) for `protege train` / `protege run`."""
    from protege.teacher.traffic import export_traffic

    label_set = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    r = export_traffic(output, template, since, label_set, input_template, model)
    click.echo(f"wrote {r.n_rows} rows to {r.output} from {r.n_stored} stored answers "
               f"({r.n_unread} not the template's prompt, {r.n_flagged} flagged)")  # fmt: skip
    for reason in r.reasons:
        click.echo(f"  skipped: {reason}", err=True)


COMMANDS = [proxy, calibrate, traffic]
