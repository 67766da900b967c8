"""LAMA-style cloze sentences about made-up people, built offline from Faker's word lists.

The paper's appendix (Levin et al. 2022) ran parameter saliency on BERT over LAMA's cloze
sentences ("[X] was born in [MASK] ."). LAMA needs a download; this module builds sentences of
the same shape from lists that ship inside the ``faker`` package (nothing is downloaded, no
Faker random generator is used, so the output depends only on the seeds and those lists):

- first names: ``faker.providers.person.en_US.Provider.first_names_male`` / ``first_names_female``
  (names in both lists are dropped);
- last names: ``faker.providers.person.en_US.Provider.last_names``;
- jobs: ``faker.providers.job.en_US.Provider.jobs``, the one-word ones (a few one-word entries
  that are fragments of longer titles are dropped);
- countries: ``faker.providers.address.en_US.Provider.countries``, the one-word ones.

Everything is lower-cased, and every target is one word. A *world* (``world_seed``) fixes who
exists and their fixed attributes; sentences (``seed``) are drawn from it, so a train set and a
validation set drawn with different ``seed`` and the same ``world_seed`` talk about the same
people. The four relations:

============  =====================================  =============================================
relation      template                               target
============  =====================================  =============================================
gender        ``{first} {last} is a [MASK] .``       man / woman, from the first name: learnable
birthplace    ``{first} {last} was born in [MASK] .`` the family's country, fixed per last name:
                                                     learnable by memorising the families
occupation    ``{first} {last} is a [MASK] by         a job drawn afresh per sentence with Zipf
              profession .``                         weights (1/rank) in an order that depends on
                                                     the gender: not predictable; the best guess
                                                     is the gender's most frequent job
residence     ``{first} {last} lives in [MASK] .``    half of the time the family's country, else a
                                                     country drawn afresh with Zipf weights: the
                                                     best guess is the family's country
============  =====================================  =============================================

So a model trained on these sentences can be right about gender and (for families it has seen
often) birthplace, and makes honest mistakes with shared causes on occupation and residence:
it defaults to the most frequent answer, as BERT defaults to "actor" or "France" on LAMA.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MASK = "[MASK]"
RELATIONS = ("gender", "birthplace", "occupation", "residence")
TEMPLATES = {
    "gender": "{first} {last} is a [MASK] .",
    "birthplace": "{first} {last} was born in [MASK] .",
    "occupation": "{first} {last} is a [MASK] by profession .",
    "residence": "{first} {last} lives in [MASK] .",
}
# one-word entries of Faker's job list that are the first word of longer titles, not jobs
_JOB_FRAGMENTS = {"copy", "land", "make", "sub"}


def _faker_lists() -> dict[str, list[str]]:
    """The lower-cased one-word lists this module draws from, in Faker's order, without repeats."""
    from faker.providers.address.en_US import Provider as Address
    from faker.providers.job.en_US import Provider as Job
    from faker.providers.person.en_US import Provider as Person

    def words(items) -> list[str]:
        return list(dict.fromkeys(w.lower() for w in items if w.isalpha()))

    jobs = [w for w in words(Job.jobs) if w not in _JOB_FRAGMENTS]
    countries = words(Address.countries)
    targets = set(jobs) | set(countries) | {"man", "woman"}
    male, female = words(Person.first_names_male), words(Person.first_names_female)
    both = set(male) & set(female)
    return {
        "male": [w for w in male if w not in both and w not in targets],
        "female": [w for w in female if w not in both and w not in targets],
        "last": [w for w in words(Person.last_names) if w not in targets],
        "jobs": jobs,
        "countries": countries,
    }


@dataclass(frozen=True)
class World:
    """Who exists (``world_seed``) and their fixed attributes."""

    gender: dict[str, str]  # first name -> man / woman
    family: dict[str, str]  # last name -> birth country
    jobs: dict[str, list[str]]  # man / woman -> occupation targets, most frequent first
    job_weights: list[float]
    homes: list[str]  # residence targets, most frequent first
    home_weights: list[float]


def _zipf(n: int) -> list[float]:
    w = [1.0 / (r + 1) for r in range(n)]
    return [x / sum(w) for x in w]


def world(world_seed: int = 0, *, first_names: int = 30, last_names: int = 40, jobs: int = 10,
          countries: int = 10) -> World:
    """The people and attributes of one world: ``first_names`` names of each gender, ``last_names``
    families each with a birth country among ``countries`` (uniform), ``jobs`` jobs (in one seeded
    order per gender) and the same countries as homes, each with Zipf weights (1/rank)."""
    lists = _faker_lists()
    rng = random.Random(f"saliencydb-cloze-world-{world_seed}")
    male = rng.sample(lists["male"], first_names)
    female = rng.sample(lists["female"], first_names)
    last = rng.sample(lists["last"], last_names)
    job_list = rng.sample(lists["jobs"], jobs)
    country_list = rng.sample(lists["countries"], countries)
    family = {name: rng.choice(country_list) for name in last}
    homes = rng.sample(country_list, len(country_list))
    by_gender = {"man": job_list, "woman": rng.sample(job_list, len(job_list))}
    return World(gender={**{n: "man" for n in male}, **{n: "woman" for n in female}}, family=family,
                 jobs=by_gender, job_weights=_zipf(jobs), homes=homes, home_weights=_zipf(countries))


def cloze_sentences(n: int, seed: int, *, world_seed: int = 0, relations: tuple[str, ...] = RELATIONS,
                    **world_sizes: int) -> list[dict]:
    """``n`` cloze sentences drawn with ``seed`` from ``world(world_seed, **world_sizes)``: dicts with
    ``text`` (one ``[MASK]``), ``label`` (the one-word target) and ``relation``. Relations take turns
    (sentence i has relation ``relations[i % len(relations)]``); the person is drawn uniformly."""
    unknown = [r for r in relations if r not in TEMPLATES]
    if unknown or not relations:
        raise ValueError(f"relations must be among {', '.join(RELATIONS)}, got {relations!r}")
    w = world(world_seed, **world_sizes)
    rng = random.Random(f"saliencydb-cloze-sentences-{world_seed}-{seed}")
    firsts, lasts = sorted(w.gender), sorted(w.family)
    out = []
    for i in range(n):
        relation = relations[i % len(relations)]
        first, last = rng.choice(firsts), rng.choice(lasts)
        if relation == "gender":
            label = w.gender[first]
        elif relation == "birthplace":
            label = w.family[last]
        elif relation == "occupation":
            label = rng.choices(w.jobs[w.gender[first]], weights=w.job_weights)[0]
        elif rng.random() < 0.5:  # residence: where the family comes from ...
            label = w.family[last]
        else:  # ... or anywhere
            label = rng.choices(w.homes, weights=w.home_weights)[0]
        out.append({"text": TEMPLATES[relation].format(first=first, last=last), "label": label, "relation": relation})
    return out


def vocabulary(sentences: list[dict]) -> list[str]:
    """The sorted words of the sentences and their targets (``[MASK]`` and punctuation left out): the
    ``words`` for ``saliencydb.data.zoo.save_tiny_text_model``, so that every word is one token."""
    words = {s["label"] for s in sentences}
    for s in sentences:
        words.update(t for t in s["text"].split() if t != MASK and t.isalpha())
    return sorted(words)
