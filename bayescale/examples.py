"""Example data shipped inside the package, so `pip install bayescale` users can run the example.

chinchilla: the 245 runs of Hoffmann et al. 2022, Figure 4, digitised by Besiroglu et al. 2024
(arXiv:2404.10102), redistributed under the MIT licence by IBM/ColPret (raw_data/chinchila_extracted.csv);
the licence is in example_data/chinchilla_LICENSE. Columns: "Model Size" (N), "Training FLOP" (C), "loss".
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd


@dataclass(frozen=True)
class Example:
    file: str
    law: str
    columns: dict[str, str]
    y: str
    description: str


EXAMPLES = {
    "chinchilla": Example(
        file="chinchilla_fig4.csv",
        law="chinchilla",
        columns={"N": "Model Size", "C": "Training FLOP"},
        y="loss",
        description="Hoffmann et al. 2022 Figure 4 runs (245), digitised by Besiroglu et al. 2024",
    ),
}


def load_example(name: str = "chinchilla") -> pd.DataFrame:
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    with resources.files("bayescale").joinpath("example_data", EXAMPLES[name].file).open() as handle:
        return pd.read_csv(handle)
