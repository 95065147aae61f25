"""The built-in synthetic scene dataset (data format ``synthetic``, what ``make demo`` trains on).

Every image is a small RGB picture (``image_size`` × ``image_size`` px, uint8) of 1 to
``max_objects`` flat-coloured objects on a dark grey background (level 20..60 per image, plus
grey noise of ±6 per pixel). The
image is divided into a 3 × 3 grid and each object sits in its own cell (jittered inside it),
so objects never overlap. An object has four attributes:

- **shape**: circle, square, triangle, cross;
- **colour**: red, green, blue, yellow, purple, white (well separated RGB values);
- **size**: small (about 0.22 × image side, 7 px at 32) or large (about 0.31 ×, 10 px at 32);
- **position**: its grid column (left / middle / right) and row (top / middle / bottom).

Each image gets ``captions_per_image`` templated English captions. A caption is a tuple of
*facts*, and its text says exactly those facts and nothing else:

- :class:`Exists` — some object matches a description (any subset of shape, colour, size and
  position): "a small red circle", "a blue object on the left", "a cross at the top".
- :class:`Relation` — one object matching description A is left of / right of / above /
  below (strictly smaller / larger grid column or row) an object matching description B:
  "a red circle to the left of a blue square". Such a caption also carries ``Exists(A)`` and
  ``Exists(B)``, so it has three facts.
- :class:`Count` — the image holds exactly n objects: "two objects", "three objects: a red
  circle, a blue square and a white cross".

Templates: one object ("a small red circle on the left"), two objects ("a red circle and a
cross"), a relation, a count with or without one described object ("two objects including a
red circle"), and the full list of objects with their count. Captions may start with a
neutral prefix ("a picture of", "an image of", ...). Captions are lower case, no full stop.

Because most captions mention only part of a scene, many other images satisfy them too
(false negatives of the one-positive-per-caption convention). Each split therefore carries:

- ``relevance``: bool [N_img, N_cap], True iff image i satisfies *all* facts of caption j
  (complete relevance; the caption's own image is always relevant);
- ``graded_relevance``: float32 [N_img, N_cap], the fraction of caption j's facts that
  image i satisfies (1.0 exactly where ``relevance`` is True).

Both are dense, 5 bytes per (image, caption) pair: about 225 MB for the default train split
(3000 images × 15000 captions); a split may hold at most 250 million pairs.

Generation is deterministic: each split draws from its own numpy generator seeded by
``(seed, split name)``, so changing ``n_test`` leaves the train split byte-identical.
:func:`generate_split` also returns the scene descriptions and each caption's facts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.formats import DATA_FORMATS
from vsekit.errors import VsekitError, require

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
GRID = 3
SPLITS = ("train", "dev", "test")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RelationName = Literal["left of", "right of", "above", "below"]
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
PREFIXES = ("", "", "a picture of ", "an image of ", "a scene with ", "a photo showing ")
# (template, weight, minimum number of objects in the scene)
TEMPLATES = (("single", 0.35, 1), ("pair", 0.2, 2), ("relation", 0.2, 2), ("count", 0.1, 1),
             ("all", 0.15, 1))
MAX_CELLS = 250_000_000  # N_img × N_cap limit per split for the dense relevance matrices


@dataclass
class SyntheticParams:
    """Parameters of the ``synthetic`` data format (image counts are per split)."""

    seed: int = 0
    n_train: int = 3000
    n_dev: int = 500
    n_test: int = 500
    captions_per_image: int = 5
    image_size: int = 32
    max_objects: int = 3

    def validate(self, where: str) -> None:
        require(self.seed >= 0, f"{where}.seed must be non-negative, got {self.seed}")
        for name in ("captions_per_image", *(f"n_{split}" for split in SPLITS)):
            value = getattr(self, name)
            require(value >= 1, f"{where}.{name} must be at least 1, got {value}")
        for split in SPLITS:
            n = getattr(self, f"n_{split}")
            cells = n * n * self.captions_per_image
            require(cells <= MAX_CELLS,
                    f"{where}.n_{split}={n} needs a {cells:,}-cell relevance matrix, over the "
                    f"{MAX_CELLS:,} limit; lower n_{split} or captions_per_image")
        require(24 <= self.image_size <= 256,
                f"{where}.image_size must be between 24 and 256 pixels, got {self.image_size}")
        require(1 <= self.max_objects <= GRID * GRID,
                f"{where}.max_objects must be between 1 and {GRID * GRID}, got {self.max_objects}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: attributes, grid cell, and its pixel box (top-left, side in px)."""

    shape: str
    colour: str
    size: str
    column: int
    row: int
    left: int
    top: int
    extent: int


Scene = tuple[SceneObject, ...]


@dataclass(frozen=True)
class ObjectQuery:
    """A partial object description; ``None`` attributes are unconstrained."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    column: int | None = None
    row: int | None = None


@dataclass(frozen=True)
class Exists:
    """Fact: some object of the scene matches ``query``."""

    query: ObjectQuery


@dataclass(frozen=True)
class Relation:
    """Fact: an object matching ``first`` is ``relation`` an object matching ``second``."""

    first: ObjectQuery
    relation: RelationName
    second: ObjectQuery


@dataclass(frozen=True)
class Count:
    """Fact: the scene holds exactly ``n`` objects."""

    n: int


Fact = Exists | Relation | Count


@dataclass
class SyntheticSplit:
    """A generated split plus the ground truth behind it (for tests and analysis)."""

    split: RetrievalSplit
    scenes: list[Scene]
    caption_facts: list[tuple[Fact, ...]]


# --- geometry ------------------------------------------------------------------------------


def object_extents(image_size: int) -> dict[str, int]:
    """Side in px of the box a small / large object fills, never wider than a grid cell."""
    cell = int(np.diff(cell_bounds(image_size)).min())
    return {"small": round(0.22 * image_size), "large": min(round(0.31 * image_size), cell)}


def cell_bounds(image_size: int) -> np.ndarray:
    """int [GRID + 1]: pixel edges of the grid columns (and rows)."""
    return np.round(np.linspace(0, image_size, GRID + 1)).astype(np.int64)


def shape_mask(shape: str, extent: int) -> np.ndarray:
    """bool [extent, extent]: which pixels of the object's box ``shape`` covers.

    Pixel (y, x) is tested at its centre (y + 0.5, x + 0.5); the box spans [0, extent]². The
    triangle points up with its base on the bottom edge; the cross has arms a third as thick.
    """
    y, x = np.mgrid[0:extent, 0:extent] + 0.5
    half = extent / 2
    dx, dy = np.abs(x - half), np.abs(y - half)
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return np.ones((extent, extent), dtype=bool)
    if shape == "triangle":
        return dx <= y / 2
    if shape == "cross":
        arm = max(extent / 6, 0.5)
        return (dx <= arm) | (dy <= arm)
    raise ValueError(f"unknown shape {shape!r}")


# --- scenes and pixels ---------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, image_size: int, max_objects: int) -> Scene:
    """1..max_objects objects with random attributes, each in its own grid cell."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    bounds, extents = cell_bounds(image_size), object_extents(image_size)
    objects = []
    for cell in cells:
        row, column = divmod(int(cell), GRID)
        size = SIZES[rng.integers(len(SIZES))]
        extent = extents[size]
        left, top = (int(bounds[k] + rng.integers(bounds[k + 1] - bounds[k] - extent + 1))
                     for k in (column, row))
        objects.append(SceneObject(shape=SHAPES[rng.integers(len(SHAPES))],
                                   colour=COLOUR_NAMES[rng.integers(len(COLOURS))],
                                   size=size, column=column, row=row, left=left, top=top,
                                   extent=extent))
    return tuple(objects)


def render(scenes: list[Scene], image_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, H, W, 3]: grey noisy backgrounds (levels 20..60 ± 6) with the objects drawn."""
    n = len(scenes)
    base = rng.integers(20, 61, size=(n, 1, 1, 1))
    noise = rng.integers(-6, 7, size=(n, image_size, image_size, 1))
    pixels = np.repeat(np.clip(base + noise, 0, 255).astype(np.uint8), 3, axis=3)
    masks: dict[tuple[str, int], np.ndarray] = {}
    for i, scene in enumerate(scenes):
        for obj in scene:
            key = (obj.shape, obj.extent)
            if key not in masks:
                masks[key] = shape_mask(*key)
            box = pixels[i, obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent]
            box[masks[key]] = COLOURS[obj.colour]
    return pixels


# --- captions ------------------------------------------------------------------------------


def describe(query: ObjectQuery) -> str:
    """The noun phrase for a query, e.g. "a small red circle in the top left corner"."""
    words = [w for w in (query.size, query.colour, query.shape or "object") if w]
    phrase = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
    place = position_phrase(query.column, query.row)
    return f"{phrase} {place}" if place else phrase


def position_phrase(column: int | None, row: int | None) -> str:
    """"on the left", "at the bottom", "in the top right corner", "in the centre" or ""."""
    if column == 1 and row == 1:
        return "in the centre"
    horizontal = {0: "left", 2: "right"}.get(column)
    vertical = {0: "top", 2: "bottom"}.get(row)
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if horizontal:
        return f"on the {horizontal}"
    return f"at the {vertical}" if vertical else ""


def _positions(obj: SceneObject) -> list[tuple[int | None, int | None]]:
    """The (column, row) constraints a caption may state for ``obj`` (each has a phrase)."""
    if (obj.column, obj.row) == (1, 1):
        return [(1, 1)]
    options = [(obj.column, None)] if obj.column != 1 else []
    options += [(None, obj.row)] if obj.row != 1 else []
    options += [(obj.column, obj.row)] if obj.column != 1 and obj.row != 1 else []
    return options


def sample_query(obj: SceneObject, rng: np.random.Generator, *, full: bool = False,
                 place: bool = False) -> ObjectQuery:
    """A random partial description true of ``obj`` (colour and shape always when ``full``)."""
    colour = full or rng.random() < 0.85
    shape = full or rng.random() < 0.85
    if not (colour or shape):
        colour, shape = (True, False) if rng.random() < 0.5 else (False, True)
    column, row = None, None
    if place and rng.random() < 0.35:
        options = _positions(obj)
        column, row = options[rng.integers(len(options))]
    return ObjectQuery(shape=obj.shape if shape else None, colour=obj.colour if colour else None,
                       size=obj.size if rng.random() < 0.35 else None, column=column, row=row)


def _pick(rng: np.random.Generator, items: tuple | list) -> Any:
    return items[rng.integers(len(items))]


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _objects_word(n: int) -> str:
    return "a single object" if n == 1 else f"{COUNT_WORDS[n]} objects"


def sample_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, tuple[Fact, ...]]:
    """One caption (text, facts) true of ``scene``, from a random template."""
    allowed = [(name, weight) for name, weight, need in TEMPLATES if len(scene) >= need]
    weights = np.array([w for _, w in allowed])
    template = allowed[rng.choice(len(allowed), p=weights / weights.sum())][0]
    n = len(scene)
    if template == "single":
        query = sample_query(_pick(rng, scene), rng, place=True)
        text, facts = describe(query), (Exists(query),)
    elif template == "pair":
        a, b = (sample_query(scene[k], rng) for k in rng.choice(n, size=2, replace=False))
        text, facts = f"{describe(a)} and {describe(b)}", (Exists(a), Exists(b))
    elif template == "relation":
        i, j = (scene[k] for k in rng.choice(n, size=2, replace=False))
        relations = [name for name, holds in (("left of", i.column < j.column),
                                              ("right of", i.column > j.column),
                                              ("above", i.row < j.row),
                                              ("below", i.row > j.row)) if holds]
        relation = _pick(rng, relations)
        a, b = sample_query(i, rng), sample_query(j, rng)
        text = f"{describe(a)} {_pick(rng, RELATION_WORDS[relation])} {describe(b)}"
        facts = (Exists(a), Exists(b), Relation(a, relation, b))
    elif template == "count":
        if rng.random() < 0.25:
            text, facts = _objects_word(n), (Count(n),)
        else:
            query = sample_query(_pick(rng, scene), rng)
            joiner = ": " if n == 1 else " including "  # not "a single object including"
            text = f"{_objects_word(n)}{joiner}{describe(query)}"
            facts = (Count(n), Exists(query))
    else:  # "all"
        queries = [sample_query(obj, rng, full=True) for obj in scene]
        text = f"{_objects_word(n)}: {_join([describe(q) for q in queries])}"
        facts = (Count(n), *(Exists(q) for q in dict.fromkeys(queries)))
    return _pick(rng, PREFIXES) + text, facts


def sample_captions(scene: Scene, k: int, rng: np.random.Generator
                    ) -> list[tuple[str, tuple[Fact, ...]]]:
    """``k`` captions of ``scene``, distinct texts where a few redraws find them."""
    captions: list[tuple[str, tuple[Fact, ...]]] = []
    seen: set[str] = set()
    for _ in range(k):
        for _attempt in range(8):
            caption = sample_caption(scene, rng)
            if caption[0] not in seen:
                break
        seen.add(caption[0])
        captions.append(caption)
    return captions


# --- relevance -----------------------------------------------------------------------------

_ATTRIBUTES = ("shape", "colour", "size", "column", "row")
_VOCAB = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZES}


def _encode(value: str | int, attribute: str) -> int:
    return _VOCAB[attribute].index(value) if attribute in _VOCAB else int(value)


def scene_table(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """Scenes as arrays: attribute codes int64 [N, K, 5] (-1 = no object) and counts [N].

    The last axis holds shape, colour, size (vocabulary indices), column and row.
    """
    k = max(len(scene) for scene in scenes)
    table = np.full((len(scenes), k, len(_ATTRIBUTES)), -1, dtype=np.int64)
    for i, scene in enumerate(scenes):
        for o, obj in enumerate(scene):
            table[i, o] = [_encode(getattr(obj, a), a) for a in _ATTRIBUTES]
    return table, np.array([len(scene) for scene in scenes], dtype=np.int64)


def query_matches(query: ObjectQuery, table: np.ndarray) -> np.ndarray:
    """bool [N, K]: which objects of each scene match ``query`` (table from scene_table)."""
    match = table[..., 0] >= 0
    for a, attribute in enumerate(_ATTRIBUTES):
        value = getattr(query, attribute)
        if value is not None:
            match &= table[..., a] == _encode(value, attribute)
    return match


def fact_holds(fact: Fact, table: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """bool [N]: which scenes satisfy ``fact``."""
    if isinstance(fact, Count):
        return counts == fact.n
    if isinstance(fact, Exists):
        return query_matches(fact.query, table).any(axis=1)
    axis = 3 if fact.relation in ("left of", "right of") else 4
    position = table[..., axis]
    if fact.relation in ("left of", "above"):
        order = position[:, :, None] < position[:, None, :]
    else:
        order = position[:, :, None] > position[:, None, :]
    first, second = query_matches(fact.first, table), query_matches(fact.second, table)
    return (first[:, :, None] & second[:, None, :] & order).any(axis=(1, 2))


def relevance_matrices(scenes: list[Scene], caption_facts: list[tuple[Fact, ...]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(relevance bool [N_img, N_cap], graded_relevance float32 [N_img, N_cap]).

    Each distinct fact is evaluated once over all scenes; a caption's graded relevance is the
    fraction of its facts an image satisfies, and it is relevant when that fraction is 1.
    """
    table, counts = scene_table(scenes)
    index: dict[Fact, int] = {}
    for facts in caption_facts:
        for fact in facts:
            index.setdefault(fact, len(index))
    # Row len(index) is all False: the padding slot of captions with fewer facts.
    holds = np.zeros((len(index) + 1, len(scenes)), dtype=bool)
    for fact, row in index.items():
        holds[row] = fact_holds(fact, table, counts)
    n_facts = np.array([len(facts) for facts in caption_facts])
    slots = np.full((len(caption_facts), n_facts.max()), len(index), dtype=np.int64)
    for j, facts in enumerate(caption_facts):
        slots[j, :len(facts)] = [index[fact] for fact in facts]
    satisfied = np.zeros((len(caption_facts), len(scenes)), dtype=np.uint8)
    for slot in slots.T:
        satisfied += holds[slot]
    satisfied = np.ascontiguousarray(satisfied.T)
    graded = np.divide(satisfied, n_facts.astype(np.float32), dtype=np.float32)
    return satisfied == n_facts, graded


# --- splits --------------------------------------------------------------------------------


def split_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of split ``name``: independent of every other split's size."""
    key = zlib.crc32(name.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def generate_split(params: SyntheticParams, name: str) -> SyntheticSplit:
    """Generate split ``name`` ("train", "dev" or "test") with ``params.n_<name>`` images."""
    if name not in SPLITS:
        raise VsekitError(f"unknown synthetic split {name!r}; use one of {', '.join(SPLITS)}")
    params.validate("synthetic")
    rng = split_rng(params.seed, name)
    n_images = getattr(params, f"n_{name}")
    scenes = [sample_scene(rng, params.image_size, params.max_objects) for _ in range(n_images)]
    pixels = render(scenes, params.image_size, rng)
    per_image = params.captions_per_image
    captions = [c for scene in scenes for c in sample_captions(scene, per_image, rng)]
    caption_facts = [facts for _, facts in captions]
    relevance, graded = relevance_matrices(scenes, caption_facts)
    split = RetrievalSplit(
        name=name,
        images=ImageStore("pixels", pixels=pixels),
        captions=[text for text, _ in captions],
        caption_to_image=np.arange(len(captions)) // per_image,
        image_ids=[f"synthetic-{name}-{i:06d}" for i in range(n_images)],
        caption_features=None,
        relevance=relevance,
        graded_relevance=graded,
    )
    return SyntheticSplit(split=split, scenes=scenes, caption_facts=caption_facts)


@DATA_FORMATS.register("synthetic", SyntheticParams)
def load_synthetic(params: SyntheticParams, **_context: Any) -> dict[str, RetrievalSplit]:
    """Built-in synthetic scenes with partial captions and known complete relevance."""
    return {name: generate_split(params, name).split for name in SPLITS}
