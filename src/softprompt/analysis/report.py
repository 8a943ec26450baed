"""A self-contained HTML report of prompt analyses and mixtures: one file, no network, images inline.

Sections: runs, nearest-token grids (as the figures of Dayton et al. and Qin & Eisner), faithfulness
and scrutability (Patel et al.), stochasticity with a t-SNE map, similarity heatmaps, the zero-shot
transfer matrix, similarity versus transfer, training curves of task runs (transfer as initialisation
against other starts), prompts moved from another model read in the target's vocabulary, and mixture
weights. A section whose analysis part was not run says so. The page checks on load that every image
decoded (``data-images-loaded`` on <body>).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softprompt.analysis.curves import MovedPrompt, TrainingCurve
from softprompt.analysis.transfer import convergence_speed_up, shown_speed
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write

# Summaries and figures first, the long per-vector tables last.
SECTIONS = {
    "runs": "Runs",
    "faithfulness": "Faithfulness and scrutability",
    "stochasticity": "Stochasticity",
    "similarity": "Similarity between prompts",
    "transfer": "Zero-shot transfer",
    "correlation": "Similarity versus transfer",
    "curves": "Transfer as initialisation: training curves",
    "moved": "Prompts moved from another model",
    "mixtures": "Mixture weights",
    "readings": "Nearest tokens",
}
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td.tok{font-family:ui-monospace,monospace;text-align:left;white-space:pre}
.grids{display:flex;flex-wrap:wrap;gap:1.2em}.grid caption{font-weight:600;text-align:left}
.note{color:#666}img{max-width:100%;border:1px solid #eee}nav a{margin-right:1em}
"""
# On load: how many images decoded, and the page's full height (a screenshot is taken that tall).
CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
  document.body.setAttribute("data-page-height", String(document.documentElement.scrollHeight));
});
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def token_text(token: str) -> str:
    """A token with its whitespace and control characters visible."""
    shown = token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown) or "∅"


def num(value: float | None) -> float:
    """A number of an analysis, NaN where it has none (JSON has no NaN: the analysis writes null)."""
    return math.nan if value is None else float(value)


def percent(value: float | None, digits: int = 1, sign: bool = False) -> str:
    """A fraction ×100, or "–" for a metric the data left undefined (null)."""
    return "–" if value is None or math.isnan(value) else f"{100 * value:{'+' if sign else ''}.{digits}f}"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], token_columns: Sequence[int] = (),
          caption: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='tok'>{esc(c)}</td>" if j in token_columns else f"<td>{esc(c)}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    caption = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{caption}<tr>{head}</tr>{body}</table>"


def figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image(fig: Any, alt: str) -> str:
    return f"<p><img src='{figure_uri(fig)}' alt='{esc(alt)}'></p>"


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SoftpromptError("the report draws its figures with matplotlib: pip install 'softprompt[plot]'") from err
    return plt


def missing(part: str) -> str:
    return (f"<p class='note'>Not computed: run <code>softprompt analyze run</code> with "
            f"<code>--parts {part}</code>.</p>")


# --- sections -----------------------------------------------------------------------------------------------


def runs_section(analyses: Sequence[dict[str, Any]]) -> str:
    rows = []
    for a in analyses:
        for r in a["runs"]:
            metrics = ", ".join(f"{k} {percent(v)}" for k, v in r["metrics"].items() if k != "n")
            rows.append([r["label"], r["task"], a["model"], r["kind"], r["length"], r["init"], f"{r['norm']:.1f}",
                         metrics])
    if not rows:
        return "<p class='note'>No prompt analyses were given.</p>"
    return table(["run", "task", "model", "kind", "vectors", "init", "‖P‖_F", "metrics (×100, own eval)"], rows)


def readings_section(a: dict[str, Any]) -> str:
    grids = []
    for label, r in a["readings"].items():
        k = len(r["cosine"]["tokens"][0])
        initial = "initial" in r
        header = ["#", *(["initial"] if initial else []), *[f"cosine {i + 1}" for i in range(k)], "p(w|v)",
                  "euclidean"]
        rows = []
        for i, cos_tokens in enumerate(r["cosine"]["tokens"]):
            cosine = [f"{token_text(t)} ({s:.2f})" for t, s in zip(cos_tokens, r["cosine"]["scores"][i], strict=True)]
            rows.append([i, *([token_text(r["initial"][i])] if initial else []), *cosine,
                         f"{token_text(r['dot']['tokens'][i][0])} ({r['dot']['scores'][i][0]:.2f})",
                         f"{token_text(r['euclidean']['tokens'][i][0])} ({r['euclidean']['scores'][i][0]:.2f})"])
        grids.append(f"<div class='grid'>{table(header, rows, range(1, len(header)), label)}</div>")
    return ("<p class='note'>Each row is one prompt vector, read from top to bottom; the nearest tokens by cosine "
            "(best first), by the model's p(w | v) and by Euclidean distance. Read p(w | v) with care: it favours "
            "tokens whose embeddings have a large norm, whatever the vector's direction.</p>"
            f"<div class='grids'>{''.join(grids)}</div>")


def faithfulness_section(a: dict[str, Any]) -> str:
    lengths = {r["label"]: r["length"] for r in a["runs"]}
    rows = [[label, lengths[label], fmt(f["distance"]), fmt(f["cosine_distance"]), fmt(f["output"]),
             f"{percent(f['top1_agreement'], 0)}%", percent(f["soft_score"]), percent(f["hard_score"]),
             percent(f["performance"]), fmt(f["perplexity"], 1), token_text(f["text"])[:120]]
            for label, f in a["faithfulness"].items()]
    return ("<p class='note'>Δ_D: mean squared Euclidean (and cosine) distance from each vector to its nearest "
            "token; Δ_Output: mean squared logit difference where answers are read, soft vs unembedded prompt, and "
            "how often their top tokens agree; Δ_L: |metric(soft) − metric(unembedded)|; perplexity of the "
            f"unembedded prompt under {esc(a.get('reference') or 'no reference model')} (scrutability).</p>"
            + table(["run", "vectors", "Δ_D", "Δ_D cos", "Δ_Output", "top-1 agree", "soft", "unembedded", "Δ_L",
                     "perplexity", "f_U(P)"], rows, [10]))


def stochasticity_section(a: dict[str, Any]) -> str:
    s = a["stochasticity"]
    rows = [[task, v["prompts"], fmt(v["mean_norm"], 2), fmt(v["norm_variance"], 3), fmt(v["total_variance"], 2),
             fmt(v["within_distance"], 2), fmt(v["between_distance"], 2)] for task, v in s["tasks"].items()]
    summary = table(["task", "prompts", "mean ‖P‖_F", "var ‖P‖_F", "Σ var (to mean prompt)", "mean dist. within",
                     "mean dist. to other tasks"], rows)
    out = ""
    if "tsne" in s:
        t = s["tsne"]
        fig, ax = pyplot().subplots(figsize=(6, 4.5))
        for k, task in enumerate(dict.fromkeys(t["tasks"])):
            xs, ys = zip(*[p for p, tk in zip(t["points"], t["tasks"], strict=True) if tk == task], strict=True)
            ax.plot(xs, ys, "o-", color=f"C{k}", label=task, alpha=0.8)
        ax.legend(fontsize=8)
        ax.set_title(f"t-SNE of {len(t['points'])} prompts ({t['length']} vectors each)")
        out += image(fig, "t-SNE map of prompts coloured by task")
    return out + summary


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], title: str, ax: Any,
            scale: float = 1.0, digits: int = 2) -> None:
    values = [[num(v) * scale for v in row] for row in matrix]
    finite = [v for row in values for v in row if not math.isnan(v)]
    im = ax.imshow(values, cmap="viridis", vmin=min(finite, default=0), vmax=max(finite, default=1))
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(title, fontsize=9)
    pyplot().colorbar(im, ax=ax, fraction=0.046)


def similarity_section(a: dict[str, Any]) -> str:
    s = a["similarity"]
    names = list(s["task_level"])
    tasks = list(next(iter(s["task_level"].values())))
    fig, axes = pyplot().subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = s["task_level"][name]
        heatmap([[m[r][c] for c in tasks] for r in tasks], tasks, tasks, name, ax)
    fig.tight_layout()
    return ("<p class='note'>Task level: the mean over pairs of distinct prompts of the two tasks (the diagonal "
            "compares a task's seeds with each other). Frobenius distance: lower is more similar; cosines and neuron "
            f"overlap: higher is more similar. Neuron overlap is measured on {esc(s['probe_size'])} probe inputs per "
            "task, at the prompt positions and at the answer position.</p>" + image(fig, "similarity heatmaps"))


def transfer_section(a: dict[str, Any]) -> str:
    t = a["transfer"]
    targets, sources = t["targets"], list(t["task_scores"])
    rows = [[f"{s} prompt", *[f"{100 * num(t['task_scores'][s][c]):.1f} "
                              f"({100 * num(t['change_vs_no_prompt'][s][c]):+.1f})" for c in targets]] for s in sources]
    rows.append(["no prompt", *[f"{100 * num(t['no_prompt'][c]):.1f}" for c in targets]])
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    heatmap([[t["change_vs_no_prompt"][s][c] for c in targets] for s in sources], sources, targets,
            "change vs no prompt (×100)", axes[0][0], 100, 1)
    heatmap([[t["change_vs_own"][s].get(c, math.nan) for c in targets] for s in sources], sources, targets,
            "change vs the task's own prompt (×100)", axes[0][1], 100, 1)
    fig.tight_layout()
    return ("<p class='note'>Rows: the task a prompt was trained on (mean over its seeds); columns: the task it is "
            "evaluated on (its first metric ×100; in brackets the change against no prompt).</p>"
            + image(fig, "transfer heatmaps") + table(["source \\ target", *targets], rows))


def correlation_section(a: dict[str, Any]) -> str:
    t = a["transfer"]
    rows = [[c["indicator"], fmt(c["rho"]), fmt(c["p_value"]), c["points"],
             "yes" if not math.isnan(num(c["rho"])) and num(c["rho"]) * c["expected_sign"] > 0 else "no"]
            for c in t["correlations"]]
    n = len(t["correlations"])
    fig, axes = pyplot().subplots(1, n, figsize=(3.3 * n, 3), squeeze=False)
    for ax, c in zip(axes[0], t["correlations"], strict=True):
        xs, ys = t["points"][c["indicator"]]
        ax.scatter([num(x) for x in xs], [100 * num(y) for y in ys], s=14)
        ax.set_xlabel(c["indicator"], fontsize=8)
        ax.set_ylabel("transfer gain vs no prompt (×100)", fontsize=8)
        ax.set_title(f"ρ = {fmt(c['rho'], 2)}, p = {fmt(c['p_value'], 2)}", fontsize=9)
    fig.tight_layout()
    return ("<p class='note'>Each point: one source prompt on another task; x: its mean similarity to that task's "
            "own prompts; y: its score there minus no prompt. Spearman's ρ; 'expected sign' says whether more "
            "similar went with better transfer.</p>"
            + image(fig, "similarity versus transfer")
            + table(["indicator", "Spearman ρ", "p", "points", "expected sign"], rows))


# Per section: what an analysis must hold to show it, the part that computes it, and how it is drawn.
ANALYSIS_SECTIONS: dict[str, tuple[Callable[[dict[str, Any]], bool], str, Callable[[dict[str, Any]], str]]] = {
    "readings": (lambda a: "readings" in a, "readings", readings_section),
    "faithfulness": (lambda a: "faithfulness" in a, "faithfulness", faithfulness_section),
    "stochasticity": (lambda a: "stochasticity" in a, "stochasticity", stochasticity_section),
    "similarity": (lambda a: "similarity" in a, "similarity", similarity_section),
    "transfer": (lambda a: "transfer" in a, "transfer", transfer_section),
    "correlation": (lambda a: "correlations" in a.get("transfer", {}), "similarity,transfer", correlation_section),
}


def curves_section(curves: Sequence[TrainingCurve]) -> str:
    """Dev loss per epoch of each task run, one panel per task, and each run's speed-up over the task's
    description-initialised run (the first one given), as benchmarks/transfer.py measures it."""
    if not curves:
        return ("<p class='note'>No task runs were given: pass run directories of <code>softprompt transfer "
                "init</code> with the task's own runs to compare how they converge.</p>")
    tasks = list(dict.fromkeys(c.task for c in curves))
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    rows = []
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = [c for c in curves if c.task == task]
        baseline = next((c for c in runs if c.init == "description"), None)
        for c in runs:
            ax.plot([h["epoch"] for h in c.history], [h["dev_loss"] for h in c.history], marker="o", markersize=3,
                    label=c.init[:40])
            speed = "–" if baseline is None or c is baseline else speed_cell(
                convergence_speed_up(baseline.history, c.history))
            start, best = c.history[0]["dev_loss"], min(h["dev_loss"] for h in c.history)
            rows.append([c.label, task, c.init, fmt(start), f"{fmt(best)} (epoch {c.best_epoch})", speed,
                         ", ".join(f"{k} {percent(v)}" for k, v in c.metrics.items())])
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("epoch (0: before training)", fontsize=8)
        ax.set_ylabel("dev loss", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return ("<p class='note'>Speed-up: the epochs the task's description-initialised run needs to get 90% of the way "
            "from its start to its best dev loss, over the epochs this run needs to reach that loss (&gt;1 faster; "
            "&ldquo;starts there&rdquo;: before any step; &ldquo;never&rdquo;: not within its epochs).</p>"
            + image(fig, "training curves")
            + table(["run", "task", "starts from", "start dev loss", "best dev loss", "speed-up vs description",
                     "metrics (×100)"], rows))


def speed_cell(value: float) -> str:
    return "– (the baseline starts at its best)" if math.isnan(value) else shown_speed(value)


def moved_section(moved: Sequence[MovedPrompt]) -> str:
    if not moved:
        return ("<p class='note'>No moved prompts were given: pass files written by <code>softprompt transfer "
                "project</code> or <code>transfer bridge</code>.</p>")
    grids = []
    for m in moved:
        k = len(m.tokens[0])
        rows = [[i, *[f"{token_text(t)} ({s:.2f})" for t, s in zip(toks, scores, strict=True)]]
                for i, (toks, scores) in enumerate(zip(m.tokens, m.scores, strict=True))]
        caption = f"{m.label}: {m.task}, the {m.source} through the {m.how}, read in {m.model}"
        header = ["#", *[f"cosine {i + 1}" for i in range(k)]]
        grids.append(f"<div class='grid'>{table(header, rows, range(1, k + 1), caption)}</div>")
    return ("<p class='note'>Each row is one vector of the moved prompt; its nearest tokens in the target model's "
            "vocabulary by cosine, best first.</p>" f"<div class='grids'>{''.join(grids)}</div>")


def mixtures_section(mixtures: Sequence[tuple[str, list[Any], str]]) -> str:
    """``mixtures``: (title, readings, HTML fragment) per mixture run."""
    if not mixtures:
        return "<p class='note'>No mixture runs were given.</p>"
    plt = pyplot()
    parts = []
    for title, readings, fragment in mixtures:
        shown = readings[:20]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1))
        ax.barh(range(len(shown)), [r.weight for r in shown], color="C0")
        ax.set_yticks(range(len(shown)), [r.source[:60] for r in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mixture weight")
        ax.set_title(title, fontsize=9)
        parts.append(image(fig, f"mixture weights {title}") + fragment)
    return "".join(parts)


def render(analyses: Sequence[dict[str, Any]], mixtures: Sequence[tuple[str, list[Any], str]] = (),
           title: str = "softprompt report", curves: Sequence[TrainingCurve] = (),
           moved: Sequence[MovedPrompt] = ()) -> str:
    """The page. Every value taken from the analyses reaches it escaped (or drawn into an image); an analysis
    that does not have the shape ``softprompt analyze run`` writes is a SoftpromptError, not a crash."""
    try:
        body = {"runs": runs_section(analyses)}
        for key, (has, part, draw) in ANALYSIS_SECTIONS.items():
            body[key] = "".join(draw(a) if has(a) else missing(part) for a in analyses)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration) as err:
        raise SoftpromptError(f"an analysis.json does not have the fields this report reads ({type(err).__name__}: "
                              f"{str(err)[:80]}); rerun softprompt analyze run") from err
    body["curves"] = curves_section(curves)
    body["moved"] = moved_section(moved)
    body["mixtures"] = mixtures_section(mixtures)
    nav = "".join(f"<a href='#{key}'>{esc(name)}</a>" for key, name in SECTIONS.items())
    sections = "".join(f"<section id='{key}'><h2>{esc(name)}</h2>{body[key]}</section>"
                       for key, name in SECTIONS.items())
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style><script>{CHECK_IMAGES}</script></head>"
            f"<body><h1>{esc(title)}</h1><nav>{nav}</nav>{sections}</body></html>\n")


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def headless_command(browser: str, profile: str) -> list[str]:
    """Headless Chromium that stays off the network (the report needs none) and off any user profile. It keeps
    its sandbox, except as root, where Chromium refuses to start with one: there it renders our own escaped
    page, with no network, without it."""
    unsandboxed = ["--no-sandbox"] if os.geteuid() == 0 else []
    return [browser, "--headless", *unsandboxed, "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


def page_height(browser: str, page: Path, width: int, work: Path) -> int:
    """The rendered page's full height in pixels, as its own script measures it on load."""
    done = subprocess.run([*headless_command(browser, str(work / "profile")), f"--window-size={width},1000",
                           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-page-height="(\d+)"', done.stdout)
    if done.returncode != 0 or found is None:
        raise SoftpromptError(f"Chromium could not render {page}: {done.stderr.strip()[-300:]}")
    return int(found.group(1))


def screenshot(page: str | Path, png: str | Path, width: int = 1280, max_height: int = 30000) -> int:
    """Render an HTML report to a PNG of the whole page (up to ``max_height`` pixels) with headless Chromium
    (the Debian package ``chromium``); returns the height captured."""
    browser = find_chromium()
    if browser is None:
        raise SoftpromptError("a screenshot needs headless Chromium: apt-get install chromium")
    page = Path(page)
    height = 0

    def shoot(tmp: Path) -> None:
        nonlocal height
        with tempfile.TemporaryDirectory() as work:
            height = min(page_height(browser, page, width, Path(work)), max_height)
            shot = Path(work) / "page.png"  # Chromium picks the format from the file name
            done = subprocess.run([*headless_command(browser, str(Path(work) / "profile")), f"--screenshot={shot}",
                                   f"--window-size={width},{height}", "--virtual-time-budget=5000",
                                   page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
            if done.returncode != 0 or not shot.is_file():
                raise SoftpromptError(f"Chromium could not render {page}: {done.stderr.strip()[-300:]}")
            shutil.move(shot, tmp)

    atomic_write(png, shoot)
    return height
