"""``softprompt demo``: manual, soft and deep prompts on the embedded geography relations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from softprompt.cli.common import Model, console, load_lm
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL
from softprompt.probing.candidates import CandidateOptions
from softprompt.probing.demo import DEMO_CONFIG, DEMO_LIMITS, QUICK_CONFIG, QUICK_LIMITS, run_demo, summary_table
from softprompt.probing.geo import GEO_RELATIONS

DEMO_HELP = f"""Probe the geography relations ({", ".join(GEO_RELATIONS)}) with manual, soft and deep prompts.

Prints test P@1, P@10 and MRR (×100) per relation and prompt, with a macro-average, and writes the table
to OUT/summary.md. Demo settings: lr {DEMO_CONFIG.lr:g}, batch {DEMO_CONFIG.batch_size}, at most
{DEMO_CONFIG.max_epochs} epochs, patience {DEMO_CONFIG.patience}, at most {DEMO_LIMITS["train"]} train,
{DEMO_LIMITS["dev"]} dev and {DEMO_LIMITS["test"]} test facts per relation (about 4 minutes on 2 CPU cores
with SmolLM2-135M). Rerunning reuses finished runs and resumes interrupted ones.
"""


def demo(
    model: Model = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Where the runs and summary.md go.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help=(
        f"Smoke test: at most {QUICK_LIMITS['train']} train, {QUICK_LIMITS['dev']} dev and "
        f"{QUICK_LIMITS['test']} test facts, {QUICK_CONFIG.max_epochs} epochs."))] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Redo runs in --out that were made with other settings, instead of stopping."
    )] = False,
    answers: Annotated[Literal["vocabulary", "candidates"], typer.Option(
        help="vocabulary: rank the answer over the whole vocabulary (single-token answers only, the paper's "
             "protocol); candidates: rank answers of any length among the relation's answers.")] = "vocabulary",
    negatives: Annotated[int | None, typer.Option(
        min=1, help="With --answers candidates: train each step against N sampled other answers (faster).",
        show_default=False)] = None,
) -> None:
    started = time.monotonic()
    lm = load_lm(model)
    config, caps = (QUICK_CONFIG, QUICK_LIMITS) if quick else (DEMO_CONFIG, DEMO_LIMITS)
    if negatives is not None and answers != "candidates":
        raise SoftpromptError("--negatives applies to candidate answers; add --answers candidates")
    results = run_demo(lm, out, config=config, limits=caps, force=force,
                       candidates=CandidateOptions(negatives=negatives) if answers == "candidates" else None)
    console.print(summary_table(results, title=f"{lm.name}: test metrics (×100)"))
    console.print(f"summary: {out / 'summary.md'}  ({time.monotonic() - started:.0f} s)")
