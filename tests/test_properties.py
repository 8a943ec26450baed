"""Property-based tests of every reader of user files: given arbitrary bytes, or arbitrary JSON and YAML
structures near the real formats, each either succeeds or raises a SoftpromptError whose message is one line.
Nothing else may escape (KeyError, TypeError, UnicodeDecodeError, RecursionError, ...): the CLI turns only
SoftpromptError into a one-line error, anything else is a traceback."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_family import first_format_header

from softprompt.errors import SoftpromptError
from softprompt.io import read_jsonl
from softprompt.probing import load_relation, read_facts, read_templates
from softprompt.probing.prompt_sets import read_template_list
from softprompt.prompts import (
    DeepPrompt,
    HardPrompt,
    MixturePrompt,
    SoftPrompt,
    TaskPrompt,
    load_prompt,
    read_prompt_file,
)
from softprompt.tasks.task import load_task, task_from_dict
from softprompt.templates import SLOT, Template, TemplateEncoder

# Small and quick: the whole file runs in seconds.
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
# Pieces that templates, JSONL rows and YAML are made of, so that random text often comes near valid input.
TEMPLATE_PIECES = ["[X]", "[Y]", "[", "]", "X", "Y", " ", "was born in", ".", "\n", "\t", "é", "\x00", "[X", "Y]"]
JINJA_PIECES = ["{{", "}}", "{%", "%}", "text", "label", "c", " ", "range(", ")", "10", "**", "*", "|", "list",
                "length", "+", "1", "'a'", "for x in", "endfor", "if", "endif", ".", "[0]", "\n", "-"]


def pieces(alphabet: list[str], max_size: int = 12) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), max_size=max_size).map("".join)


def succeeds_or_refuses(call: Callable[[], Any]) -> None:
    """Run ``call``: it may succeed, or raise a SoftpromptError with a one-line message; nothing else."""
    try:
        call()
    except SoftpromptError as err:
        message = str(err)
        assert message and message.splitlines() == [message], message


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the examples' files (hypothesis cannot use the function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("properties")


# --- templates -------------------------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(pieces(TEMPLATE_PIECES), st.text(), JSON, st.binary(max_size=20)))
def test_template_parser(text: Any) -> None:
    def parse() -> None:
        template = Template(text)
        assert "".join(template.pieces) == SLOT.sub("", template.text)
        Template(template.answer_last().text)

    succeeds_or_refuses(parse)


# --- LAMA-style files ------------------------------------------------------------------------------------

ROW_KEYS = ["sub", "obj", "sub_label", "obj_label", "template", "pattern", "relation"]
ROWS = st.dictionaries(st.sampled_from(ROW_KEYS) | st.text(max_size=4), JSON | pieces(TEMPLATE_PIECES), max_size=4)
LINES = st.one_of(
    ROWS.map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=20),
    st.sampled_from(['{"sub": "\\ud800", "obj": "a"}', "[" * 3000, "1" * 5000, "\ufeff{}", "{}\r"]),
)
FACTS = st.lists(st.fixed_dictionaries({"sub": st.text(min_size=1, max_size=10), "obj": st.text(min_size=1,
                                                                                                 max_size=10)}),
                 min_size=1, max_size=3).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())
JSONL = st.one_of(
    st.lists(LINES, max_size=5).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    FACTS,
    st.binary(max_size=200),
)


@SETTINGS
@given(JSONL, st.sampled_from(["rel.jsonl", "P19.jsonl.gz", "rel.txt", "bad.gz"]))
def test_jsonl_readers(scratch: Path, content: bytes, name: str) -> None:
    path = scratch / name
    path.write_bytes(gzip.compress(content) if name.endswith(".jsonl.gz") else content)
    for reader in (read_jsonl, read_facts, read_templates, read_template_list):
        succeeds_or_refuses(lambda reader=reader: reader(path))


@SETTINGS
@given(st.one_of(pieces(TEMPLATE_PIECES).map(str.encode), st.binary(max_size=60)), JSONL)
def test_relation_directory(scratch: Path, template: bytes, train: bytes) -> None:
    directory = scratch / "relation"
    directory.mkdir(exist_ok=True)
    (directory / "template.txt").write_bytes(template)
    (directory / "train.jsonl").write_bytes(train)
    (directory / "test.jsonl").write_text('{"sub": "France", "obj": "Paris"}\n')
    succeeds_or_refuses(lambda: load_relation(directory))
    succeeds_or_refuses(lambda: load_relation(directory / "test.jsonl", template.decode("utf-8", "replace")))


# --- tasks -----------------------------------------------------------------------------------------------

TASK = {"name": "capital", "description": "the capital", "data": {"train": "data.jsonl"},
        "template": "the capital of {{text}} is", "target": "{{label}}", "labels": {"a": "Paris", "b": "Berlin"}}
TASK_FIELDS = [*TASK, "choices", "format", "target_delimiter", "metrics"]
TASK_DOCS = st.one_of(
    # The real task with fields removed or replaced by any YAML value (or a Jinja-like text).
    st.fixed_dictionaries({}, optional={k: JSON | pieces(JINJA_PIECES) for k in TASK_FIELDS}).map(
        lambda changes: {**TASK, **changes}),
    st.dictionaries(st.sampled_from(TASK_FIELDS) | st.text(max_size=6), JSON, max_size=6),
    JSON,
)
YAML_TEXTS = st.one_of(
    TASK_DOCS.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
    pieces(["name: x\n", "labels: ", "{a: A, b: B}", "&a ", "*a", "[", "]", "{", "}", ": ", "\n", "  ", "- ",
            "2024-13-01", "!!int ", "!!binary ", "!!python/object ", "\x00", "\t", "'", '"', "é", "template: "], 20),
    st.text(max_size=60),
)


@SETTINGS
@given(st.one_of(YAML_TEXTS.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_task_files(scratch: Path, content: bytes) -> None:
    path = scratch / "task.yaml"
    path.write_bytes(content)
    succeeds_or_refuses(lambda: load_task(path))


@SETTINGS
@given(TASK_DOCS)
def test_task_definitions(doc: Any) -> None:
    succeeds_or_refuses(lambda: task_from_dict(doc, "task.yaml"))


TABLE_PIECES = ["text", "label", ",", ";", "\t", "|", "\n", "\r\n", '"', "a", "b", "France", "é", "\x00", " "]
LABELS = st.sampled_from(["a", "b", "0", "1", "a", "b", "0", "1", "-1", "²", "01", "--1", "9" * 20, 1, None])
DATA = st.one_of(
    pieces(TABLE_PIECES, 30).map(str.encode),
    # A header, then rows of fields (which may hold the wrong delimiter, quotes, or too few or many fields).
    st.tuples(st.sampled_from(["text,label", "text\tlabel", "text;label"]),
              st.lists(st.tuples(pieces(TABLE_PIECES, 4), st.sampled_from(",\t;"), LABELS), min_size=1, max_size=3)
              ).map(lambda t: (t[0] + "\n" + "".join(f"{x}{d}{y}\n" for x, d, y in t[1])).encode()),
    st.lists(st.fixed_dictionaries({"text": JSON | st.text(max_size=10), "label": LABELS}),
             min_size=1, max_size=3).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
    JSONL,
    st.binary(max_size=200),
)
TASKS = [
    task_from_dict(TASK, "capital.yaml"),
    task_from_dict({"name": "mc", "template": "{{text}}", "choices": ["{{text}} A", "{{label}} B"],
                    "target": "{{label}}"}, "mc.yaml"),
]


@SETTINGS
@given(DATA, st.sampled_from(["d.jsonl", "d.tsv", "d.csv"]), st.sampled_from(TASKS),
       st.one_of(st.none(), pieces(JINJA_PIECES)))
def test_task_data(scratch: Path, content: bytes, name: str, task: Any, template: str | None) -> None:
    path = scratch / name
    path.write_bytes(content)

    def load() -> None:
        doc = {"name": task.name, "template": template or task.template, "target": task.target,
               **({"labels": task.labels} if task.labels else {"choices": task.choices})}
        chosen = task_from_dict(doc, "task.yaml")
        chosen.load("train", path=path)
        if chosen.labels:
            chosen.content_free()

    succeeds_or_refuses(load)


# --- prompt files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_prompts(causal_lm: Any, scratch: Path) -> dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """The metadata and tensors of one prompt file of every kind (and of the first format)."""
    encoder = TemplateEncoder("[X] was born in [Y] .", causal_lm)
    encoders = [encoder, TemplateEncoder("[X] is in [Y] .", causal_lm)]
    prompts = {
        "hard": HardPrompt(encoder),
        "soft": SoftPrompt(encoder),
        "deep": DeepPrompt(encoder),
        "mixture": MixturePrompt(encoders, "soft", "template", 1),
        "mixture-deep": MixturePrompt(encoders, "deep", "random", 2, data_dependent=True),
        "task": TaskPrompt(causal_lm, "prefix", 2, init="random"),
        "task-deep": TaskPrompt(causal_lm, "[P]{input}[P*2]", 0, tuning="deep", init="random"),
        "task-hard": TaskPrompt(causal_lm, "hybrid-hard", 0, tuning="hard"),
    }
    saved = {}
    for name, prompt in prompts.items():
        path = scratch / f"{name}.safetensors"
        prompt.save(path)
        meta, tensors = saved[name] = read_prompt_file(path)
        # The first format: the kind under "mode", a mixture's under "component_mode", a task's tuning "kind".
        saved[f"{name}-v1"] = (first_format_header(meta), tensors)
    return saved


TENSORS = st.dictionaries(
    st.sampled_from(["weight", "delta", "base", "components.0.weight", "weight_logits"]) | st.text(min_size=1,
                                                                                                   max_size=6),
    st.lists(st.integers(0, 4), max_size=3).map(lambda shape: torch.randn(shape)),
    max_size=3,
)
# Values for metadata fields: any JSON, and values near the real ones.
VALUES = st.one_of(
    JSON,
    st.integers(-(2**70), 2**70),
    st.sampled_from(["deep", "soft", "hard", "mixture", "task", "[P*999999999]{input}", "[P*3]{input}", "{input}",
                     "random", "vocab", "template", "tiny-llama-32", "a\nb", 32, 64, 2, 0, True, [1, 2], [[1, 2]]]),
    pieces(TEMPLATE_PIECES),
    st.lists(st.integers(-1, 2**40), max_size=8),
)
FIELDS = ["format", "kind", "mode", "model", "hidden_size", "num_layers", "template", "init", "prompt_token_ids",
          "component_kind", "component_mode", "templates", "sources", "inits", "seeds", "answer_space",
          "data_dependent", "layout", "template_markers", "tuning", "seed", "init_text", "task"]


@settings(SETTINGS, max_examples=400)
@given(st.data())
def test_prompt_files_with_any_metadata(saved_prompts: dict, causal_lm: Any, scratch: Path, data: Any) -> None:
    meta, tensors = saved_prompts[data.draw(st.sampled_from(sorted(saved_prompts)))]
    meta = dict(meta)
    for field in data.draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if data.draw(st.booleans()):
            meta.pop(field, None)
        else:
            meta[field] = data.draw(VALUES)
    if data.draw(st.booleans()):
        tensors = {**tensors, **data.draw(TENSORS)}
    # Mostly the edited metadata; sometimes any JSON or text instead.
    header = {"json": lambda: data.draw(JSON.map(json.dumps)), "text": lambda: data.draw(st.text(max_size=30)),
              "meta": lambda: json.dumps(meta)}[data.draw(st.sampled_from(["meta"] * 6 + ["json", "text"]))]()
    path = scratch / "prompt.safetensors"
    save_file(tensors or {"empty": torch.zeros(0)}, str(path), metadata={"softprompt": header})
    succeeds_or_refuses(lambda: read_prompt_file(path))
    succeeds_or_refuses(lambda: load_prompt(path, causal_lm))


# safetensors framing (header length, JSON header, data) around any header and data.
FRAMED = st.tuples(
    st.one_of(JSON, st.dictionaries(st.sampled_from(["__metadata__", "weight"]), st.fixed_dictionaries(
        {"dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "X"]) | JSON, "shape": JSON,
         "data_offsets": st.lists(st.integers(-1, 40), max_size=3)}) | JSON)).map(lambda h: json.dumps(h).encode()),
    st.binary(max_size=40),
).map(lambda t: struct.pack("<Q", len(t[0])) + t[0] + t[1])


@SETTINGS
@given(st.one_of(st.binary(max_size=300), FRAMED))
def test_prompt_files_of_any_bytes(scratch: Path, content: bytes) -> None:
    path = scratch / "bytes.safetensors"
    path.write_bytes(content)
    succeeds_or_refuses(lambda: read_prompt_file(path))
