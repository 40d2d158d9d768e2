"""The small sample datasets protege ships, written by this module (so the demo runs offline).

- `nli`: premise/hypothesis/label rows about invented people, with entailment, neutral and
  contradiction hypotheses that need the premise to be read (names, places, years, jobs).
- `summarization`: short invented news articles with a one-sentence reference summary.

Both are deterministic from a seed. Regenerate with `python -m protege.data.samples`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from protege.data.io import write_jsonl

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SPLITS = {"train": 480, "dev": 120, "test": 120}

FIRST = [
    "Ada",
    "Bruno",
    "Chiara",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Lars",
    "Maya",
    "Nikos",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Samir",
    "Tove",
]
LAST = [
    "Alvarez",
    "Berg",
    "Castro",
    "Duval",
    "Eriksen",
    "Fischer",
    "Gomez",
    "Hale",
    "Ivanov",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Rossi",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Krakow",
    "Lyon",
    "Porto",
    "Ghent",
    "Turin",
    "Bergen",
    "Graz",
    "Utrecht",
    "Seville",
    "Tartu",
    "Malmo",
    "Brno",
    "Cork",
    "Bilbao",
]
JOBS = [
    "chemist",
    "architect",
    "violinist",
    "surgeon",
    "novelist",
    "engineer",
    "painter",
    "astronomer",
    "chef",
    "historian",
    "pilot",
    "botanist",
]
ORGS = [
    "the city museum",
    "a shipping firm",
    "the national library",
    "a small bakery",
    "the university hospital",
    "a robotics startup",
    "the opera house",
    "a law firm",
]
HOBBIES = ["chess", "sailing", "pottery", "birdwatching", "cycling", "jazz", "gardening"]
PRONOUN = {True: "She", False: "He"}
FEMALE = {"Ada", "Chiara", "Elena", "Greta", "Ines", "Keiko", "Maya", "Olga", "Rosa", "Tove"}


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _person(rng: random.Random) -> dict[str, Any]:
    first = rng.choice(FIRST)
    born, moved = rng.sample(CITIES, 2)
    year = rng.randint(1931, 1995)
    return {
        "name": f"{first} {rng.choice(LAST)}",
        "first": first,
        "she": first in FEMALE,
        "born": born,
        "moved": moved,
        "year": year,
        "move_year": year + rng.randint(18, 30),
        "job": rng.choice(JOBS),
        "org": rng.choice(ORGS),
        "other_city": rng.choice([c for c in CITIES if c not in (born, moved)]),
        "other_job": rng.choice([j for j in JOBS]),
    }


def _premise(p: dict[str, Any]) -> str:
    she = PRONOUN[p["she"]]
    return (
        f"{p['name']} is {_a(p['job'])} who was born in {p['born']} in {p['year']}. "
        f"{she} moved to {p['moved']} in {p['move_year']} and has worked at {p['org']} since then."
    )


def _hypothesis(p: dict[str, Any], label: str, rng: random.Random) -> str:
    n, k = p["first"], rng.randint(2, 9)
    options = {
        "entailment": [
            f"{n} was born in {p['born']}.",
            f"{n} works at {p['org']}.",
            f"{n} was born before {p['year'] + k}.",
            f"{n} lived in {p['born']} before moving to {p['moved']}.",
            f"{n} is {_a(p['job'])}.",
            f"{n} has lived in {p['moved']} since {p['move_year']}.",
        ],
        "contradiction": [
            f"{n} was born in {p['other_city']}.",
            f"{n} was born after {p['year'] + k}.",
            f"{n} has never lived in {p['moved']}.",
            f"{n} moved to {p['moved']} before {p['year']}.",
            f"{n} was born in {p['moved']}.",
            f"{n} has never worked at {p['org']}.",
        ],
        "neutral": [
            f"{n} enjoys {rng.choice(HOBBIES)}.",
            f"{n} has two children.",
            f"{n} speaks four languages.",
            f"{n} was the first {p['job']} in the family.",
            f"{n} plans to return to {p['born']}.",
            f"{n} visited {p['other_city']} last year.",
        ],
    }
    if p["job"] != p["other_job"]:
        options["contradiction"].append(f"{n} has never been {_a(p['job'])}.")
    return rng.choice(options[label])


def nli_rows(n: int, rng: random.Random, prefix: str) -> list[dict[str, Any]]:
    labels = ["entailment", "neutral", "contradiction"]
    rows = []
    while len(rows) < n:
        p = _person(rng)
        premise = _premise(p)
        # Two or three hypotheses per premise, as in ANLI, so "5 W" calls can be shared.
        for label in rng.sample(labels, rng.choice([2, 3])):
            if len(rows) == n:
                break
            hyp = _hypothesis(p, label, rng)
            rows.append(
                {
                    "uid": f"{prefix}-{len(rows):04d}",
                    "premise": premise,
                    "hypothesis": hyp,
                    "label": label,
                }
            )
    return rows


EVENTS = [
    (
        "opened a new {thing} in {city}",
        "{city} gets a new {thing}",
        ["bridge", "library", "tram line", "concert hall", "hospital wing", "harbour terminal"],
    ),
    (
        "announced a ban on {thing} in {city}",
        "{city} bans {thing}",
        ["diesel buses", "night flights", "plastic bags", "street parking", "fireworks"],
    ),
    (
        "recorded the warmest {thing} on record in {city}",
        "Record warm {thing} in {city}",
        ["winter", "spring", "October", "summer night", "new year"],
    ),
]
OFFICIALS = ["the mayor", "the regional council", "the transport authority", "city officials"]


def summarization_rows(n: int, rng: random.Random, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        verb, _, things = rng.choice(EVENTS)
        thing, city = rng.choice(things), rng.choice(CITIES)
        who, year = rng.choice(OFFICIALS), rng.randint(2015, 2026)
        cost = rng.randint(2, 90)
        person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        event = verb.format(thing=thing, city=city)
        article = (
            f"On Monday {who} {event}, a decision that had been debated since {year}. "
            f"The plan is expected to cost about {cost} million euros over the next decade. "
            f"{person}, a local resident, said the change was long overdue. "
            f"Critics argued that the money could have been spent on schools instead. "
            f"{who.capitalize()} said further details would be published next month."
        )
        summary = f"{who.capitalize()} {event}, at a cost of about {cost} million euros."
        rows.append({"uid": f"{prefix}-{i:04d}", "article": article, "summary": summary})
    return rows


def write_samples(root: Path = SAMPLES_DIR, seed: int = 13) -> None:
    for task, make in (("nli", nli_rows), ("summarization", summarization_rows)):
        rng = random.Random(f"{seed}-{task}")
        for split, n in SPLITS.items():
            write_jsonl(root / task / f"{split}.jsonl", make(n, rng, f"{task}-{split}"))


def sample_path(task: str, split: str) -> Path:
    """Path of a shipped sample split, e.g. `sample_path("nli", "train")`."""
    return SAMPLES_DIR / task / f"{split}.jsonl"


if __name__ == "__main__":
    write_samples()
    print(f"wrote samples under {SAMPLES_DIR}")
