"""The `protege` command line: a thin layer of small click commands over the library.

Each stage's commands live in their own module; this file only assembles them and turns
`ProtegeError` (a user's mistake) into one clear `click.ClickException` line.
"""

from __future__ import annotations

import click

from protege import __version__
from protege.errors import ProtegeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ProtegeError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="protege")
def main() -> None:
    """protege: turn a large teacher LLM into a small, fast student model for one task.

    \b
    generate   the teacher writes labels, rationales or synthetic inputs
    train      fine-tune a seq2seq student on them (grid, split loss)
    eval       score students (and the teacher) with intervals
    report     Markdown + HTML report of a run directory
    run        generate -> train -> eval -> report from one recipe
    predict / export / serve   use the student (serve: OpenAI-compatible, cascade)
    proxy / calibrate / traffic   the student in the teacher's place, traffic as data
    """


def _register() -> None:
    from protege.cli import cascade_cmd, eval_cmd, run_cmd, serve_cmd, teacher_cmd, train_cmd

    for module in (teacher_cmd, train_cmd, eval_cmd, serve_cmd, cascade_cmd, run_cmd):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
