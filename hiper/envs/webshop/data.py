"""Loading the WebShop "small" (1000-product) catalogue.

Re-implements the semantics of WebShop's ``load_products`` (not its code): products deduplicated by
ASIN, ``Title``/``Description``/``BulletPoints``/``Price``/``options`` derived from the raw fields,
``Attributes`` and the synthetic instruction taken from ``items_ins_v2_1000.json``. Product prices
for range-priced products are drawn with ``rng.uniform(lo, hi)`` in catalogue order, exactly as the
original draws them with the global ``random`` module right after ``random.seed(seed)``.

The data lives outside the repository: ``$HIPER_SHARED/data/webshop`` (``HIPER_SHARED`` defaults to
``<repo>/../shared``) or an explicit ``data_dir``.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

#: file names inside the data directory
PRODUCTS_FILES = ("items_shuffle_1000.json", "items_shuffle_1000.recon.json")
ATTRIBUTES_FILE = "items_ins_v2_1000.json"
HUMAN_FILES = ("items_human_ins_1000.recon.json", "items_human_ins.json")
NOUNS_FILE = "name_nouns_en_core_web_sm_3.8.0.json"
FIXTURES_DIR = "fixtures"


class WebShopDataMissing(FileNotFoundError):
    """The WebShop data directory or one of its files is missing."""


def default_data_dir() -> Path:
    """``$HIPER_SHARED/data/webshop``, with ``HIPER_SHARED`` defaulting to ``<repo>/../shared``."""
    shared = os.environ.get("HIPER_SHARED")
    if shared:
        return Path(shared) / "data" / "webshop"
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "data" / "webshop"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory, raising :class:`WebShopDataMissing` with a clear message if absent."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if not path.is_dir():
        raise WebShopDataMissing(
            f"WebShop data directory {path} not found. Point HIPER_SHARED at the shared folder "
            f"(containing data/webshop) or pass data_dir=<dir with {ATTRIBUTES_FILE}>."
        )
    if not (path / ATTRIBUTES_FILE).is_file() or not any((path / f).is_file() for f in PRODUCTS_FILES):
        raise WebShopDataMissing(
            f"WebShop data directory {path} lacks {ATTRIBUTES_FILE} or one of {PRODUCTS_FILES}."
        )
    return path


@dataclass
class Product:
    """One catalogue product, with the derived fields the env and the reward read."""

    asin: str
    name: str  # raw ``name`` (== Title)
    title: str
    description: str
    bullet_points: list[str]
    price_tag: str  # "$x" or "$x to $y", as shown on pages
    pricing: list[float]  # [x] or [x, y]
    options: dict[str, list[str]]  # option name (lower) -> values (lower, '/' -> ' | ')
    attributes: list[str]
    category: str
    query: str  # lower-cased, stripped
    product_category: str
    rating: str = "N.A."
    instruction_text: str | None = None
    instruction_attributes: list[str] | None = None
    docid: int = 0  # position in the catalogue (the Lucene docid)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def search_contents(self) -> str:
        """The text the search index holds for this product (WebShop's ``contents`` field)."""
        option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in self.options.items())
        bullet0 = self.bullet_points[0] if self.bullet_points else ""
        return " ".join([self.title, self.description, bullet0, option_text]).lower()


def _parse_pricing(pricing: Any) -> tuple[list[float], str]:
    if pricing is None or not pricing:
        return [100.0], "$100.0"
    values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in pricing.split("$")[1:]]
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def _parse_options(customization_options: Any) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    if not customization_options:
        return options
    for option_name, contents in customization_options.items():
        if contents is None:
            continue
        options[option_name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    return options


@dataclass
class Catalogue:
    """The loaded product list (catalogue order == Lucene docid order) and side tables."""

    products: list[Product]
    by_asin: dict[str, Product]
    nouns: dict[str, list[str]]  # asin -> spaCy NOUN/PROPN tokens of the product name (lower)
    data_dir: Path

    def prices(self, rng: random.Random) -> dict[str, float]:
        """Draw the per-product price the reward uses, consuming ``rng`` like the original.

        Range-priced products get ``rng.uniform(lo, hi)`` (one call each, catalogue order); fixed
        prices are used as is; products without pricing cost 100.0.
        """
        prices: dict[str, float] = {}
        for p in self.products:
            if len(p.pricing) == 1:
                prices[p.asin] = p.pricing[0]
            else:
                prices[p.asin] = rng.uniform(*p.pricing[:2])
        return prices


def load_catalogue(data_dir: str | os.PathLike[str] | None = None) -> Catalogue:
    """Load (and cache per directory) the products, attributes and noun table."""
    return _load_catalogue_cached(str(resolve_data_dir(data_dir).resolve()))


@lru_cache(maxsize=4)
def _load_catalogue_cached(path_str: str) -> Catalogue:
    path = Path(path_str)
    products_path = next(path / f for f in PRODUCTS_FILES if (path / f).is_file())
    with open(products_path, encoding="utf-8") as f:
        raw_products = json.load(f)
    with open(path / ATTRIBUTES_FILE, encoding="utf-8") as f:
        attributes = json.load(f)
    nouns: dict[str, list[str]] = {}
    if (path / NOUNS_FILE).is_file():
        with open(path / NOUNS_FILE, encoding="utf-8") as f:
            nouns = json.load(f)

    seen: set[str] = set()
    products: list[Product] = []
    for raw in raw_products:
        asin = raw["asin"]
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, price_tag = _parse_pricing(raw.get("pricing"))
        small = raw["small_description"]
        attr_entry = attributes.get(asin, {})
        products.append(
            Product(
                asin=asin,
                name=raw["name"],
                title=raw["name"],
                description=raw["full_description"],
                bullet_points=small if isinstance(small, list) else [small],
                price_tag=price_tag,
                pricing=pricing,
                options=_parse_options(raw["customization_options"]),
                attributes=attr_entry["attributes"] if "attributes" in attr_entry else ["DUMMY_ATTR"],
                category=raw["category"],
                query=raw["query"].lower().strip(),
                product_category=raw["product_category"],
                instruction_text=attr_entry.get("instruction"),
                instruction_attributes=attr_entry.get("instruction_attributes"),
                docid=len(products),
                raw=raw,
            )
        )
    by_asin = {p.asin: p for p in products}
    return Catalogue(products=products, by_asin=by_asin, nouns=nouns, data_dir=path)
