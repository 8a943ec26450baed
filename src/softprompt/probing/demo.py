"""The demo: manual, soft and deep prompts on the geography relations, summarised in one table.

Each (relation, prompt) pair is an ordinary probe run under ``OUT/<relation>/<manual|soft|deep>``, so
the demo can be interrupted and rerun: finished runs are reused and unfinished ones resume from their
checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich import box
from rich.table import Table

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_text
from softprompt.metrics import macro_average
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.probing.candidates import CandidateOptions, build_candidates
from softprompt.probing.geo import geo_relations
from softprompt.probing.probe import resume_settings, run_probe, run_settings
from softprompt.probing.relations import Relation
from softprompt.progress import progress_bar
from softprompt.runs import RunDir
from softprompt.templates import TemplateEncoder

log = logging.getLogger(__name__)

# Sized to finish within 15 minutes on 2 CPU cores with SmolLM2-135M (about 1 s per 64-example step):
# at most 4 steps an epoch, 10 epochs, for 8 trained prompts.
DEMO_CONFIG = TrainConfig(lr=3e-3, max_epochs=10, patience=3)
DEMO_LIMITS = {"train": 256, "dev": 64, "test": 200}
# A smoke test of the whole pipeline in about a minute.
QUICK_CONFIG = TrainConfig(lr=3e-3, max_epochs=2, patience=3)
QUICK_LIMITS = {"train": 32, "dev": 16, "test": 32}
# Summary column -> prompt mode; "manual" is the LAMA baseline: the template's own words.
COLUMNS = {"manual": "hard", "soft": "soft", "deep": "deep"}
METRICS = {"p@1": "P@1", "p@10": "P@10", "mrr": "MRR"}
MACRO = "macro-average"

Results = dict[str, dict[str, dict[str, float]]]  # relation -> column -> test metrics


def run_demo(
    lm: LanguageModel,
    out: Path,
    relations: Sequence[Relation] | None = None,
    config: TrainConfig = DEMO_CONFIG,
    limits: Mapping[str, int] | None = None,
    force: bool = False,
    progress: bool = True,
    candidates: CandidateOptions | None = None,
) -> Results:
    """Probe each relation (default: the geography ones) with each prompt column; write ``summary.md``.

    ``limits`` defaults to DEMO_LIMITS. A run left in ``out`` with other settings stops the demo before
    anything runs, unless ``force``, which starts that run over. With ``candidates``, answers of any length
    are ranked among the relation's answers (most capitals and currencies are several tokens, and the
    vocabulary mode drops them).
    """
    relations = geo_relations() if relations is None else relations
    limits = DEMO_LIMITS if limits is None else limits
    plan = [(relation, column, RunDir(out / relation.name / column, "softprompt demo"))
            for relation in relations for column in COLUMNS]
    # Settings are checked for every run first, so that a clash stops the demo now rather than midway.
    restart: set[Path] = set()
    for relation, column, run in plan:
        chosen = (build_candidates(candidates, relation, TemplateEncoder(relation.template, lm))
                  if candidates is not None else None)
        changed = run.changed(resume_settings(run_settings(lm, relation, COLUMNS[column], "template", config, limits,
                                                           chosen)))
        if changed and not force:
            raise SoftpromptError(
                f"{run.path} holds a run made with other settings ({', '.join(changed)}); "
                "choose another --out, or pass --force to redo such runs"
            )
        if changed:
            restart.add(run.path)

    engine = Engine(lm)
    results: Results = {}
    for relation, column, run in progress_bar(plan, "demo", progress):
        started = time.monotonic()
        if run.finished and run.path not in restart:
            doc = run.metrics()
            note = "finished earlier"
        else:
            doc = run_probe(lm, relation, run.path, mode=COLUMNS[column], config=config, limits=limits,
                            resume=run.path not in restart, progress=False, engine=engine, candidates=candidates)
            note = f"{time.monotonic() - started:.0f} s"
        results.setdefault(relation.name, {})[column] = doc["test"]
        log.info("%-14s %-7s P@1 %5.1f  (%s)", relation.name, column, 100 * doc["test"]["p@1"], note)
    write_text(out / "summary.md", summary_markdown(results, lm.name, config, limits, candidates is not None))
    return results


def _rows(results: Results) -> list[tuple[str, str, list[float]]]:
    """(relation, test size, the metrics ×100 column by column), then the macro-average."""
    rows = []
    for relation, by_column in results.items():
        values = [100 * by_column[c][m] for c in COLUMNS for m in METRICS]
        rows.append((relation, str(by_column["manual"]["n"]), values))
    macro = {c: macro_average({r: results[r][c] for r in results}) for c in COLUMNS}
    rows.append((MACRO, "", [100 * macro[c][m] for c in COLUMNS for m in METRICS]))
    return rows


def summary_table(results: Results, title: str | None = None) -> Table:
    """Relations × {manual, soft, deep} × {P@1, P@10, MRR} (×100), with a macro-average row."""
    # One column per prompt, holding its three metrics side by side, keeps the table within 80 characters.
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("relation", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    names = " ".join(f"{name:>5}" for name in METRICS.values())
    for column in COLUMNS:
        table.add_column(f"{column:^17}\n{names}", justify="center", no_wrap=True, min_width=17)
    for relation, n, values in _rows(results):
        if relation == MACRO:
            table.add_section()
        triples = [" ".join(f"{v:5.1f}" for v in values[i : i + len(METRICS)])
                   for i in range(0, len(values), len(METRICS))]
        table.add_row(relation, n, *triples)
    return table


def summary_markdown(
    results: Results, model: str, config: TrainConfig, limits: Mapping[str, int], candidates: bool = False
) -> str:
    """The summary table as Markdown, with the settings that produced it."""
    header = ["relation", "n", *(f"{c} {m}" for c in COLUMNS for m in METRICS.values())]
    lines = [
        "# softprompt demo",
        "",
        f"Model `{model}`. Test P@1, P@10 and MRR (×100) per relation; n is the number of test facts.",
        f"Training: Adam, lr {config.lr:g}, batch {config.batch_size}, at most {config.max_epochs} epochs, "
        f"early stopping with patience {config.patience} on dev loss.",
        ("Answers of any length, ranked among the relation's answers (candidate mode). Facts per split: "
         if candidates else "Facts per split (single-token answers only): ")
        + (", ".join(f"{split} at most {n}" for split, n in limits.items()) or "all") + ".",
        "",
        "| " + " | ".join(header) + " |",
        "|:--|" + "--:|" * (len(header) - 1),
    ]
    for relation, n, values in _rows(results):
        name = f"**{relation}**" if relation == MACRO else relation
        lines.append("| " + " | ".join([name, n, *(f"{v:.1f}" for v in values)]) + " |")
    return "\n".join(lines) + "\n"
