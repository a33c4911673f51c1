"""Room, receptacle and object vocabulary of the embedded household world.

Names follow ALFWorld's lower-cased ALFRED types (``countertop``, ``sinkbasin``, ``desklamp``...).
Each room type lists its receptacle types (with whether they open and how many instances a room
may have) and its object types with the receptacle types they can start in / be put in. The
tables are small on purpose: they are data, not logic, and the world generator only samples from
them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceptacleKind:
    """A receptacle type: ``openable`` ones start closed and must be opened to see or use inside."""

    name: str
    openable: bool
    max_count: int  # most instances one room may hold ("cabinet 1".."cabinet 6")
    preposition: str  # "in" or "on", for task and subgoal text


def _r(name: str, openable: bool, max_count: int, prep: str = "on") -> ReceptacleKind:
    return ReceptacleKind(name, openable, max_count, "in" if openable else prep)


RECEPTACLES: dict[str, ReceptacleKind] = {
    r.name: r
    for r in (
        _r("cabinet", True, 6),
        _r("drawer", True, 6),
        _r("fridge", True, 1),
        _r("microwave", True, 1),
        _r("safe", True, 1),
        _r("countertop", False, 3),
        _r("diningtable", False, 1),
        _r("sinkbasin", False, 2, "in"),
        _r("bathtubbasin", False, 1, "in"),
        _r("stoveburner", False, 4),
        _r("garbagecan", False, 1, "in"),
        _r("coffeemachine", False, 1),
        _r("toaster", False, 1),
        _r("shelf", False, 3),
        _r("desk", False, 1),
        _r("sidetable", False, 2),
        _r("dresser", False, 1),
        _r("bed", False, 1),
        _r("armchair", False, 2),
        _r("sofa", False, 1),
        _r("coffeetable", False, 1),
        _r("tvstand", False, 1),
        _r("ottoman", False, 1),
        _r("laundryhamper", False, 1, "in"),
        _r("toilet", False, 1),
        _r("towelholder", False, 1),
        _r("handtowelholder", False, 1),
        _r("toiletpaperhanger", False, 1),
    )
}

#: appliance receptacle type used by each transforming verb ("clean X with sinkbasin 1").
APPLIANCE_FOR = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}
#: receptacle types the verb works with (cleaning also works in a bathtub, as in ALFWorld).
VERB_RECEPTACLES = {"clean": ("sinkbasin", "bathtubbasin"), "heat": ("microwave",), "cool": ("fridge",)}
#: adjective in task text ("put a clean apple in fridge") and in ``examine`` feedback.
ADJECTIVE = {"clean": "clean", "heat": "hot", "cool": "cool"}

CLEANABLE = frozenset(
    "apple bowl butterknife cloth cup dishsponge egg fork kettle knife ladle lettuce mug pan plate pot "
    "potato soapbar spatula spoon tomato".split()
)
HEATABLE = frozenset("apple bread cup egg mug plate potato tomato".split())
COOLABLE = frozenset("apple bowl bread cup egg lettuce mug pan plate pot potato tomato winebottle".split())
CAN = {"clean": CLEANABLE, "heat": HEATABLE, "cool": COOLABLE}

LAMPS = ("desklamp", "floorlamp")
#: receptacle types a lamp can stand on / next to.
LAMP_HOSTS = {
    "desklamp": ("desk", "sidetable", "dresser"),
    "floorlamp": ("armchair", "sidetable", "sofa", "dresser"),
}

_FOOD = ("countertop", "diningtable", "fridge", "microwave", "sinkbasin", "garbagecan")
_DISH = ("cabinet", "countertop", "diningtable", "fridge", "sinkbasin", "microwave", "shelf")
_UTENSIL = ("drawer", "countertop", "diningtable", "sinkbasin")
_SMALL = ("desk", "drawer", "dresser", "shelf", "sidetable", "safe")

ROOMS: dict[str, dict[str, object]] = {
    "kitchen": {
        "receptacles": (
            "cabinet",
            "drawer",
            "fridge",
            "microwave",
            "countertop",
            "diningtable",
            "sinkbasin",
            "stoveburner",
            "garbagecan",
            "coffeemachine",
            "toaster",
            "shelf",
        ),
        "objects": {
            "apple": _FOOD,
            "bread": ("countertop", "diningtable", "fridge", "microwave", "garbagecan"),
            "lettuce": ("countertop", "diningtable", "fridge", "sinkbasin", "garbagecan"),
            "potato": _FOOD,
            "tomato": _FOOD,
            "egg": _FOOD,
            "mug": (
                "cabinet",
                "countertop",
                "diningtable",
                "coffeemachine",
                "sinkbasin",
                "microwave",
                "shelf",
                "fridge",
            ),
            "cup": _DISH,
            "bowl": _DISH,
            "plate": _DISH,
            "pan": ("stoveburner", "cabinet", "countertop", "diningtable", "sinkbasin", "fridge"),
            "pot": ("stoveburner", "cabinet", "countertop", "diningtable", "sinkbasin", "fridge"),
            "kettle": ("stoveburner", "countertop", "cabinet", "diningtable"),
            "knife": _UTENSIL,
            "butterknife": _UTENSIL,
            "fork": _UTENSIL,
            "spoon": _UTENSIL,
            "spatula": _UTENSIL,
            "ladle": _UTENSIL,
            "dishsponge": ("sinkbasin", "countertop", "cabinet", "drawer"),
            "saltshaker": ("countertop", "cabinet", "diningtable", "shelf", "drawer"),
            "peppershaker": ("countertop", "cabinet", "diningtable", "shelf", "drawer"),
            "soapbottle": ("countertop", "cabinet", "shelf", "sinkbasin"),
            "winebottle": ("countertop", "diningtable", "fridge", "cabinet", "shelf"),
        },
    },
    "bathroom": {
        "receptacles": (
            "cabinet",
            "drawer",
            "countertop",
            "sinkbasin",
            "bathtubbasin",
            "toilet",
            "towelholder",
            "handtowelholder",
            "toiletpaperhanger",
            "garbagecan",
            "shelf",
            "dresser",
        ),
        "objects": {
            "soapbar": (
                "sinkbasin",
                "bathtubbasin",
                "countertop",
                "toilet",
                "cabinet",
                "garbagecan",
                "shelf",
            ),
            "soapbottle": ("countertop", "toilet", "cabinet", "shelf", "garbagecan", "dresser"),
            "spraybottle": ("countertop", "toilet", "cabinet", "shelf", "garbagecan", "dresser"),
            "toiletpaper": (
                "toiletpaperhanger",
                "countertop",
                "toilet",
                "cabinet",
                "drawer",
                "shelf",
                "garbagecan",
            ),
            "cloth": ("countertop", "sinkbasin", "bathtubbasin", "cabinet", "drawer", "toilet", "dresser"),
            "handtowel": ("handtowelholder", "countertop", "cabinet", "dresser"),
            "towel": ("towelholder", "countertop", "cabinet", "shelf"),
            "candle": ("countertop", "toilet", "cabinet", "shelf", "dresser", "drawer"),
            "tissuebox": ("toilet", "countertop", "shelf", "dresser", "cabinet"),
            "dishsponge": ("bathtubbasin", "countertop", "cabinet", "drawer", "sinkbasin"),
        },
    },
    "bedroom": {
        "receptacles": (
            "bed",
            "desk",
            "drawer",
            "dresser",
            "sidetable",
            "shelf",
            "garbagecan",
            "safe",
            "laundryhamper",
            "armchair",
            "cabinet",
        ),
        "objects": {
            "alarmclock": ("desk", "dresser", "sidetable", "shelf"),
            "book": ("bed", "desk", "sidetable", "shelf", "drawer", "dresser"),
            "cd": ("desk", "drawer", "shelf", "safe", "sidetable", "garbagecan"),
            "cellphone": ("bed", "desk", "drawer", "dresser", "sidetable", "safe", "shelf"),
            "creditcard": _SMALL,
            "keychain": _SMALL,
            "watch": _SMALL,
            "laptop": ("bed", "desk", "dresser", "sidetable"),
            "pen": ("desk", "drawer", "dresser", "shelf", "sidetable", "garbagecan"),
            "pencil": ("desk", "drawer", "dresser", "shelf", "sidetable", "garbagecan"),
            "pillow": ("bed", "armchair"),
            "mug": ("desk", "shelf", "sidetable"),
            "bowl": ("desk", "shelf", "sidetable", "dresser"),
            "statue": ("desk", "shelf", "dresser", "sidetable"),
            "vase": ("desk", "shelf", "dresser", "sidetable", "cabinet"),
            "cloth": ("dresser", "laundryhamper", "drawer", "cabinet"),
            "teddybear": ("bed", "dresser", "armchair"),
        },
    },
    "livingroom": {
        "receptacles": (
            "sofa",
            "armchair",
            "coffeetable",
            "sidetable",
            "diningtable",
            "tvstand",
            "shelf",
            "drawer",
            "cabinet",
            "dresser",
            "garbagecan",
            "ottoman",
            "safe",
        ),
        "objects": {
            "remotecontrol": (
                "sofa",
                "armchair",
                "coffeetable",
                "sidetable",
                "tvstand",
                "dresser",
                "drawer",
                "ottoman",
            ),
            "keychain": (
                "sofa",
                "armchair",
                "coffeetable",
                "sidetable",
                "drawer",
                "dresser",
                "safe",
                "shelf",
            ),
            "creditcard": (
                "sofa",
                "armchair",
                "coffeetable",
                "sidetable",
                "drawer",
                "dresser",
                "safe",
                "shelf",
            ),
            "laptop": ("sofa", "armchair", "coffeetable", "diningtable", "ottoman"),
            "newspaper": (
                "sofa",
                "armchair",
                "coffeetable",
                "sidetable",
                "diningtable",
                "ottoman",
                "garbagecan",
            ),
            "pillow": ("sofa", "armchair", "ottoman"),
            "statue": ("coffeetable", "sidetable", "diningtable", "shelf", "dresser", "tvstand", "cabinet"),
            "vase": ("coffeetable", "sidetable", "diningtable", "shelf", "dresser", "cabinet"),
            "box": ("coffeetable", "sidetable", "diningtable", "tvstand", "dresser", "ottoman", "sofa"),
            "watch": ("coffeetable", "sidetable", "drawer", "dresser", "shelf", "safe", "tvstand"),
            "houseplant": ("coffeetable", "sidetable", "diningtable", "shelf", "dresser"),
            "tissuebox": ("coffeetable", "sidetable", "shelf", "dresser", "tvstand"),
            "candle": ("coffeetable", "sidetable", "diningtable", "shelf", "dresser", "cabinet"),
        },
    },
}

#: rooms in which each base task type can be generated.
ROOMS_FOR_TASK = {
    "pick_and_place": ("kitchen", "bathroom", "bedroom", "livingroom"),
    "pick_two_obj": ("kitchen", "bathroom", "bedroom", "livingroom"),
    "look_at_obj_in_light": ("bedroom", "livingroom"),
    "pick_clean_then_place": ("kitchen", "bathroom"),
    "pick_heat_then_place": ("kitchen",),
    "pick_cool_then_place": ("kitchen",),
    "chain": ("kitchen",),
}


def indefinite(name: str) -> str:
    """``"an apple 1"`` / ``"a mug 2"``: the article for a listed object or receptacle."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def join_list(items: list[str]) -> str:
    """ALFWorld list wording: ``"nothing"``, ``"a x"``, ``"a x, and a y"``, ``"a x, a y, and a z"``."""
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", and " + items[-1]
