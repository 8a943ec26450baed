"""The genetic functions g_GPS of Genetic Prompt Search (Xu et al. 2022, §3.3): each rewrites a piece of prompt
text with a language model.

- ``Paraphrase`` (their "PTMs", after DINO, Schick & Schütze 2021): the LM continues a few-shot "write two
  instructions that mean the same thing" prompt, with top-p sampling; a causal LM by default (the model
  itself), or an encoder-decoder given "Paraphrase: <text>".
- ``SpanInfill`` (their "LM-BFF", Gao et al. 2021, who fill spans with T5): a span of words is masked and the
  LM fills it: an encoder-decoder through its sentinel token (T5's <extra_id_0>), a masked LM one token per
  masked token, a causal LM left to right from the words before the span (it cannot see those after).
- ``BackTranslation`` (their "BT"): sampled translations by one encoder-decoder, translated back greedily by
  another (e.g. Helsinki-NLP/opus-mt-en-de and opus-mt-de-en). No translation model is bundled: name them.

Sampling is seeded by the caller's seed inside a forked random state, so a mutator is deterministic and
leaves the global random state alone.
"""

from __future__ import annotations

import random

import torch

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel

# Generic demonstrations, so that the few-shot prompt steers towards rewording without hinting at a task.
DEMONSTRATIONS = (
    ("Translate the sentence into French.", "Give the French translation of this sentence."),
    ("Answer the question about the passage.", "Read the passage and respond to the question."),
)
DINO_TASK = "Task: Write two instructions that mean the same thing."
SENTINELS = ("<extra_id_0>", "<extra_id_1>")


def dino_prompt(text: str) -> str:
    shots = "".join(f'{DINO_TASK}\nInstruction 1: "{a}"\nInstruction 2: "{b}"\n\n' for a, b in DEMONSTRATIONS)
    return f'{shots}{DINO_TASK}\nInstruction 1: "{text}"\nInstruction 2: "'


@torch.inference_mode()
def sample(lm: LanguageModel, text: str, count: int, seed: int, top_p: float, temperature: float,
           max_new_tokens: int, greedy: bool = False) -> list[str]:
    """``count`` continuations of ``text`` (causal) or outputs for it (encoder-decoder), top-p sampled."""
    inputs = lm.tokenizer(text, return_tensors="pt").to(lm.device)
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        options = {"do_sample": False, "num_beams": 1} if greedy else {
            "do_sample": True, "top_p": top_p, "top_k": 0, "temperature": temperature}
        out = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=1 if greedy else count,
                                pad_token_id=lm.tokenizer.pad_token_id, **options)
    if lm.kind == "causal":
        out = out[:, inputs["input_ids"].shape[1]:]
    # T5's sentinels are special tokens: keep them where the caller reads the span between them.
    sentinels = lm.kind == "seq2seq" and SENTINELS[0] in lm.tokenizer.get_vocab()
    return lm.tokenizer.batch_decode(out, skip_special_tokens=not sentinels)


def check_generator(lm: LanguageModel, what: str, kinds: tuple[str, ...]) -> None:
    if lm.kind not in kinds:
        raise SoftpromptError(f"{what} needs a {' or '.join(kinds)} LM; {lm.name!r} is {lm.kind}")


class Paraphrase:
    name = "paraphrase"

    def __init__(self, lm: LanguageModel, top_p: float = 0.9, temperature: float = 1.0, max_new_tokens: int = 48
                 ) -> None:
        check_generator(lm, "paraphrasing a prompt", ("causal", "seq2seq"))
        self.lm, self.top_p, self.temperature, self.max_new_tokens = lm, top_p, temperature, max_new_tokens

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        if self.lm.kind == "causal":
            outputs = sample(self.lm, dino_prompt(text), count, seed, self.top_p, self.temperature,
                             self.max_new_tokens)
            return [o.split('"')[0].split("\n")[0] for o in outputs]  # up to DINO's closing quote
        outputs = sample(self.lm, f"Paraphrase: {text}", count, seed, self.top_p, self.temperature,
                         self.max_new_tokens)
        return [strip_sentinels(o) for o in outputs]


class SpanInfill:
    name = "infill"

    def __init__(self, lm: LanguageModel, span: float = 0.3, top_p: float = 0.9, temperature: float = 1.0) -> None:
        if lm.kind == "seq2seq" and SENTINELS[0] not in lm.tokenizer.get_vocab():
            raise SoftpromptError(f"span infilling with encoder-decoder {lm.name!r} needs T5's sentinel token "
                                  f"{SENTINELS[0]}; use a T5 model, or a masked or causal LM")
        if lm.kind == "masked" and lm.tokenizer.mask_token_id is None:
            raise SoftpromptError(f"span infilling with {lm.name!r} needs a mask token")
        if not 0 < span <= 1:
            raise SoftpromptError(f"the infilled span must be a fraction of the words in (0, 1], got {span}")
        self.lm, self.span, self.top_p, self.temperature = lm, span, top_p, temperature

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        words = text.split()
        rng = random.Random(seed)
        out = []
        for c in range(count):
            n = rng.randint(1, max(1, round(len(words) * self.span)))
            start = rng.randint(0, len(words) - n)
            before, after = words[:start], words[start + n:]
            fill = self.fill(" ".join(before), " ".join(words[start : start + n]), " ".join(after), n, seed + c)
            out.append(" ".join([*before, *fill.split(), *after]))
        return out

    def fill(self, before: str, span: str, after: str, words: int, seed: int) -> str:
        """New words for ``span`` between ``before`` and ``after``."""
        lm = self.lm
        if lm.kind == "seq2seq":
            masked = " ".join(p for p in (before, SENTINELS[0], after) if p)
            return strip_sentinels(sample(lm, masked, 1, seed, self.top_p, self.temperature, 3 * words + 4)[0])
        if lm.kind == "masked":
            return self.fill_masks(before, span, after, seed)
        # Left to right: the first `words` words the LM writes after the span's left context.
        context = f"Instruction: {before}".rstrip()
        text = sample(lm, context, 1, seed, self.top_p, self.temperature, 3 * words + 4)[0]
        return " ".join(text.split()[:words])

    @torch.inference_mode()
    def fill_masks(self, before: str, span: str, after: str, seed: int) -> str:
        """A masked LM's fill: as many masks as the span had tokens, each sampled (top-p) from its own output."""
        tok = self.lm.tokenizer
        n = len(tok(" " + span, add_special_tokens=False)["input_ids"])
        text = " ".join(p for p in (before, " ".join([tok.mask_token] * n), after) if p)
        inputs = tok(text, return_tensors="pt").to(self.lm.device)
        logits = self.lm.model(**inputs).logits[0]
        where = (inputs["input_ids"][0] == tok.mask_token_id).nonzero()[:, 0]
        probs = (logits[where].float() / self.temperature).softmax(-1)
        ids = [nucleus(p, self.top_p, torch.Generator().manual_seed(seed + i)) for i, p in enumerate(probs)]
        return tok.decode(ids, skip_special_tokens=True)


def nucleus(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """One token id drawn from the smallest set of most probable tokens whose mass reaches ``top_p``."""
    values, order = probs.sort(descending=True)
    keep = (values.cumsum(0) - values) < top_p  # a token stays if the mass before it is short of top_p
    values = torch.where(keep, values, 0.0).cpu()
    return int(order[torch.multinomial(values / values.sum(), 1, generator=generator)])


def strip_sentinels(text: str) -> str:
    """An encoder-decoder's output without its sentinels: the text of the first span (T5 infills)."""
    if SENTINELS[0] in text:
        text = text.split(SENTINELS[0], 1)[1]
    text = text.split(SENTINELS[1], 1)[0]
    return " ".join(w for w in text.split() if not (w.startswith("<") and w.endswith(">")))


class BackTranslation:
    name = "backtranslate"

    def __init__(self, forward: LanguageModel, backward: LanguageModel, top_p: float = 0.9,
                 temperature: float = 1.0, max_new_tokens: int = 64) -> None:
        for lm in (forward, backward):
            check_generator(lm, "back-translation (e.g. Helsinki-NLP/opus-mt-en-de, then opus-mt-de-en)",
                            ("seq2seq",))
        self.forward, self.backward = forward, backward
        self.top_p, self.temperature, self.max_new_tokens = top_p, temperature, max_new_tokens

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        pivots = sample(self.forward, text, count, seed, self.top_p, self.temperature, self.max_new_tokens)
        return [sample(self.backward, p, 1, seed, self.top_p, self.temperature, self.max_new_tokens, greedy=True)[0]
                for p in pivots]
