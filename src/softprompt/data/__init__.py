"""Knowledge-probing data: LAMA-style files and the embedded geography demo."""

from softprompt.data.geo import GEO_RELATIONS, geo_relation, geo_relations
from softprompt.data.lama import (
    TREX10,
    Fact,
    Relation,
    load_relation,
    load_split_dir,
    read_facts,
    read_templates,
    shared_data_dir,
)

__all__ = [
    "GEO_RELATIONS",
    "TREX10",
    "Fact",
    "Relation",
    "geo_relation",
    "geo_relations",
    "load_relation",
    "load_split_dir",
    "read_facts",
    "read_templates",
    "shared_data_dir",
]
