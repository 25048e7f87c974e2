"""The package's own small real model: a synthetic world of facts and tasks, and a tiny GPT-2 trained on it.

``load_testbed()`` returns the trained model (shipped with the package; other specs are trained and
cached on first use); tests, the demo and the benchmarks all use this one model.  Importing this
package does not import ``transformers``; loading the model does.
"""
from .evaluate import chance_levels, task_accuracies, top1_next, world_abilities
from .mend_editor import TestbedMEND, load_testbed_mend, mend_training_data
from .model import Testbed, TrainReport, TrainSpec, load_testbed, train_model
from .tokenizer import WordTokenizer
from .tracing import TraceResult, trace_fact_sites
from .world import RELATIONS, TASKS, Example, Relation, World, WorldSpec, shipped_corpus

__all__ = [
    "Testbed", "TrainReport", "TrainSpec", "load_testbed", "train_model", "chance_levels", "world_abilities",
    "WordTokenizer", "World", "WorldSpec", "Relation", "Example", "RELATIONS", "TASKS",
    "task_accuracies", "top1_next", "shipped_corpus", "TraceResult",
    "trace_fact_sites", "TestbedMEND", "load_testbed_mend", "mend_training_data",
]
