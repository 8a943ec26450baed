"""Moving prefix prompts to and from PEFT prompt-tuning adapters.

A PEFT prompt-tuning adapter is a directory with ``adapter_config.json`` (peft_type PROMPT_TUNING) and
``adapter_model.safetensors`` holding ``prompt_embeddings`` (num_virtual_tokens × token_dim), prepended
to the input embeddings. Our prefix layout ``[P*N]{input}`` places its vectors the same way (before the
tokenizer's start tokens), so an exported prompt gives PEFT the same scores. PEFT itself is not needed
to export or import.

An export names a base model that loads as it is (the directory the model was loaded from: for a bundled
or GGUF model, its converted copy in the cache; with ``save_base``, a copy inside the adapter), and writes
``softprompt.json`` (the task's template, verbalizers or choice templates and target delimiter) and a
README whose snippet scores the task's choices exactly as softprompt does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write, write_json, write_text
from softprompt.models import LanguageModel
from softprompt.prompts.task import MARKER, TaskPrompt
from softprompt.tasks.task import Task

PEFT_TASK_TYPES = {"causal": "CAUSAL_LM", "masked": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}


def prefix_length(layout: str) -> int | None:
    """N if ``layout`` is exactly ``[P*N]{input}`` (the only layout PEFT prompt tuning can express)."""
    m = MARKER.match(layout)
    if m is None or layout[m.end() :] != "{input}":
        return None
    return int(m.group(1) or 1)


def export_peft(prompt: TaskPrompt, lm: LanguageModel, out: str | Path, task: Task | None = None,
                save_base: bool = False) -> Path:
    """Write ``prompt`` as a PEFT prompt-tuning adapter directory; returns it. ``task`` (the task the prompt
    was trained on) is recorded so that the adapter can be used without softprompt; ``save_base`` also saves
    the base model and tokenizer into the adapter (``OUT/base``) and names that copy as the base."""
    n = prefix_length(prompt.layout)
    if n is None or prompt.tuning != "soft":
        raise SoftpromptError(
            f"only soft prefix prompts (layout '[P*N]{{input}}') export to PEFT prompt tuning; this prompt is "
            f"{prompt.tuning} with layout {prompt.layout!r}"
        )
    if lm.kind == "seq2seq":
        # PEFT's encoder-decoder prompt tuning repeats the prompt for the decoder; ours sits in the encoder only.
        raise SoftpromptError("PEFT export is for causal and masked LMs; encoder-decoder prompts differ in layout")
    out = Path(out)
    base = str(out.resolve() / "base") if save_base else lm.model.name_or_path
    config: dict[str, Any] = {
        "peft_type": "PROMPT_TUNING",
        "task_type": PEFT_TASK_TYPES[lm.kind],
        "num_virtual_tokens": n,
        "token_dim": lm.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": lm.config.num_attention_heads,
        "num_layers": lm.num_layers,
        "base_model_name_or_path": base,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": base,
        "inference_mode": True,
        "auto_mapping": None,
        "modules_to_save": None,
        "revision": None,
    }
    embeddings = prompt.vectors().detach().float().cpu().contiguous()
    if save_base:
        lm.model.save_pretrained(out / "base")
        lm.tokenizer.save_pretrained(out / "base")
    atomic_write(out / "adapter_model.safetensors",
                 lambda tmp: save_file({"prompt_embeddings": embeddings}, str(tmp), metadata={"format": "pt"}))
    write_json(out / "adapter_config.json", config)
    write_json(out / "softprompt.json", {
        "model": lm.name, "base": base, "prompt_vectors": n,
        "task": None if task is None else {
            "name": task.name, "template": task.template, "target_delimiter": task.target_delimiter,
            "verbalizers": task.labels, "choices": task.choices, "columns": task.columns},
    })
    write_text(out / "README.md", USAGE.format(n=n, base=base))
    return out


# How to score a task's choices with the adapter alone, exactly as softprompt does (tested).
USAGE = """# A softprompt prompt as a PEFT prompt-tuning adapter

{n} virtual tokens for the base model `{base}`. `softprompt.json` holds the task's Jinja template, the
verbalizer of each label (or the choice templates), the delimiter between the input and an answer, and the
names the template gives the data file's columns.

```python
import json

import jinja2.sandbox
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

ADAPTER = "."  # this directory
model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER).eval()
meta = json.load(open(f"{{ADAPTER}}/softprompt.json"))
task = meta["task"]
tokenizer = AutoTokenizer.from_pretrained(json.load(open(f"{{ADAPTER}}/adapter_config.json"))["tokenizer_name_or_path"])
env = jinja2.sandbox.ImmutableSandboxedEnvironment()


def scores(row):
    \"\"\"The summed log-probability of each answer choice after the prompt and the rendered input.\"\"\"
    row = {{(task["columns"] or {{}}).get(k, k): v for k, v in row.items()}}  # the template's names for columns
    text = env.from_string(task["template"]).render(row)
    context = tokenizer(text)["input_ids"]
    answers = (list(task["verbalizers"].values()) if task["verbalizers"]
               else [env.from_string(c).render(row).strip() for c in task["choices"]])
    out = []
    for answer in answers:
        target = tokenizer(task["target_delimiter"] + answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context + target])).logits[0, {n}:]  # after the prompt
        logp = logits.log_softmax(-1)
        out.append(sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(target)))
    return out
```
"""


def import_peft(path: str | Path, lm: LanguageModel, task: str = "") -> TaskPrompt:
    """A PEFT prompt-tuning adapter directory as a soft prefix prompt for ``lm``."""
    path = Path(path)
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise SoftpromptError(f"{path}: not a PEFT adapter directory (needs adapter_config.json and "
                              "adapter_model.safetensors; .bin adapters are pickles and are refused)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise SoftpromptError(f"{config_file}:{err.lineno}: not valid JSON ({err.msg})") from err
    if config.get("peft_type") != "PROMPT_TUNING":
        raise SoftpromptError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only PROMPT_TUNING adapters "
                              "are soft prompts (prefix tuning and P-tuning adapters hold other parameters)")
    tensors = load_file(str(weights))
    if "prompt_embeddings" not in tensors:
        raise SoftpromptError(f"{weights}: no 'prompt_embeddings' tensor (found: {', '.join(tensors)})")
    embeddings = tensors["prompt_embeddings"]
    if embeddings.shape[1] != lm.hidden_size:
        raise SoftpromptError(f"{path}: prompt vectors have size {embeddings.shape[1]}, but model '{lm.name}' has "
                              f"hidden size {lm.hidden_size}; load the adapter's base model "
                              f"({config.get('base_model_name_or_path')})")
    n = embeddings.shape[0] // config.get("num_transformer_submodules", 1)
    prompt = TaskPrompt(lm, "prefix", n, init="vocab", task=task)
    prompt.init = "peft"
    with torch.no_grad():
        prompt.weight.copy_(embeddings[:n].to(prompt.weight))
    return prompt
