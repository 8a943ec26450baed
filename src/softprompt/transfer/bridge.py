"""The vocabulary bridge: a non-parametric way to move a prompt between models with different vocabularies.

Each source vector is read as its nearest source token by cosine (f_U; cosine rather than the analysis's Euclidean
distance because models scale their input embeddings differently: Gemma multiplies them by √d, so the vectors it
trains live at another scale than its embedding matrix), the tokens are decoded to text, the text is tokenised by
the target tokenizer and embedded by the target model. Special tokens are never read (they have no text to carry
across). Nothing is fitted, so it needs no data: a baseline for the projector.

The text rarely tokenises to as many target tokens as the source had vectors. ``bridge_vectors`` keeps the text's
own length; ``bridge_prompt`` gives the new prompt the source prompt's length by default, cycling the tokens or
cutting them as text initialisation does (PEFT's rule), so the layout stays as it was; another ``length`` resizes
a layout with one [P*N] run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts import TaskPrompt
from softprompt.transfer.source import SourcePrompt, target_prompt


@dataclass
class Bridged:
    """A prompt read in the source vocabulary and written in the target's."""

    source_ids: list[int]  # each source vector's nearest source token
    text: str  # those tokens decoded
    target_ids: list[int]  # the text tokenised for the target model
    vectors: torch.Tensor  # their target embeddings, (len(target_ids), target hidden size)


def nearest_tokens(vectors: torch.Tensor, lm: LanguageModel) -> list[int]:
    """Each vector's nearest token of ``lm`` by cosine, among the tokens its tokenizer can decode, specials left out.
    The embedding matrix is used as it is (no normalised copy: Gemma's has 262k rows)."""
    embeddings = lm.embedding_matrix.detach()[: len(lm.tokenizer)]
    queries = vectors.detach().to(embeddings)
    queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        cosine = (embeddings @ queries.T) / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    special = [i for i in lm.tokenizer.all_special_ids if i < len(cosine)]
    cosine[special] = -torch.inf
    return cosine.argmax(0).tolist()


def bridge_vectors(vectors: torch.Tensor, source: LanguageModel, target: LanguageModel) -> Bridged:
    """``vectors`` of ``source`` as the target embeddings of the text they read as."""
    source_ids = nearest_tokens(vectors, source)
    text = source.tokenizer.decode(source_ids, clean_up_tokenization_spaces=False)
    target_ids = target.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise SoftpromptError(f"the prompt reads as {text!r} in model '{source.name}', which model '{target.name}' "
                              "tokenises to nothing; there is nothing to bridge")
    with torch.no_grad():
        embedded = target.embed(torch.tensor(target_ids, device=target.device)).float()
    return Bridged(source_ids, text, target_ids, embedded)


def bridge_prompt(source: SourcePrompt, source_lm: LanguageModel, target: LanguageModel, length: int | None = None
                  ) -> tuple[TaskPrompt, Bridged]:
    """The source prompt as a soft task prompt for ``target`` of ``length`` vectors (default: the source's), its
    bridged tokens cycled or cut to that length; and the bridge's reading (its text is the prompt's init_text)."""
    if source.model != source_lm.name or source.hidden_size != source_lm.hidden_size:
        raise SoftpromptError(f"{source.path} was trained for model '{source.model}', not '{source_lm.name}'; its "
                              f"vectors are read with that model's vocabulary: --source-model {source.model}")
    n = source.length if length is None else length
    if n < 1:
        raise SoftpromptError(f"a bridged prompt needs at least one vector, got length {n}")
    bridged = bridge_vectors(source.vectors, source_lm, target)
    ids = (bridged.target_ids * (n // len(bridged.target_ids) + 1))[:n]
    with torch.no_grad():
        vectors = target.embed(torch.tensor(ids, device=target.device)).float()
    return target_prompt(source, target, vectors, init="bridge", init_text=bridged.text), bridged
