# SPDX-License-Identifier: Apache-2.0
"""The ``mipruner-vllm`` command: ``smoke``, ``demo-model``, ``demo-data``, ``demo-train``,
``serve``, ``eval-sweep`` and ``explain``.

Each subcommand imports its implementation lazily, so ``mipruner-vllm --help`` stays fast and
nothing imports vLLM before it is needed.
"""

from __future__ import annotations

import typer

from mipruner_vllm.families import FAMILIES

app = typer.Typer(
    name="mipruner-vllm",
    help="MI-Pruner visual-token pruning for vLLM.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command(
    help=(
        "One-line check of the installed environment: vLLM, torchvision, a Qwen2-VL processor, "
        "a selection."
    )
)
def smoke() -> None:
    from mipruner_vllm.envcheck import smoke_report

    typer.echo(smoke_report())


@app.command("demo-model")
def demo_model(
    arch: str = typer.Option(..., help=" | ".join(FAMILIES)),
    out: str = typer.Option(..., help="Output directory of the checkpoint."),
    size: str = typer.Option("tiny", help="tiny (tests) | mid (realistic widths, benchmarks)"),
) -> None:
    """Write a deterministic, randomly initialised checkpoint that vLLM loads offline."""
    from mipruner_vllm.demo_model import build_demo_model

    path = build_demo_model(arch, out, size=size)
    typer.echo(str(path))


@app.command("demo-data")
def demo_data(
    out: str = typer.Option(..., help="Output directory (images/ and items.jsonl)."),
    seed: int = typer.Option(1, help="Split seed: 0 is the training split, 1 the held-out one."),
    n: int = typer.Option(300, min=1, max=100_000, help="Number of items (one image each)."),
    kinds: str = typer.Option(
        "color,shape,position", help="Question kinds, comma-separated: color, shape, position."
    ),
) -> None:
    """Write the trained demo's task items (coloured shapes on a grid) in eval-sweep's JSONL."""
    from mipruner_vllm.demo_model.task import item_kinds, write_items

    try:
        chosen = item_kinds(kinds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--kinds") from None
    typer.echo(str(write_items(out, seed, n, chosen)))


@app.command("demo-train")
def demo_train(
    out: str = typer.Option(..., help="Output directory of the trained checkpoint."),
    steps: int | None = typer.Option(
        None, min=1, help="Optimizer steps (default: the recipe's, demo_model.train.TrainRecipe)."
    ),
    seed: int = typer.Option(0, help="Seed of the initialisation order and the batches."),
) -> None:
    """Train the demo checkpoint on the demo task (CPU, minutes; the recipe in demo_model.train).

    The packaged checkpoint is this command's output with the defaults.
    """
    import json
    import logging

    from mipruner_vllm.demo_model.train import TrainRecipe, train_demo_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = TrainRecipe(seed=seed) if steps is None else TrainRecipe(steps=steps, seed=seed)
    record = train_demo_checkpoint(out, recipe)
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
    help=(
        "Start the OpenAI-compatible server (vLLM's, with the pruning layer). "
        "`serve --help` for flags."
    ),
)
def serve(ctx: typer.Context) -> None:
    from mipruner_vllm.server.launcher import main as serve_main

    serve_main(list(ctx.args))


@app.command(
    "eval-sweep",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def eval_sweep(ctx: typer.Context) -> None:
    """Accuracy, visual tokens kept and TTFT against keep ratio. `eval-sweep --help` for flags."""
    from mipruner_vllm.evaluation.sweep import main as sweep_main

    raise typer.Exit(sweep_main(list(ctx.args)))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def explain(ctx: typer.Context) -> None:
    """PNG of the patches a running server kept for an image/video and a question, with the
    answer. `explain --help` for flags."""
    from mipruner_vllm.explain import main as explain_main

    raise typer.Exit(explain_main(list(ctx.args)))


if __name__ == "__main__":
    app()
