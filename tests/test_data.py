"""Tests for softprompt.data: LAMA file readers, relation loading and the geography demo."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from softprompt.errors import SoftpromptError
from softprompt.paths import shared_data_dir
from softprompt.probing import (
    GEO_RELATIONS,
    TREX10,
    Fact,
    Relation,
    geo_relation,
    geo_relations,
    load_relation,
    load_split_dir,
    read_facts,
    read_templates,
)

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_lines(path: Path, rows: list[object], trailing_newline: bool = True) -> Path:
    text = "\n".join(json.dumps(row) for row in rows) + ("\n" if trailing_newline else "")
    path.write_text(text, encoding="utf-8")
    return path


def make_split_dir(directory: Path, splits: dict[str, list[tuple[str, str]]]) -> Path:
    directory.mkdir()
    for split, pairs in splits.items():
        write_lines(directory / f"{split}.jsonl", [{"sub": s, "obj": o} for s, o in pairs])
    return directory


# --- read_facts -------------------------------------------------------------------------------------------


def test_read_facts_qin_eisner_format(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "f.jsonl", [{"sub": "Allan Peiper", "obj": "Alexandra"}, {"sub": "A", "obj": "B"}]
    )
    assert read_facts(path) == [Fact("Allan Peiper", "Alexandra"), Fact("A", "B")]


def test_read_facts_lama_format_ignores_other_keys(tmp_path: Path) -> None:
    row = {
        "uuid": "u1",
        "obj_uri": "Q90",
        "obj_label": "Paris",
        "sub_uri": "Q1",
        "sub_label": "Jean",
        "predicate_id": "P19",
    }
    assert read_facts(write_lines(tmp_path / "f.jsonl", [row])) == [Fact("Jean", "Paris")]


def test_read_facts_prefers_labels_over_google_re_ids(tmp_path: Path) -> None:
    row = {"sub": "/m/047fprg", "obj": "/m/04hqz", "sub_label": "Khatchig Mouradian", "obj_label": "Lebanon"}
    assert read_facts(write_lines(tmp_path / "f.jsonl", [row])) == [Fact("Khatchig Mouradian", "Lebanon")]


def test_read_facts_without_trailing_newline_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text('{"sub": "a", "obj": "b"}\n\n  \n{"sub": "c", "obj": "d"}', encoding="utf-8")
    assert read_facts(path) == [Fact("a", "b"), Fact("c", "d")]


def test_read_facts_gzip(tmp_path: Path) -> None:
    path = tmp_path / "P19.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"sub_label": "Ry\\u014d Kase", "obj_label": "Yokohama"}\n')
    assert read_facts(path) == [Fact("Ryō Kase", "Yokohama")]


def test_read_facts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SoftpromptError, match=r"nope\.jsonl: no such file"):
        read_facts(tmp_path / "nope.jsonl")


def test_read_facts_malformed_line_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(
        '{"sub": "a", "obj": "b"}\n{"sub": "c", "obj": "d"}\n{"sub": "e", "obj": \n', encoding="utf-8"
    )
    with pytest.raises(SoftpromptError) as info:
        read_facts(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "each line must be one JSON object" in message


def test_read_facts_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [{"sub": "a", "obj": "b"}, ["a", "b"]])
    with pytest.raises(
        SoftpromptError, match=r"line 2: found a JSON list; each line must be one JSON object"
    ):
        read_facts(path)


def test_read_facts_missing_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [{"subject": "a", "object": "b"}])
    with pytest.raises(SoftpromptError) as info:
        read_facts(path)
    message = str(info.value)
    assert f"{path}, line 1" in message
    assert '"sub" and "obj" or "sub_label" and "obj_label"' in message
    assert "['object', 'subject']" in message


@pytest.mark.parametrize("value", [3, None, "", "  "])
def test_read_facts_rejects_non_string_or_empty_values(tmp_path: Path, value: object) -> None:
    path = write_lines(tmp_path / "f.jsonl", [{"sub": "a", "obj": "b"}, {"sub": "a", "obj": value}])
    with pytest.raises(SoftpromptError, match=r'line 2: "obj" must be a non-empty string'):
        read_facts(path)


def test_read_facts_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match=re.escape(f"no facts in {path}")):
        read_facts(path)


def test_read_facts_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"sub": "a", "obj": "b"}\n{"sub": "\xe9", "obj": "b"}\n')
    with pytest.raises(SoftpromptError, match="line 2: not UTF-8"):
        read_facts(path)


# --- read_templates ---------------------------------------------------------------------------------------


def test_read_templates_lama_relations_file(tmp_path: Path) -> None:
    rows = [
        {"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "type": "N-1"},
        {"relation": "P20", "template": "[X] died in [Y] .", "label": "place of death", "type": "N-1"},
    ]
    path = write_lines(tmp_path / "relations.jsonl", rows, trailing_newline=False)
    assert read_templates(path) == {"P19": "[X] was born in [Y] .", "P20": "[X] died in [Y] ."}


def test_read_templates_single_prompt_file_keeps_first(tmp_path: Path) -> None:
    rows = [{"template": "[X] was born in [Y] ."}, {"template": "[X] is from [Y] .", "weight": 0.5}]
    assert read_templates(write_lines(tmp_path / "P19.jsonl", rows)) == {"P19": "[X] was born in [Y] ."}
    gzipped = tmp_path / "P20.jsonl.gz"
    gzipped.write_bytes(gzip.compress(b'{"template": "[X] died in [Y] ."}'))
    assert read_templates(gzipped) == {"P20": "[X] died in [Y] ."}


def test_read_templates_errors(tmp_path: Path) -> None:
    with pytest.raises(SoftpromptError, match=r'P19.jsonl, line 1: no "template" key'):
        read_templates(write_lines(tmp_path / "P19.jsonl", [{"pattern": "[X] was born in [Y]."}]))
    with pytest.raises(SoftpromptError, match=r"P20.jsonl, line 2: the template '\[X\] died .' lacks \[Y\]"):
        read_templates(
            write_lines(
                tmp_path / "P20.jsonl", [{"template": "[X] died in [Y] ."}, {"template": "[X] died ."}]
            )
        )
    path = tmp_path / "bad.jsonl"
    path.write_text('{"relation": "P19", "template": "[X] was born in [Y] ."}\n{oops}\n', encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"bad.jsonl, line 2: malformed JSON"):
        read_templates(path)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(SoftpromptError, match="no templates in"):
        read_templates(tmp_path / "empty.jsonl")


# --- load_split_dir / load_relation ----------------------------------------------------------------------


def test_load_split_dir_reads_present_splits(tmp_path: Path) -> None:
    directory = make_split_dir(tmp_path / "P19", {"train": [("a", "b"), ("c", "d")], "test": [("e", "f")]})
    assert load_split_dir(directory) == {"train": [Fact("a", "b"), Fact("c", "d")], "test": [Fact("e", "f")]}


def test_load_split_dir_without_split_files(tmp_path: Path) -> None:
    (tmp_path / "P19").mkdir()
    with pytest.raises(SoftpromptError, match=r"found none of train\.jsonl, dev\.jsonl, test\.jsonl"):
        load_split_dir(tmp_path / "P19")


def test_load_relation_looks_up_template_by_directory_name(tmp_path: Path) -> None:
    directory = make_split_dir(
        tmp_path / "P19", {"train": [("a", "b")], "dev": [("c", "d")], "test": [("e", "f")]}
    )
    templates = write_lines(
        tmp_path / "relations.jsonl",
        [
            {"relation": "P20", "template": "[X] died in [Y] ."},
            {"relation": "P19", "template": "[X] was born in [Y] ."},
        ],
    )
    relation = load_relation(directory, templates_file=templates)
    assert relation == Relation(
        name="P19",
        template="[X] was born in [Y] .",
        splits={"train": [Fact("a", "b")], "dev": [Fact("c", "d")], "test": [Fact("e", "f")]},
    )
    assert load_relation(directory, templates_file=templates, name="P20").template == "[X] died in [Y] ."


def test_load_relation_single_file_is_test_split(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "P19.jsonl", [{"sub_label": "Jean", "obj_label": "Paris"}])
    relation = load_relation(path, template="[X] was born in [Y] .")
    assert relation.name == "P19"
    assert relation.splits == {"train": [], "dev": [], "test": [Fact("Jean", "Paris")]}


def test_load_relation_template_argument_wins(tmp_path: Path) -> None:
    directory = make_split_dir(tmp_path / "P19", {"test": [("a", "b")]})
    templates = write_lines(
        tmp_path / "relations.jsonl", [{"relation": "P19", "template": "[X] was born in [Y] ."}]
    )
    relation = load_relation(directory, template="[X] is from [Y] .", templates_file=templates)
    assert relation.template == "[X] is from [Y] ."


def test_load_relation_template_from_directory(tmp_path: Path) -> None:
    directory = make_split_dir(tmp_path / "capitals", {"test": [("France", "Paris")]})
    (directory / "template.txt").write_text("\nThe capital of [X] is [Y] .\n", encoding="utf-8")
    assert load_relation(directory).template == "The capital of [X] is [Y] ."


def test_load_relation_without_template(tmp_path: Path) -> None:
    directory = make_split_dir(tmp_path / "P19", {"test": [("a", "b")]})
    with pytest.raises(SoftpromptError, match=r"pass a template .* or a templates file"):
        load_relation(directory)


def test_load_relation_unknown_name_lists_available(tmp_path: Path) -> None:
    directory = make_split_dir(tmp_path / "P999", {"test": [("a", "b")]})
    rows = [{"relation": f"P{i}", "template": "[X] r [Y] ."} for i in range(12)]
    templates = write_lines(tmp_path / "relations.jsonl", rows)
    with pytest.raises(SoftpromptError) as info:
        load_relation(directory, templates_file=templates)
    assert "no template for relation 'P999' (it has P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, ...)" in str(
        info.value
    )


def test_load_relation_missing_data_and_bad_template(tmp_path: Path) -> None:
    with pytest.raises(SoftpromptError, match="no such file or directory"):
        load_relation(tmp_path / "P19", template="[X] was born in [Y] .")
    directory = make_split_dir(tmp_path / "P19", {"test": [("a", "b")]})
    with pytest.raises(SoftpromptError, match=r"lacks \[Y\]; write it with \[X\] for the subject"):
        load_relation(directory, template="[X] was born in")


def test_relation_checks_types() -> None:
    with pytest.raises(TypeError, match="list of Fact"):
        Relation(name="r", template="[X] [Y]", splits={"train": [("a", "b")]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown splits"):
        Relation(name="r", template="[X] [Y]", splits={"validation": []})


def test_trex10() -> None:
    assert len(set(TREX10)) == 10
    assert TREX10[3] == "P19"


# --- shared data (skipped without ../shared/data) ------------------------------------------------------


def test_shared_data_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTPROMPT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv("SOFTPROMPT_SHARED_DATA")
    monkeypatch.chdir(tmp_path)
    assert shared_data_dir() is None
    # A caller's default counts only when no variable is set and the directory exists.
    assert shared_data_dir(default=tmp_path) == tmp_path.resolve()
    assert shared_data_dir(default=tmp_path / "missing") is None
    assert shared_data_dir(tmp_path / "given", default=tmp_path) == tmp_path / "given"


@pytest.fixture
def shared() -> Path:
    directory = shared_data_dir(default=SHARED_DEFAULT)
    if directory is None:
        pytest.skip("shared data not found (set SOFTPROMPT_SHARED_DATA or run next to ../shared/data)")
    return directory


def test_real_qin_eisner_p19(shared: Path) -> None:
    relation = load_relation(
        shared / "qin_eisner_soft_prompts/db/trex_original/P19",
        templates_file=shared / "lama/relations.jsonl",
    )
    assert relation.name == "P19"
    assert relation.template == "[X] was born in [Y] ."
    assert {split: len(facts) for split, facts in relation.splits.items()} == {
        "train": 800,
        "dev": 200,
        "test": 944,
    }
    assert relation.splits["train"][0] == Fact("Shannon Bolin", "Spencer")
    assert relation.splits["test"][0] == Fact("Allan Peiper", "Alexandra")


def test_real_lama_templates_and_files(shared: Path) -> None:
    templates = read_templates(shared / "lama/relations.jsonl")
    assert len(templates) == 46
    assert all(name in templates for name in TREX10)
    assert read_templates(shared / "qin_eisner_soft_prompts/prompts/trex/P19.jsonl") == {
        "P19": templates["P19"]
    }
    # LAMA's own T-REx file is the same test set as Qin & Eisner's, row for row.
    lama = read_facts(shared / "lama/TREx/P19.jsonl")
    assert lama == read_facts(shared / "qin_eisner_soft_prompts/db/trex_original/P19/test.jsonl")
    assert read_facts(shared / "lama/TREx_with_evidences/P19.jsonl.gz") == lama


def test_real_prompt_sets_and_splits(shared: Path) -> None:
    """Every prompt source and split the mixtures benchmark reads loads, with the paper's counts."""
    from softprompt.probing.prompt_sets import prompt_set

    assert len(prompt_set("min", "P19", shared).templates) == 29
    assert len(prompt_set("par", "P19", shared).templates) == 30
    assert prompt_set("sin", "P19", shared).templates == ("[X] was born in [Y] .",)
    assert prompt_set("pararel", "P19", shared).templates[0] == "[X] was born in [Y]."
    assert len(prompt_set("min", "place_of_birth", shared, dataset="google_re").templates) == 29
    assert prompt_set("omcs", "IsA", shared, dataset="conceptnet").templates[0] == "A [X] is a [Y]."
    db = shared / "qin_eisner_soft_prompts/db"
    sizes = {
        "trex_extend/P19": (None, 200, None),
        "trex_distinct/P19": (None, None, None),
        "google_re/place_of_birth": (2349, 293, 295),
        "conceptnet/IsA": (None, None, None),
    }
    for path, expected in sizes.items():
        relation = load_relation(db / path, template="[X] is [Y] .")
        counts = tuple(len(relation.splits[s]) for s in ("train", "dev", "test"))
        assert all(c > 0 for c in counts), path
        assert all(e is None or e == c for e, c in zip(expected, counts, strict=True)), (path, counts)
    # The distinct split shares no answer between train and test.
    distinct = load_relation(db / "trex_distinct/P19", template="[X] is [Y] .")
    assert not {f.answer for f in distinct.splits["train"]} & {f.answer for f in distinct.splits["test"]}


# --- geography demo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GEO_RELATIONS))
def test_geo_relation_splits(name: str) -> None:
    relation = geo_relation(name)
    assert relation.name == name
    assert relation.template == GEO_RELATIONS[name]
    assert relation.template.endswith("[Y] .")
    splits = relation.splits
    subjects = [fact.subject for facts in splits.values() for fact in facts]
    assert len(subjects) == len(set(subjects)), "subjects must be unique, hence splits disjoint"
    n = len(subjects)
    assert n > 100
    assert abs(len(splits["train"]) - 0.8 * n) <= 1
    assert abs(len(splits["dev"]) - 0.1 * n) <= 1
    assert abs(len(splits["test"]) - 0.1 * n) <= 1
    assert all(
        fact.subject.strip() == fact.subject and fact.answer.strip() == fact.answer
        for fact in relation.splits["train"]
    )


def test_geo_relation_is_deterministic_and_independent() -> None:
    first = geo_relation("capital")
    first.splits["train"].clear()
    second, third = geo_relation("capital"), geo_relation("capital")
    assert second == third
    assert len(second.splits["train"]) > 0


def test_geo_known_facts() -> None:
    facts = {
        name: {fact.subject: fact.answer for facts in geo_relation(name).splits.values() for fact in facts}
        for name in GEO_RELATIONS
    }
    assert facts["capital"]["France"] == "Paris"
    assert facts["continent"]["Brazil"] == "South America"
    assert facts["currency"]["Japan"] == "Yen"
    assert facts["city_country"]["Tokyo"] == "Japan"
    assert "Antarctica" not in facts["capital"]  # no capital
    assert "Singapore" not in facts["city_country"]  # a city named like its country
    assert "London" not in facts["city_country"]  # London, UK and London, Ontario


def test_geo_relations_and_unknown_name() -> None:
    assert [relation.name for relation in geo_relations()] == [
        "capital",
        "continent",
        "currency",
        "city_country",
    ]
    with pytest.raises(
        SoftpromptError, match="unknown demo relation 'capitals'; choose one of capital, continent"
    ):
        geo_relation("capitals")
