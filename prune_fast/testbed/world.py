"""A deterministic synthetic world of facts and general-ability tasks for the test-bed model.

The world holds ``n_subjects`` one-word subjects (invented names) and ``len(RELATIONS)``
relations; every (subject, relation) pair has one object drawn from the relation's own object
list.  Each relation has several prompt templates ("{} lives in the city of", ...), so an edit
made through one template can be checked on the others (paraphrases).  Besides the facts, three
task families stand for the downstream abilities that sequential editing erodes:

    recall      the facts themselves, read on subjects that were never edited   (~ open-domain QA)
    addition    "7 plus 5 is" -> "12", single digits                            (~ reasoning)
    copy        "copy k d f q :" -> "k d f q", 3-5 random letters                 (~ summarisation)

Everything is generated from ``random.Random(seed)`` so two calls with the same spec give the
same world, on every platform.

Example::

    world = World.generate()
    world.fact_prompts()[0]      # ('bakiro lives in the city of', 'oslo')
    world.edit_requests(10)      # counterfactual EditRequests with paraphrases and neighbours
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources

from ..lm.requests import EditRequest
from ..errors import InvalidInputError, UnknownNameError

__all__ = ["Relation", "WorldSpec", "World", "Example", "RELATIONS", "TASKS", "shipped_corpus"]


@dataclass(frozen=True)
class Relation:
    """A relation: its name, prompt templates (each with one ``{}``) and its object words."""

    name: str
    templates: tuple[str, ...]
    objects: tuple[str, ...]


RELATIONS: tuple[Relation, ...] = (
    Relation("city", ("{} lives in the city of", "the home town of {} is", "{} resides in"),
             ("paris", "london", "tokyo", "cairo", "lima", "oslo", "rome", "delhi", "sydney", "toronto")),
    Relation("job", ("{} works as a", "the profession of {} is", "by trade {} is a"),
             ("doctor", "teacher", "farmer", "pilot", "baker", "lawyer", "nurse", "painter", "chef", "engineer")),
    Relation("language", ("{} speaks", "the mother tongue of {} is", "{} was raised speaking"),
             ("french", "english", "japanese", "arabic", "spanish", "hindi", "german", "russian", "greek", "swahili")),
    Relation("instrument", ("{} plays the", "the instrument of {} is the", "on stage {} performs on the"),
             ("piano", "guitar", "violin", "drums", "flute", "cello", "trumpet", "harp")),
    Relation("color", ("the favourite colour of {} is", "{} likes the colour", "{} always wears"),
             ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")),
    Relation("pet", ("{} owns a pet", "the pet of {} is a", "at home {} keeps a"),
             ("dog", "cat", "parrot", "rabbit", "horse", "turtle", "hamster", "goat")),
    Relation("sport", ("{} plays the sport", "the sport of {} is", "every weekend {} enjoys"),
             ("tennis", "soccer", "chess", "golf", "hockey", "rugby", "cricket", "boxing")),
    Relation("vehicle", ("{} drives a", "the vehicle of {} is a", "to travel {} uses a"),
             ("bicycle", "truck", "tractor", "scooter", "van", "motorcycle", "bus", "taxi")),
    Relation("food", ("{} loves to eat", "the favourite food of {} is", "for dinner {} cooks"),
             ("rice", "bread", "pasta", "soup", "cheese", "fish", "beans", "noodles")),
    Relation("country", ("{} was born in", "the birth country of {} is", "{} is a citizen of"),
             ("france", "japan", "egypt", "peru", "norway", "italy", "india", "canada", "brazil", "kenya")),
)

TASKS: tuple[str, ...] = ("recall", "addition", "copy")

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_LETTERS = tuple("abcdefghijklmnopqrst")
_NUMBERS = tuple(str(i) for i in range(19))
_GLUE = ("plus", "is", "copy", ":", ".")


@dataclass(frozen=True)
class WorldSpec:
    """What determines a world; two equal specs generate identical worlds."""

    n_subjects: int = 200
    n_relations: int = len(RELATIONS)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_relations <= len(RELATIONS):
            raise InvalidInputError(f"n_relations must be in [1, {len(RELATIONS)}], got {self.n_relations}")
        if self.n_subjects < 2:
            raise InvalidInputError(f"n_subjects must be at least 2, got {self.n_subjects}")


@dataclass(frozen=True)
class Example:
    """A training or evaluation item: the model reads ``prompt`` and must continue with ``answer``."""

    task: str
    prompt: str
    answer: str


@dataclass
class World:
    """Subjects, facts and task generators; build with :meth:`generate`."""

    spec: WorldSpec
    subjects: tuple[str, ...]
    relations: tuple[Relation, ...]
    facts: dict[tuple[str, str], str] = field(repr=False)  # (subject, relation name) -> object

    @classmethod
    def generate(cls, spec: WorldSpec | None = None) -> "World":
        spec = spec or WorldSpec()
        rng = random.Random(spec.seed)
        relations = RELATIONS[: spec.n_relations]
        reserved = {w for r in relations for t in r.templates for w in t.split()}
        reserved |= {o for r in relations for o in r.objects} | set(_LETTERS) | set(_NUMBERS) | set(_GLUE)
        names: list[str] = []
        seen: set[str] = set(reserved)
        while len(names) < spec.n_subjects:
            n_syll = rng.choice((2, 3))
            name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n_syll))
            if name not in seen:
                seen.add(name)
                names.append(name)
        facts = {(s, r.name): rng.choice(r.objects) for s in names for r in relations}
        return cls(spec=spec, subjects=tuple(names), relations=relations, facts=facts)

    # -- vocabulary ----------------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word that any prompt or answer of this world uses, in a fixed order."""
        words: list[str] = []
        for r in self.relations:
            for t in r.templates:
                words += [w for w in t.split() if w != "{}"]
            words += list(r.objects)
        words += ["is", "a"]  # the "{subject} is a" prompts ROME's essence term reads
        words += list(_GLUE) + list(_NUMBERS) + list(_LETTERS) + list(self.subjects)
        return list(dict.fromkeys(words))

    def relation(self, name: str) -> Relation:
        for r in self.relations:
            if r.name == name:
                return r
        raise UnknownNameError(f"no relation {name!r}; relations are {[r.name for r in self.relations]}")

    # -- facts ---------------------------------------------------------------------------------
    def fact_prompts(self, subjects: tuple[str, ...] | list[str] | None = None,
                     templates: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
        """(prompt, answer) for every fact of ``subjects`` (default: all) and template index."""
        out = []
        for s in subjects if subjects is not None else self.subjects:
            for r in self.relations:
                for i, t in enumerate(r.templates):
                    if templates is None or i in templates:
                        out.append((t.format(s), self.facts[(s, r.name)]))
        return out

    # -- general tasks -------------------------------------------------------------------------
    @staticmethod
    def addition_examples() -> list[Example]:
        """All 100 single-digit sums, ``"a plus b is" -> str(a + b)``."""
        return [Example("addition", f"{a} plus {b} is", str(a + b)) for a in range(10) for b in range(10)]

    @staticmethod
    def copy_example(rng: random.Random) -> Example:
        """``"copy x y z :" -> "x y z ."``: 3-5 random letters, repeated and closed by a full stop."""
        letters = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 5))]
        return Example("copy", "copy " + " ".join(letters) + " :", " ".join(letters) + " .")

    def copy_examples(self, n: int, seed: int = 1) -> list[Example]:
        rng = random.Random(self.spec.seed * 7919 + seed)
        return [self.copy_example(rng) for _ in range(n)]

    def training_stream(self, seed: int, mix: tuple[float, float, float] = (0.85, 0.075, 0.075)) -> Iterator[Example]:
        """An endless, seeded stream of training examples mixing facts, addition and copying."""
        rng = random.Random(seed)
        facts = [Example("recall", p, a) for p, a in self.fact_prompts()]
        sums = self.addition_examples()
        while True:
            x = rng.random()
            if x < mix[0]:
                yield rng.choice(facts)
            elif x < mix[0] + mix[1]:
                yield rng.choice(sums)
            else:
                yield self.copy_example(rng)

    # -- edits ---------------------------------------------------------------------------------
    def edit_requests(self, n: int, seed: int = 0, template: int = 0, n_neighbours: int = 5,
                      subjects: tuple[str, ...] | list[str] | None = None) -> list[EditRequest]:
        """``n`` counterfactual requests on distinct subjects (distinct (subject, relation) pairs).

        The edit uses ``template``; the other templates of the relation are the paraphrases; the
        neighbours are other subjects with the same relation (preferring the same true object),
        with their own true answers.  ``subjects`` restricts the edited subjects and their
        neighbours to a subset (e.g. one side of :meth:`split_subjects`); default: all.
        """
        rng = random.Random(self.spec.seed * 104729 + seed)
        pool_subjects = self.subjects if subjects is None else self._known(subjects)
        pairs = [(s, r) for s in pool_subjects for r in self.relations]
        if n > len(pool_subjects):
            raise InvalidInputError(f"asked for {n} edits on distinct subjects but there are {len(pool_subjects)}")
        rng.shuffle(pairs)
        used: set[str] = set()
        out: list[EditRequest] = []
        for s, r in pairs:
            if len(out) == n:
                break
            if s in used:
                continue
            used.add(s)
            new = rng.choice([o for o in r.objects if o != self.facts[(s, r.name)]])
            out.append(self._request(rng, s, r, template, n_neighbours, pool_subjects, f"{s}/{r.name}", new))
        return out

    def counterfactual_requests(self, subjects: tuple[str, ...] | list[str], seed: int = 0,
                                n_neighbours: int = 5) -> list[EditRequest]:
        """Every counterfactual request on ``subjects``: each (subject, relation, template, new object).

        Each template serves as the edit prompt (the others are its paraphrases), each object but
        the true one as the new target; neighbours come from ``subjects`` only.  This is the
        training set of a learned editor (MEND): pass one side of :meth:`split_subjects`.
        """
        rng = random.Random(self.spec.seed * 15485863 + seed)
        pool = self._known(subjects)
        out = []
        for s in pool:
            for r in self.relations:
                for t in range(len(r.templates)):
                    for new in r.objects:
                        if new != self.facts[(s, r.name)]:
                            out.append(self._request(rng, s, r, t, n_neighbours, pool, f"{s}/{r.name}/t{t}/{new}", new))
        return out

    def split_subjects(self, heldout: float = 0.5, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(train, held_out)``: a seeded random partition of the subjects, ``heldout`` of them held out."""
        if not 0 < heldout < 1:
            raise InvalidInputError(f"heldout must be in (0, 1), got {heldout}")
        order = list(self.subjects)
        random.Random(self.spec.seed * 7727 + seed).shuffle(order)
        n_out = min(len(order) - 1, max(1, round(heldout * len(order))))
        held = set(order[:n_out])
        return (tuple(s for s in self.subjects if s not in held), tuple(s for s in self.subjects if s in held))

    def _known(self, subjects: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        unknown = sorted(set(subjects) - set(self.subjects))
        if unknown:
            raise InvalidInputError(f"subjects not in this world: {unknown[:5]}")
        if len(set(subjects)) < 2:
            raise InvalidInputError("need at least two subjects (edits have neighbours)")
        return tuple(dict.fromkeys(subjects))

    def _request(self, rng: random.Random, s: str, r: Relation, template: int, n_neighbours: int,
                 pool: tuple[str, ...], case_id: str, new: str) -> EditRequest:
        true = self.facts[(s, r.name)]
        others = [x for x in pool if x != s]
        same = [x for x in others if self.facts[(x, r.name)] == true]
        neigh_pool = same if len(same) >= n_neighbours else others
        neigh = rng.sample(neigh_pool, min(n_neighbours, len(neigh_pool)))
        return EditRequest(
            prompt=r.templates[template], subject=s, target_new=new, target_true=true,
            paraphrase_prompts=tuple(t.format(s) for i, t in enumerate(r.templates) if i != template),
            neighborhood_prompts=tuple(r.templates[template].format(x) for x in neigh),
            neighborhood_answers=tuple(self.facts[(x, r.name)] for x in neigh),
            case_id=case_id,
        )

    # -- corpus --------------------------------------------------------------------------------
    def corpus(self, n_lines: int = 2000, seed: int = 2) -> list[str]:
        """Text lines in the training distribution (prompt + answer), for covariance statistics.

        This is what "a text corpus" is for the test-bed model: the keys an MLP sees on it
        are the keys it sees when it is asked about facts and tasks.
        """
        stream = self.training_stream(seed)
        return [f"{ex.prompt} {ex.answer}" for ex, _ in zip(stream, range(n_lines))]

    def to_dict(self) -> dict:
        return asdict(self.spec)


SHIPPED_CORPUS = "data/testbed_corpus.txt"


def shipped_corpus() -> list[str]:
    """The covariance corpus shipped with the package: ``World.generate().corpus(2000)``, one text a line.

    Stored as ``prune_fast/data/testbed_corpus.txt`` so that statistics never depend on code that
    generates text at run time; a test checks that it still matches the generator.
    """
    text = resources.files("prune_fast").joinpath(SHIPPED_CORPUS).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]
