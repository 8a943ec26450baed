"""Factual knowledge probing: relations and their facts (LAMA files, the embedded geography relations, prompt
sets), the answer objective, single-prompt runs (``probe``), mixtures of prompts (``mixture``) and the demo."""

from softprompt.probing.geo import GEO_RELATIONS, geo_relation, geo_relations
from softprompt.probing.objective import AnswerObjective, mean_loss, train_prompt, train_step
from softprompt.probing.probe import (
    EncodedRelation,
    encode_relation,
    eval_probe,
    evaluate,
    make_prompt,
    predict,
    run_probe,
)
from softprompt.probing.prompt_sets import PromptSet, prompt_set, prompt_set_from_file, read_template_list
from softprompt.probing.relations import (
    SPLITS,
    TREX10,
    Fact,
    Relation,
    load_relation,
    load_split_dir,
    read_facts,
    read_templates,
)

__all__ = [
    "GEO_RELATIONS",
    "SPLITS",
    "TREX10",
    "AnswerObjective",
    "EncodedRelation",
    "Fact",
    "PromptSet",
    "Relation",
    "encode_relation",
    "eval_probe",
    "evaluate",
    "geo_relation",
    "geo_relations",
    "load_relation",
    "load_split_dir",
    "make_prompt",
    "mean_loss",
    "predict",
    "prompt_set",
    "prompt_set_from_file",
    "read_facts",
    "read_template_list",
    "read_templates",
    "run_probe",
    "train_prompt",
    "train_step",
]
