"""Example data shipped inside the package, so `pip install bayescale` users can run every README example.

chinchilla: the 245 runs of Hoffmann et al. 2022, Figure 4, digitised by Besiroglu et al. 2024
(arXiv:2404.10102), redistributed under the MIT licence by IBM/ColPret (raw_data/chinchila_extracted.csv);
the licence is in example_data/chinchilla_LICENSE. Columns: "Model Size" (N), "Training FLOP" (C), "loss".

overtrain: the 104 models of Gadre et al. 2024, "Language models scale reliably with over-training and on
downstream tasks" (arXiv:2403.08540), from github.com/mlfoundations/scaling (`exp_data/models/*.json` and
`exp_data/evals/*.json`, MIT licence, in example_data/overtrain_LICENSE), flattened to one row per model.
Columns: "dataset" (training corpus: c4_original, rpj = RedPajama, rw_original = RefinedWeb), "N_params",
"D_tokens", "flops_6ND", "chinchilla_multiplier" (tokens per parameter / 20), "loss_<eval set>" (mean loss on
eight evaluation sets, with "_seq_lo95" / "_seq_hi95" intervals) and "acc_<task>" (accuracy on 46 downstream
tasks). Three corpora share the same (N, D) ladder, so the example is fitted with group="dataset" (or
one corpus at a time). Its second file, "eval_metadata", gives each task's size ("#datapoints"), shots and random-chance
baseline (percent): `example_file("overtrain", "eval_metadata")`, for `downstream.task_metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Example:
    file: str
    law: str
    columns: dict[str, str]
    y: str
    description: str
    licence: str
    group: str | None = None   # the column of independent setups, where the example has several
    extra_files: dict[str, str] = field(default_factory=dict)


EXAMPLES = {
    "chinchilla": Example(
        file="chinchilla_fig4.csv",
        law="chinchilla",
        columns={"N": "Model Size", "C": "Training FLOP"},
        y="loss",
        description="Hoffmann et al. 2022 Figure 4 runs (245), digitised by Besiroglu et al. 2024",
        licence="chinchilla_LICENSE",
    ),
    "overtrain": Example(
        file="overtrain_runs.csv",
        law="chinchilla",
        columns={"N": "N_params", "D": "D_tokens"},
        y="loss_c4_val",
        description="Gadre et al. 2024 over-training study: 104 models, 3 corpora, 8 losses, 46 downstream tasks",
        licence="overtrain_LICENSE",
        group="dataset",
        extra_files={"eval_metadata": "overtrain_eval_metadata.csv"},
    ),
}


def _example(name: str) -> Example:
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    return EXAMPLES[name]


def example_file(name: str = "chinchilla", which: str = "runs") -> Path:
    """The path of an example's file inside the installed package: "runs" (the table), "licence", or one of
    its extra files (overtrain: "eval_metadata")."""
    example = _example(name)
    files = {"runs": example.file, "licence": example.licence, **example.extra_files}
    if which not in files:
        raise KeyError(f"example {name!r} has no file {which!r}; it has: {', '.join(files)}")
    return Path(str(resources.files("bayescale").joinpath("example_data", files[which])))


def load_example(name: str = "chinchilla") -> pd.DataFrame:
    """An example's table of runs (see the module docstring for its provenance and columns)."""
    return pd.read_csv(example_file(name))
