"""Readers of user files refuse what they cannot read with one line that names the file (and line or field)
and says what to do: text that is not UTF-8, YAML alias bombs, templates that compute too much, tables with
another delimiter, prompt files with missing or mistyped metadata or tensors of the wrong shape. Messages
quote input only as a short escaped excerpt."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, read_jsonl
from softprompt.probing import load_relation, read_facts, read_templates
from softprompt.probing.prompt_sets import read_template_list
from softprompt.prompts import PROMPT_KINDS, MixturePrompt, SoftPrompt, TaskPrompt, load_prompt, read_prompt_file
from softprompt.tasks.files import MAX_TASK_BYTES
from softprompt.tasks.task import load_task, task_from_dict
from softprompt.templates import Template, TemplateEncoder

TEMPLATE = "the capital of [X] is [Y] ."
TASK = ("name: capital\ndescription: the capital\ndata: {train: DATA}\n"
        'template: "the capital of {{text}} is"\ntarget: "{{label}}"\nlabels: {a: Paris, b: Berlin}\n')


def refusal(call: Any, *args: Any) -> str:
    """The one-line message of the SoftpromptError that ``call(*args)`` raises."""
    with pytest.raises(SoftpromptError) as err:
        call(*args)
    message = str(err.value)
    assert message.splitlines() == [message], message
    return message


def split_dir(root: Path, template: bytes) -> Path:
    directory = root / "capital"
    directory.mkdir()
    (directory / "train.jsonl").write_text('{"sub": "France", "obj": "Paris"}\n')
    (directory / "template.txt").write_bytes(template)
    return directory


def task_file(root: Path, text: str | bytes, data: str | bytes | None = None, suffix: str = "jsonl") -> Path:
    """A task YAML file (``DATA`` in its text is the path of its data file) and its data file."""
    rows = data if data is not None else '{"text": "France", "label": "a"}\n{"text": "Japan", "label": "b"}\n'
    data_path = root / f"data.{suffix}"
    data_path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    path = root / "task.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.replace("DATA", str(data_path)).encode())
    return path


def load_examples(path: Path) -> list:
    return load_task(path).load("train")


# --- text that is not UTF-8 -------------------------------------------------------------------------------


def test_template_txt_not_utf8(tmp_path: Path) -> None:
    directory = split_dir(tmp_path, "\n[X] est la capitale de [Y] \xe9\n".encode("latin-1"))
    assert refusal(load_relation, directory) == (
        f"{directory / 'template.txt'}, line 2: not UTF-8 text; save the file as UTF-8")


def test_template_list_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "set.txt"
    path.write_bytes(f"{TEMPLATE}\n[X] \xe9 [Y]\n".encode("latin-1"))
    assert refusal(read_template_list, path) == f"{path}, line 2: not UTF-8 text; save the file as UTF-8"


def test_template_list_counts_lines_as_editors_do(tmp_path: Path) -> None:
    # A form feed inside a line is no line break: str.splitlines() would count one more line.
    path = tmp_path / "set.txt"
    path.write_text(f"{TEMPLATE}\x0c\n[X] is\n", encoding="utf-8")
    assert refusal(read_template_list, path).startswith(f"{path}, line 2: the template '[X] is' lacks [Y]")


def test_task_yaml_not_utf8(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("the capital\n", "la capitale \xe9\n").encode("latin-1"))
    assert refusal(load_task, path) == f"{path}:2: not UTF-8 text; save the file as UTF-8"


@pytest.mark.parametrize(("suffix", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_task_table_not_utf8(tmp_path: Path, suffix: str, delimiter: str) -> None:
    rows = f"text{delimiter}label\nFrance{delimiter}a\ncaf\xe9{delimiter}b\n".encode("latin-1")
    path = task_file(tmp_path, TASK, rows, suffix)
    assert refusal(load_examples, path) == f"{tmp_path / f'data.{suffix}'}:3: not UTF-8 text; save the file as UTF-8"


# --- task files: YAML -------------------------------------------------------------------------------------

BOMB = ("x: &a [1,1,1,1,1,1,1,1,1]\ny: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nz: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "w: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\nlabels: {a: [*d,*d,*d,*d,*d,*d,*d,*d,*d], b: Berlin}")


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("labels: {a: Paris, b: Berlin}", BOMB))
    start = time.perf_counter()
    assert refusal(load_task, path) == (f"{path}:7: not valid YAML (found the alias *a: aliases are not allowed in a "
                                        "task file; write the value out)")
    assert time.perf_counter() - start < 0.5


def test_task_file_over_the_size_limit(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK + "# " + "x" * MAX_TASK_BYTES + "\n")
    assert refusal(load_task, path) == (
        f"{path}: a task file of over 1000 kB; a task file only says where the data is and how to render it, so put "
        "the examples in a data file")


def test_yaml_nested_too_deep(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert refusal(load_task, path) == f"{path}:7: not valid YAML (nested more than 64 levels deep)"


@pytest.mark.parametrize(("extra", "problem"), [
    ("x: \x00\n", ":7: not valid YAML (character #x0000 is not allowed: special characters are not allowed)"),
    ("x: !!int\n", ": not valid YAML (string index out of range)"),
    ("x: 2024-13-01\n", ": not valid YAML (month must be in 1..12)"),
    ("x: !!python/object:os.system echo\n",
     ":7: not valid YAML (could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system')"),
])
def test_yaml_errors_are_one_line(tmp_path: Path, extra: str, problem: str) -> None:
    path = task_file(tmp_path, TASK + extra)
    assert refusal(load_task, path) == f"{path}{problem}"


def test_unknown_fields_are_shown_on_one_line(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK + '"a\\nb": 1\n2: x\n')
    assert refusal(load_task, path).startswith(f"{path}: unknown field(s) 'a\\nb', 2; known: choices,")


@pytest.mark.parametrize(("labels", "problem"), [
    ("{a: [1, 2], b: Berlin}", "the verbalizer of label a must be a string, got list [1, 2]"),
    ("{a: 1, b: Berlin}", "the verbalizer of label a must be a string, got int 1"),
    ("{a: , b: Berlin}", "the verbalizer of label a must be a string, got NoneType None"),
])
def test_labels_need_string_verbalizers(tmp_path: Path, labels: str, problem: str) -> None:
    path = task_file(tmp_path, TASK.replace("{a: Paris, b: Berlin}", labels))
    assert refusal(load_task, path) == (
        f"{path}: field 'labels': {problem}; write the answer words, e.g. {{yes: \"Yes\"}}")


def test_labels_that_read_the_same_as_text(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("{a: Paris, b: Berlin}", "{1: Paris, '1': Berlin, 2: Rome}"))
    assert refusal(load_task, path) == f"{path}: field 'labels' has two labels that read the same as text"


def test_integer_labels_still_match_their_text(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("{a: Paris, b: Berlin}", "{0: Paris, 1: Berlin}"),
                     '{"text": "France", "label": 0}\n{"text": "Japan", "label": 1}\n')
    assert [e.label for e in load_examples(path)] == [0, 1]


def test_data_splits_must_name_files(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("{train: DATA}", "{train: [1]}"))
    assert refusal(load_task, path) == f"{path}: field 'data' must map splits (train, validation, test) to files"


# --- task files: templates --------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "problem"), [
    ("{{ range(10**8) | list | length }}",
     "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000)."),
    ("{{ 10**(10**10) }}", "a power of more than 4096 bits"),
    ("{{ 'a' * 10**10 }}", "a repetition of more than 100000 items"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "maximum recursion depth exceeded"),
])
def test_templates_that_compute_too_much(tmp_path: Path, template: str, problem: str) -> None:
    path = task_file(tmp_path, TASK.replace("the capital of {{text}} is", template))
    start = time.perf_counter()
    message = refusal(load_examples, path)
    assert time.perf_counter() - start < 2
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:1: field 'template' of task 'capital' computes too much "
                              f"({problem}") and message.endswith(f"); simplify it in {path}")


def test_small_powers_and_repetitions_still_work() -> None:
    task = task_from_dict({"name": "c", "template": "{{ 2**10 }} {{ '-' * 3 }} {{ [0] * 2 }} {{ 3 * 'x' }}",
                           "labels": {"a": "A", "b": "B"}}, "c.yaml")
    assert task.render({"label": "a"}).text == "1024 --- [0, 0] xxx"


def test_template_errors_over_row_values(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("the capital of {{text}} is", "{{ text + 1 }}"))
    assert refusal(load_examples, path) == (
        f"{tmp_path / 'data.jsonl'}:1: template error for task 'capital', field 'template' in {path}: TypeError: can "
        "only concatenate str (not \"int\") to str")


def test_template_syntax_errors_are_one_line(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK.replace("the capital of {{text}} is", "{{ text + }}"))
    assert refusal(load_task, path) == (
        f"{path}: field 'template' is not a valid template (its line 1: unexpected 'end of print statement')")


def test_content_free_input_of_a_template_that_fails() -> None:
    task = task_from_dict({"name": "c", "template": "{{ x + 1 }}", "labels": {"a": "A", "b": "B"}}, "c.yaml")
    assert refusal(task.content_free) == (
        "the content-free input of task 'c': 'x' is undefined (task 'c', field 'template' in c.yaml)")


@pytest.mark.parametrize("target", ["²", "--1", "9" * 5000, "1_0"])
def test_multiple_choice_targets_that_are_no_index(target: str) -> None:
    task = task_from_dict({"name": "mc", "template": "{{p}}", "choices": ["{{x}}", "{{y}}"], "target": "{{l}}"},
                          "mc.yaml")
    assert refusal(task.render, {"p": "P", "x": "X", "y": "Y", "l": target}, "d.jsonl:1").startswith(
        f"d.jsonl:1: target {excerpt(target)} is not one of [0, 1]")


# --- task files: tables -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "header", "problem"), [
    ("csv", "text;label", "separated by ';', not ','; save it with commas between the fields"),
    ("csv", "text\tlabel", "separated by '\\t', not ','; name it .tsv or set 'format: tsv' in the task"),
    ("tsv", "text,label", "separated by ',', not '\\t'; name it .csv or set 'format: csv' in the task"),
])
def test_table_with_another_delimiter(tmp_path: Path, suffix: str, header: str, problem: str) -> None:
    rows = header + "\n" + header.replace("text", "France").replace("label", "a") + "\n"
    path = task_file(tmp_path, TASK, rows, suffix)
    assert refusal(load_examples, path) == (
        f"{tmp_path / f'data.{suffix}'}: its header {header!r} looks like it is {problem}")


def test_single_column_table_is_still_read(tmp_path: Path) -> None:
    # Only the header tells the delimiter: a single column's values may hold any of them.
    path = task_file(tmp_path, TASK.replace('"{{label}}"', "a"), 'text\n"x, y"\nx; y\n', "csv")
    assert [e.text for e in load_examples(path)] == ["the capital of x, y is", "the capital of x; y is"]


def test_table_without_header(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK, "\n\n", "csv")
    assert refusal(load_examples, path) == (
        f"{tmp_path / 'data.csv'}: the first line must be a header naming the columns (e.g. text,label)")


def test_table_with_a_field_over_the_csv_limit(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK, 'text,label\n"' + "x" * 200_000 + '",a\n', "csv")
    assert refusal(load_examples, path) == (
        f"{tmp_path / 'data.csv'}:2: not a readable table (field larger than field limit (131072))")


# --- excerpts of input in messages ------------------------------------------------------------------------

LONG = "word\n" * 1000


def test_fact_values_are_quoted_as_excerpts(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"sub": [LONG], "obj": "Paris"}) + "\n")
    assert refusal(read_facts, path) == f'{path}, line 1: "sub" must be a non-empty string, got {excerpt([LONG])}'
    assert len(excerpt([LONG])) == 80


def test_row_keys_are_quoted_as_excerpts(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({LONG: 1}) + "\n")
    assert refusal(read_facts, path).endswith(f"found {excerpt([LONG])}")
    assert refusal(read_templates, path) == (
        f'{path}, line 1: no "template" key; found {excerpt([LONG])}; write lines like {{"relation": "P19", '
        '"template": "[X] was born in [Y] ."}')
    assert refusal(read_template_list, path).startswith(f'{path}, line 1: no "template" (or "pattern") key; found '
                                                        f"{excerpt([LONG])};")


def test_templates_are_quoted_as_excerpts(tmp_path: Path) -> None:
    directory = split_dir(tmp_path, LONG.encode())
    assert refusal(load_relation, directory) == (
        f"{directory / 'template.txt'}: the template 'word' lacks [X] and [Y]; write it with [X] for the subject and "
        "[Y] for the answer, e.g. '[X] was born in [Y] .'")
    assert refusal(Template, "[X] " + LONG) == (
        f"template {excerpt('[X] ' + LONG)} has no [Y] slot(s); it needs exactly one [X] (the subject) and one [Y] "
        "(the answer), e.g. '[X] was born in [Y] .'")


def test_task_targets_are_quoted_as_excerpts(tmp_path: Path) -> None:
    path = task_file(tmp_path, TASK, json.dumps({"text": "France", "label": LONG}) + "\n")
    assert refusal(load_examples, path) == (
        f"{tmp_path / 'data.jsonl'}:1: target {excerpt(LONG.strip())} is not one of ['a', 'b']; fix the row or the "
        f"task's 'target'/'labels' in {path}")


def test_table_headers_are_quoted_as_excerpts(tmp_path: Path) -> None:
    header = ";".join(["column"] * 100)
    path = task_file(tmp_path, TASK, header + "\n", "csv")
    assert refusal(load_examples, path).startswith(f"{tmp_path / 'data.csv'}: its header {excerpt(header)} looks like")


# --- templates and JSONL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 3, ["[X] [Y]"], b"[X] [Y]"])
def test_template_that_is_not_text(value: Any) -> None:
    assert refusal(Template, value) == (
        f"a template must be a string, got {type(value).__name__} {excerpt(value)}; write it like "
        "'[X] was born in [Y] .'")


@pytest.mark.parametrize(("line", "problem"), [
    ("[" * 100_000, "JSON too large to read (RecursionError); shorten the line"),
    ('{"sub": ' + "1" * 5000 + "}", "JSON too large to read (ValueError); shorten the line"),
    ('{"sub": "\\ud800", "obj": "a"}', "an unpaired surrogate escape (such as \\ud800) is no character; fix or "
                                       "remove it"),
])
def test_jsonl_lines_that_json_cannot_take(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sub": "France", "obj": "Paris"}\n' + line + "\n")
    assert refusal(read_jsonl, path) == f"{path}, line 2: {problem}"


def test_jsonl_surrogate_pairs_are_characters(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sub": "\\ud83d\\ude00", "obj": "\\\\ud800"}\n')
    assert read_jsonl(path) == [(1, {"sub": "\U0001f600", "obj": "\\ud800"})]


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"sub": "France", "obj": "Paris"}\n' * 100)[:-10])
    assert refusal(read_jsonl, path) == (f"{path}: cannot read it (Compressed file ended before the end-of-stream "
                                         "marker was reached); check that it is a complete file")


def test_relation_named_after_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = split_dir(tmp_path, f"{TEMPLATE}\n".encode())
    monkeypatch.chdir(directory)
    assert load_relation(".").name == "capital"


# --- prompt files -----------------------------------------------------------------------------------------


def saved(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["softprompt"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def rewritten(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    target = path.with_name("edited.safetensors")
    save_file(tensors, str(target), metadata={"softprompt": json.dumps(meta)})
    return target


@pytest.fixture
def soft_file(causal_lm: Any, tmp_path: Path) -> Path:
    path = tmp_path / "soft.safetensors"
    SoftPrompt(TemplateEncoder(TEMPLATE, causal_lm)).save(path)
    return path


DAMAGED = "the file is damaged or was edited; train the prompt again"


@pytest.mark.parametrize("field", ["hidden_size", "model", "num_layers", "template", "prompt_token_ids", "init"])
def test_prompt_metadata_without_a_field(soft_file: Path, causal_lm: Any, field: str) -> None:
    meta, tensors = saved(soft_file)
    del meta[field]
    path = rewritten(soft_file, meta, tensors)
    assert refusal(load_prompt, path, causal_lm) == f"{path}: its metadata has no field '{field}'; {DAMAGED}"


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("hidden_size", "32", "a positive integer, got '32'"),
    ("hidden_size", True, "a positive integer, got True"),
    ("num_layers", -2, "a positive integer, got -2"),
    ("model", "tiny\nllama", "a model name on one line, got 'tiny\\nllama'"),
    ("template", ["[X] [Y]"], "a string, got ['[X] [Y]']"),
    ("prompt_token_ids", [1, "2"], "a list of token ids, got [1, '2']"),
    ("kind", ["soft"], "a string, got ['soft']"),
])
def test_prompt_metadata_of_the_wrong_type(soft_file: Path, causal_lm: Any, field: str, value: Any,
                                           expected: str) -> None:
    meta, tensors = saved(soft_file)
    meta[field] = value
    path = rewritten(soft_file, meta, tensors)
    assert refusal(load_prompt, path, causal_lm) == f"{path}: metadata field '{field}' must be {expected}; {DAMAGED}"
    assert refusal(read_prompt_file, path) == f"{path}: metadata field '{field}' must be {expected}; {DAMAGED}"


def test_prompt_metadata_that_is_no_object(soft_file: Path) -> None:
    _, tensors = saved(soft_file)
    path = soft_file.with_name("edited.safetensors")
    for header in ("[1, 2]", '{"a": "\\ud800"}'):
        save_file(tensors, str(path), metadata={"softprompt": header})
        assert refusal(read_prompt_file, path) == (
            f"{path}: its 'softprompt' metadata must be a JSON object of text; {DAMAGED}")
    save_file(tensors, str(path), metadata={"softprompt": "[" * 100_000})
    assert refusal(read_prompt_file, path) == (
        f"{path}: its 'softprompt' metadata is not readable JSON (maximum recursion depth exceeded while decoding a "
        f"JSON array from a unicode string); {DAMAGED}")
    save_file(tensors, str(path))
    assert refusal(read_prompt_file, path) == (
        f"{path} is not a softprompt prompt file: its safetensors header has no 'softprompt' metadata (is it a model's "
        "weights?)")


@pytest.mark.parametrize("shape", [(2, 32), (7, 16), (7,)])
def test_prompt_tensor_of_the_wrong_shape(soft_file: Path, causal_lm: Any, shape: tuple[int, ...]) -> None:
    meta, tensors = saved(soft_file)
    assert tensors["weight"].shape != shape
    path = rewritten(soft_file, meta, {"weight": torch.zeros(shape)})
    message = refusal(load_prompt, path, causal_lm)
    assert message.startswith(f"{path}: its tensors do not fit its metadata (size mismatch for weight: copying a param "
                              f"with shape torch.Size({list(shape)}) from checkpoint")
    assert message.endswith(DAMAGED)


def test_prompt_tensor_missing_or_unexpected(soft_file: Path, causal_lm: Any) -> None:
    meta, tensors = saved(soft_file)
    path = rewritten(soft_file, meta, {"other": tensors["weight"]})
    assert refusal(load_prompt, path, causal_lm) == (
        f'{path}: its tensors do not fit its metadata (Missing key(s) in state_dict: "weight". Unexpected key(s) in '
        f'state_dict: "other".); {DAMAGED}')


@pytest.fixture
def task_prompt_file(causal_lm: Any, tmp_path: Path) -> Path:
    path = tmp_path / "task.safetensors"
    TaskPrompt(causal_lm, "prefix", 3, init="random").save(path)
    return path


@pytest.mark.parametrize(("edit", "found"), [
    ({"template_markers": 10**12}, "'weight' of shape [3, 32]"),
    ({"layout": "[P*999999999999]{input}"}, "'weight' of shape [3, 32]"),
    ({"tensors": {}}, "no tensor 'weight'"),
    ({"tensors": {"weight": torch.zeros(3)}}, "'weight' of shape [3]"),
])
def test_task_prompt_vectors_are_checked_before_the_prompt_is_built(task_prompt_file: Path, causal_lm: Any,
                                                                    edit: dict, found: str) -> None:
    meta, tensors = saved(task_prompt_file)
    tensors = edit.pop("tensors", tensors) or {"empty": torch.zeros(0)}
    meta |= edit
    expected = 3 + meta["template_markers"] if "template_markers" in edit else (
        999999999999 if "layout" in edit else 3)
    path = rewritten(task_prompt_file, meta, tensors)
    assert refusal(load_prompt, path, causal_lm) == (
        f"{path}: its layout and template have {expected} [P] positions, but it holds {found}; {DAMAGED}")


def test_prompt_errors_from_the_prompt_classes_name_the_file(task_prompt_file: Path, causal_lm: Any) -> None:
    meta, tensors = saved(task_prompt_file)
    path = rewritten(task_prompt_file, meta | {"tuning": "sideways"}, tensors)
    assert refusal(load_prompt, path, causal_lm) == (
        f"{path}: unknown task prompt tuning 'sideways'; choose one of: hard, soft, deep")


def test_mixture_lists_of_another_length(causal_lm: Any, tmp_path: Path) -> None:
    path = tmp_path / "mixture.safetensors"
    MixturePrompt([TemplateEncoder(TEMPLATE, causal_lm), TemplateEncoder("[X] is in [Y] .", causal_lm)]).save(path)
    meta, tensors = saved(path)
    path = rewritten(path, meta | {"prompt_token_ids": meta["prompt_token_ids"][:1]}, tensors)
    assert refusal(load_prompt, path, causal_lm) == (
        f"{path}: the metadata fields templates, sources, inits, seeds, prompt_token_ids must have one entry per "
        f"prompt; {DAMAGED}")


def test_first_format_header_without_its_kind(soft_file: Path) -> None:
    meta, tensors = saved(soft_file)
    meta = {k: v for k, v in meta.items() if k != "kind"} | {"format": "softprompt.prompt/1"}
    path = rewritten(soft_file, meta, tensors)
    assert refusal(read_prompt_file, path) == f"{path}: its metadata has no field 'mode'; {DAMAGED}"


def test_unknown_kind_and_format_are_quoted_as_excerpts(soft_file: Path) -> None:
    meta, tensors = saved(soft_file)
    path = rewritten(soft_file, meta | {"kind": LONG}, tensors)
    assert refusal(read_prompt_file, path) == (
        f"{path}: unknown prompt kind {excerpt(LONG)}; known: {', '.join(PROMPT_KINDS)}")
    path = rewritten(soft_file, meta | {"format": LONG}, tensors)
    assert refusal(read_prompt_file, path) == (
        f"{path}: unsupported prompt format {excerpt(LONG)}; expected softprompt.prompt/2")
