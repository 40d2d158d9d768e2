"""`protege predict`, `protege export`, `protege serve`: use a trained student."""

from __future__ import annotations

import click

from protege.cli.cascade_cmd import teacher_options


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Default: INPUT.predictions.jsonl"
)
@click.option("--rationale", is_flag=True, help="Also generate the rationale (slower).")
@click.option("--batch-size", default=32, show_default=True, help="Inputs per model call.")
@click.option(
    "--fast/--generate",
    default=True,
    show_default=True,
    help="Score the closed label set, or generate and parse.",
)
@click.option("--device", default="cpu", show_default=True)
def predict(model_dir, input_path, output, rationale, batch_size, fast, device) -> None:
    """Predict labels (and rationales) for every row of INPUT.jsonl with the student in MODEL_DIR.

    Resumable: an interrupted run leaves OUT.partial, which the next run continues.
    """
    from protege.serve.batch import predict_file
    from protege.serve.predictor import Predictor

    predictor = Predictor.load(model_dir, device=device, batch_size=batch_size)
    r = predict_file(
        predictor, input_path, output, with_rationale=rationale, fast=fast, model_dir=model_dir
    )
    resumed = f", {r.n_resumed} resumed from a previous run" if r.n_resumed else ""
    bad = f", {r.n_malformed} malformed" if r.n_malformed else ""
    click.echo(f"wrote {r.n_rows} predictions to {r.output}{resumed}{bad}")


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ct2", "onnx"]),
    help="Default: ct2 for seq2seq and causal students, onnx for classifiers.",
)
@click.option("--quantization", default="int8", show_default=True)
@click.option("--output", "-o", type=click.Path(), help="Default: MODEL_DIR-FORMAT-QUANTIZATION")
@click.option(
    "--check",
    type=click.Path(exists=True, dir_okay=False),
    help="Records to compare the export's labels with the PyTorch model's.",
)
def export(model_dir, fmt, quantization, output, check) -> None:
    """Export the student in MODEL_DIR: CTranslate2 (T5, BART, the Llama family) or ONNX run
    by onnxruntime (classifiers)."""
    from protege.serve.ct2 import match_rate
    from protege.students import export_student

    out = export_student(model_dir, fmt, output, quantization)
    click.echo(f"exported {model_dir} to {out} ({quantization})")
    if check:
        from protege.data.io import read_records
        from protege.serve.predictor import Predictor

        m = match_rate(Predictor.load(model_dir), Predictor.load(out), read_records(check))
        click.echo(
            f"same prediction as PyTorch on {m['matches']}/{m['n']} rows ({m['match_rate']:.1%})"
        )


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the API key (first line). Or set $PROTEGE_API_KEY.",
)
@click.option(
    "--api-key",
    envvar="PROTEGE_API_KEY",
    help="The API key; on the command line it shows in `ps`: prefer $PROTEGE_API_KEY or "
    "--api-key-file. Required unless bound to loopback.",
)
@click.option(
    "--allowed-host", multiple=True, help="Host header name to accept besides localhost (repeat)."
)
@click.option("--cors-origin", multiple=True, help="Browser origin allowed to call (repeat).")
@click.option("--max-batch-size", default=32, show_default=True)
@click.option("--max-batch-tokens", default=4096, show_default=True)
@click.option("--max-wait-ms", default=5.0, show_default=True)
@click.option("--max-body-bytes", default=1_000_000, show_default=True)
@click.option("--max-input-chars", default=10_000, show_default=True)
@click.option("--max-connections", default=4096, show_default=True)
@click.option("--header-timeout", default=10.0, show_default=True, help="Seconds.")
@click.option("--reject-delay", default=0.25, show_default=True,
              help="Seconds a refused request (4xx) waits for its answer.")  # fmt: skip
@click.option("--fast/--generate", default=True, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1), help="CPU threads for the model (default: all).")
@click.option("--served-model-name", default="", help="Name in /v1/models and in answers "
              "(default: MODEL_DIR's name).")  # fmt: skip
@click.option(
    "--prompt-template",
    help="The teacher prompt chat requests carry: a recipe name "
    "(label, summarize ...), a .j2 file, or raw (default: what MODEL_DIR recorded).",
)
@teacher_options
@click.option(
    "--target-agreement",
    type=click.FloatRange(0, 1, min_open=True),
    help="Cascade: the threshold `protege calibrate` chose for this agreement.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help="Cascade: below this student confidence the teacher answers.",
)
@click.option(
    "--shadow",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Cascade: share of student answers also sent to the teacher (agreement).",
)
@click.pass_context
def serve(ctx, model_dir, host, port, api_key_file, api_key, allowed_host, cors_origin,
          max_batch_size, max_batch_tokens, max_wait_ms, max_body_bytes, max_input_chars,
          max_connections, header_timeout, reject_delay, fast, device, threads,
          served_model_name, prompt_template, teacher, model, base_url, max_cost, teacher_opts,
          target_agreement, threshold, shadow) -> None:  # fmt: skip
    """Serve the student in MODEL_DIR over HTTP.

    \b
    POST /v1/chat/completions, GET /v1/models   OpenAI's API: change the app's base_url only
    POST /v1/predict   {"inputs": [{"premise": ..., "hypothesis": ...} or "text", ...],
                        "rationale": false}
                       -> {"predictions": [{"label", "text", "score", "scores"?, "rationale"?}]}
    GET /healthz {"status": "ok", "task", "format", "labels"}, /metrics (Prometheus)

    A /v1/predict record has the fields of the task's input_template; a string is the source
    as is; "rationale": true is for students trained with rationales (others answer 422);
    a bad request gets 400/413/422 and {"error": "one line"}. After `protege run`,
    RUN_DIR/best.json (with variants RUN_DIR/<variant>/best.json) names the checkpoint to serve.

    With --teacher (and --target-agreement or --threshold) the teacher answers what the
    student is unsure of, and its answers are stored as training data.
    """
    from click.core import ParameterSource

    from protege.serve.predictor import Predictor
    from protege.serve.server import ServeConfig, check_key_policy, serve

    if api_key_file:
        lines = open(api_key_file, encoding="utf-8").read().splitlines()
        api_key = lines[0].strip() if lines else ""
        if not api_key:
            raise click.ClickException(f"{api_key_file}: no key on its first line")
    elif api_key and ctx.get_parameter_source("api_key") == ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --api-key is visible to every user in `ps`; "
            "use $PROTEGE_API_KEY or --api-key-file",
            err=True,
        )
    cfg = ServeConfig(
        host=host,
        port=port,
        api_key=api_key or None,
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body_bytes,
        max_input_chars=max_input_chars,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        reject_delay_s=reject_delay,
        allowed_hosts=list(allowed_host),
        cors_origins=list(cors_origin),
        fast=fast,
        served_name=served_model_name,
        prompt_template=prompt_template,
    )
    check_key_policy(host, api_key)  # before loading the model
    wants = teacher or target_agreement is not None or threshold is not None
    if wants and (not teacher or (target_agreement is None) == (threshold is None)):
        raise click.UsageError("a cascade needs --teacher and one of --target-agreement or "
                               "--threshold")  # fmt: skip
    if not wants and (shadow or model or base_url or max_cost is not None):
        raise click.UsageError("--model, --base-url, --max-cost and --shadow need --teacher")
    if target_agreement is not None:
        from protege.serve.calibrate import threshold_for

        threshold = threshold_for(model_dir, target_agreement).threshold
    predictor = Predictor.load(model_dir, device=device, threads=threads, batch_size=max_batch_size)
    if not teacher:
        click.echo(f"serving {model_dir} on http://{host}:{port} (Ctrl-C to stop)", err=True)
        serve(predictor, cfg)
        return
    from protege.cli.cascade_cmd import live_teacher, teacher_config
    from protege.serve.cascade import Cascade

    tcfg = teacher_config(teacher, model, base_url, teacher_opts)
    with live_teacher(tcfg, "cascade", max_cost, f"serve cascade :{port}") as relay:
        click.echo(f"serving {model_dir} on http://{host}:{port}, the teacher {tcfg.model_name} "
                   f"below confidence {threshold:.4f} (Ctrl-C to stop)", err=True)  # fmt: skip
        serve(predictor, cfg, Cascade(relay, threshold, shadow))


COMMANDS = [predict, export, serve]
