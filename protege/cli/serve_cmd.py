"""`protege predict`, `protege export`, `protege serve`: use a trained student."""

from __future__ import annotations

import click

from protege.cli.cascade_cmd import teacher_options


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", help="Default: INPUT.predictions.jsonl. With --ray: a directory "
              "or URL for the shards (required).")  # fmt: skip
@click.option("--rationale", is_flag=True, help="Also generate the rationale (slower).")
@click.option("--batch-size", default=32, show_default=True, help="Inputs per model call.")
@click.option(
    "--fast/--generate",
    default=True,
    show_default=True,
    help="Score the closed label set, or generate and parse.",
)
@click.option("--device", default="cpu", show_default=True,
              help="Without --ray (with it: --gpus-per-worker).")  # fmt: skip
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray: INPUT may be a file or directory of JSONL/CSV/Parquet, local or "
              "a URL (s3://, gs://, hf://); one output shard per input block.")  # fmt: skip
@click.option("--address", help="--ray: `auto`, HOST:PORT or ray://HOST:PORT of a running "
              "cluster (default: start a local instance).")  # fmt: skip
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="--ray: predictor actors.")  # fmt: skip
@click.option("--threads-per-worker", default=1, show_default=True, type=click.IntRange(1),
              help="--ray: CPUs (and model threads) per actor.")  # fmt: skip
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0),
              help="--ray: GPUs per actor (the model runs on CUDA when > 0).")  # fmt: skip
@click.option("--block-rows", default=32768, show_default=True, type=click.IntRange(1),
              help="--ray: rows per input block (rounded up to whole batches).")  # fmt: skip
@click.option("--output-format", type=click.Choice(["parquet", "jsonl"]), default="parquet",
              show_default=True, help="--ray: the shards' format.")  # fmt: skip
def predict(model_dir, input_path, output, rationale, batch_size, fast, device, use_ray,
            address, workers, threads_per_worker, gpus_per_worker, block_rows,
            output_format) -> None:  # fmt: skip
    """Predict labels (and rationales) for every row of INPUT with the student in MODEL_DIR.

    Resumable: an interrupted run leaves OUT.partial, which the next run continues; with
    --ray, a rerun skips the shards already written.
    """
    if use_ray:
        return _predict_ray(model_dir, input_path, output, rationale, batch_size, fast,
                            address, workers, threads_per_worker, gpus_per_worker, block_rows,
                            output_format)  # fmt: skip
    from protege.serve.batch import predict_file
    from protege.serve.predictor import Predictor

    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == "input_path")
    input_path = click.Path(exists=True, dir_okay=False).convert(input_path, param, ctx)
    predictor = Predictor.load(model_dir, device=device, batch_size=batch_size)
    r = predict_file(
        predictor, input_path, output, with_rationale=rationale, fast=fast, model_dir=model_dir
    )
    resumed = f", {r.n_resumed} resumed from a previous run" if r.n_resumed else ""
    bad = f", {r.n_malformed} malformed" if r.n_malformed else ""
    click.echo(f"wrote {r.n_rows} predictions to {r.output}{resumed}{bad}")


def _predict_ray(model_dir, input_path, output, rationale, batch_size, fast, address, workers,
                 threads, gpus, block_rows, fmt) -> None:  # fmt: skip
    from protege.serve.distributed import predict_ray

    if not output:
        raise click.UsageError("--ray needs --output (a directory or URL for the shards)")
    r = predict_ray(model_dir, input_path, output, address=address, workers=workers,
                    threads=threads, gpus=gpus, batch_size=batch_size, block_rows=block_rows,
                    fmt=fmt, with_rationale=rationale, fast=fast)  # fmt: skip
    skipped = f"; {r.n_skipped} more were written by a previous run" if r.n_skipped else ""
    click.echo(
        f"wrote {r.n_rows} predictions in {r.n_blocks - r.n_skipped} shards to {r.output}{skipped}"
    )
    if r.bad_rows:
        for line in r.bad_rows[:20]:
            click.echo(f"bad row: {line}", err=True)
        more = " (first 20 above)" if len(r.bad_rows) > 20 else ""
        raise click.ClickException(
            f"{len(r.bad_rows)} bad rows left out{more}, listed in {r.output}/_errors/; the "
            "other rows are written"
        )


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
    from protege.evaluate.agreement import match_rate
    from protege.students import export_info, export_student

    out = export_student(model_dir, fmt, output, quantization)
    made = (export_info(out) or {}).get("quantization", quantization)
    note = "" if made == quantization else f"; {quantization} asked, nothing in it to quantize"
    click.echo(f"exported {model_dir} to {out} ({made}{note})")
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
@click.option("--max-queued-inputs", default=4096, show_default=True,
              help="Inputs waiting for the model; past it, 503 with Retry-After.")  # fmt: skip
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
          max_queued_inputs, max_connections, header_timeout, reject_delay, fast, device,
          threads, served_model_name, prompt_template, teacher, model, base_url, max_cost,
          teacher_opts, target_agreement, threshold, shadow) -> None:  # fmt: skip
    """Serve the student in MODEL_DIR over HTTP.

    \b
    POST /v1/chat/completions, GET /v1/models: OpenAI's API (change the app's base_url only):
                  the student's input is read out of the teacher prompt (--prompt-template)
    POST /v1/predict  {"inputs": [{"premise": ..., "hypothesis": ...} or "text", ...],
                       "rationale": false}
                  ->  {"predictions": [{"label": ..., "text": ..., "score": ...}, ...]}
    A record has the fields of the task's input_template; a string is the source as is.
    Label scoring adds "scores"; "rationale": true adds a rationale student's
    "rationale". Errors: 400/413/422 with {"error": "one line"}.
    GET /healthz: {"status": "ok", "task", "format", "labels"}; GET /metrics: Prometheus.
    After `protege run`, RUN_DIR/best.json names the checkpoint to serve.

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
        max_queued_inputs=max_queued_inputs,
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
