"""Pure-Python WebShop (text mode, 1000-product "small" configuration), faithful to the original.

No Java, spaCy, Flask or BeautifulSoup: a Lucene-exact BM25 emulation (:mod:`.search`), the original
reward with thefuzz-0.19 semantics and a precomputed noun table (:mod:`.reward`), seeded synthetic
goals with the ``clean`` and ``verl-agent`` split modes (:mod:`.goals`) and the page state machine
with the original text observations (:mod:`.pages`, :mod:`.env`). See ``docs/envs_webshop.md``.
"""

from hiper.envs.webshop.data import Catalogue, Product, WebShopDataMissing, default_data_dir, load_catalogue
from hiper.envs.webshop.env import (
    SEARCH_PLACEHOLDER,
    WebShopEnv,
    evaluate_oracle,
    prompt_admissible,
    prompt_observation,
)
from hiper.envs.webshop.goals import SPLIT_MODES, goal_set, split_goals
from hiper.envs.webshop.reward import get_reward
from hiper.envs.webshop.search import BM25Index

__all__ = [
    "BM25Index",
    "Catalogue",
    "Product",
    "SEARCH_PLACEHOLDER",
    "SPLIT_MODES",
    "WebShopDataMissing",
    "WebShopEnv",
    "default_data_dir",
    "evaluate_oracle",
    "get_reward",
    "goal_set",
    "load_catalogue",
    "prompt_admissible",
    "prompt_observation",
    "split_goals",
]
