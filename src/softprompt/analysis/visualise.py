"""Reading a trained mixture (Qin & Eisner Appendix C, Figure 1).

For every prompt: its mixture weight, its original words, and for each tuned vector v the vocabulary
word nearest to it by cosine and by p(w | v) ∝ exp(e_w · v) over the input embeddings e_w, with the
ratio ‖v‖ / ‖v0‖ to its initial vector v0 and how far it moved, ‖v − v0‖ / ‖v0‖. Rendered as an HTML
fragment and as a PNG.

Cosine leads: p(w | v) favours tokens whose embeddings have a large norm (on SmolLM2 " strugg", norm 7.5
against a mean of 3.2, is the p(w | v) reading of many word embeddings that training never moved), so a
p(w | v) reading that differs from the word while the vector barely moved is marked as such, not as drift.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write, write_text
from softprompt.prompts import MixturePrompt
from softprompt.prompts.soft import initial_vectors

# Below this relative change, a vector still reads as its initial word by cosine: a different p(w | v)
# reading then says more about embedding norms than about training.
BARELY_MOVED = 0.05


@dataclass
class TokenReading:
    original: str  # the template's token at this position ("" for a random init)
    nearest_dot: str  # argmax_w p(w | v)
    probability: float  # p(nearest_dot | v)
    nearest_cosine: str
    cosine: float
    norm_ratio: float  # ‖v‖ / ‖v0‖
    moved: float  # ‖v − v0‖ / ‖v0‖

    @property
    def misleading_dot(self) -> bool:
        """The p(w | v) reading names another word although the vector is (almost) its initial one."""
        return bool(self.original) and self.moved < BARELY_MOVED and self.nearest_dot != self.original


@dataclass
class PromptReading:
    index: int
    weight: float
    source: str  # the template as written in the prompt set
    template: str  # as used (reordered for causal LMs if it was answer-first)
    init: str
    tokens: list[TokenReading]
    order: list[str | int]  # token indices, with "X" and "Y" for the blanks, as the model reads them


def read_mixture(mixture: MixturePrompt) -> list[PromptReading]:
    """Readings of every prompt of ``mixture``, heaviest first."""
    lm = mixture.lm
    tok = lm.tokenizer
    embeddings = lm.embedding_matrix.detach().float()
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    weights = mixture.weights()
    with torch.no_grad():
        layer0 = mixture.vectors()
        if mixture.deltas() is not None:
            layer0 = layer0 + mixture.deltas()[0]  # a deep prompt's layer-0 vectors include their perturbation
    readings = []
    for k, component in enumerate(mixture.components):
        encoder = component.encoder
        start = mixture.offsets[k]
        vectors = layer0[start : start + component.length]
        initial = initial_vectors(encoder, component.init, mixture.seeds[k])
        probs = (vectors @ embeddings.T).softmax(-1)
        best_p, best_dot = probs.max(-1)
        cos, best_cos = (torch.nn.functional.normalize(vectors, dim=-1) @ unit.T).max(-1)
        ratios = vectors.norm(dim=-1) / initial.norm(dim=-1)
        moved = (vectors - initial).norm(dim=-1) / initial.norm(dim=-1)
        tokens = [
            TokenReading(
                original=tok.decode([token_id]).strip() if component.init == "template" else "",
                nearest_dot=tok.decode([int(best_dot[i])]).strip(),
                probability=float(best_p[i]),
                nearest_cosine=tok.decode([int(best_cos[i])]).strip(),
                cosine=float(cos[i]),
                norm_ratio=float(ratios[i]),
                moved=float(moved[i]),
            )
            for i, token_id in enumerate(encoder.prompt_ids)
        ]
        readings.append(PromptReading(k, weights[k], mixture.sources[k], encoder.template.text, component.init,
                                      tokens, encoder.reading_order))
    return sorted(readings, key=lambda r: -r.weight)


def html_fragment(readings: list[PromptReading], title: str = "") -> str:
    """One table per prompt: original word, nearest word by cosine and by p(w | v) (marked * where it only
    reflects embedding norms), ‖v‖/‖v0‖ and how far each vector moved."""
    e = html.escape
    parts = [f"<section class='softprompt-mixture'>{f'<h3>{e(title)}</h3>' if title else ''}"]
    for r in readings:
        parts.append(f"<table><caption>[{r.weight:.3f}] {e(r.source)}"
                     + (f" <small>(used as {e(r.template)})</small>" if r.template != r.source else "")
                     + "</caption>")
        def cells(show: Callable[[TokenReading], str], r: PromptReading = r) -> list[str]:
            return [f"[{item}]" if isinstance(item, str) else show(r.tokens[item]) for item in r.order]

        rows = [("word", cells(lambda t: t.original or "·")),
                ("cosine", cells(lambda t: f"{t.nearest_cosine} ({t.cosine:.2f})")),
                ("p(w|v)", cells(lambda t: f"{t.nearest_dot}{'*' if t.misleading_dot else ''} ({t.probability:.2f})")),
                ("‖v‖/‖v0‖", cells(lambda t: f"{t.norm_ratio:.2f}")),
                ("‖v−v0‖/‖v0‖", cells(lambda t: f"{t.moved:.2f}"))]
        for name, row in rows:
            parts.append(f"<tr><th>{e(name)}</th>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if any(t.misleading_dot for r in readings for t in r.tokens):
        parts.append(f"<p class='note'>* p(w|v) names another word although the vector moved less than "
                     f"{BARELY_MOVED:.0%} from it: p(w|v) favours tokens with large embeddings.</p>")
    parts.append("</section>")
    return "\n".join(parts) + "\n"


def save_png(readings: list[PromptReading], path: str | Path, title: str = "", top: int = 12) -> None:
    """Figure 1 style: the ``top`` heaviest prompts, each a row of cells (original word over the nearest word
    by cosine), shaded by how far the vector's norm moved from its initial one."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SoftpromptError("drawing a PNG needs matplotlib: pip install 'softprompt[plot]'") from err
    shown = readings[:top]
    if not shown:
        raise SoftpromptError("no prompts to draw")
    width = max(len(r.order) for r in shown)
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * width, 0.9 + 0.75 * len(shown)))
    ax.set_xlim(-2.2, width)
    ax.set_ylim(len(shown), -0.6 if title else 0)
    ax.axis("off")
    cmap = plt.get_cmap("coolwarm")
    for row, r in enumerate(shown):
        ax.text(-2.1, row + 0.5, f"[{r.weight:.3f}]", va="center", family="monospace", fontsize=9)
        ax.barh(row + 0.5, 0.9 * r.weight, left=-1.1, height=0.3, color="tab:blue")
        for col, item in enumerate(r.order):
            if isinstance(item, str):  # a blank: the subject or the answer
                ax.text(col + 0.5, row + 0.5, f"[{item}]", ha="center", va="center", fontsize=9, weight="bold")
                continue
            t = r.tokens[item]
            shade = cmap(min(max((t.norm_ratio - 0.5) / 1.5, 0.0), 1.0))
            ax.add_patch(plt.Rectangle((col + 0.03, row + 0.08), 0.94, 0.84, color=shade, alpha=0.35))
            ax.text(col + 0.5, row + 0.32, t.original or "·", ha="center", va="center", fontsize=8, color="0.35")
            ax.text(col + 0.5, row + 0.68, t.nearest_cosine, ha="center", va="center", fontsize=9)
    if title:
        ax.text(-2.1, -0.3, title, fontsize=10, weight="bold")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def save_html(readings: list[PromptReading], path: str | Path, title: str = "") -> None:
    write_text(path, html_fragment(readings, title))
