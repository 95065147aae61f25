"""The synthetic scene dataset: determinism, layout, drawn pixels, caption text and relevance.

Relevance is re-derived here with plain loops over scenes and facts; caption texts are parsed
back into facts by a small grammar written in this file.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.data import synthetic as syn
from vsekit.data.formats import DATA_FORMATS
from vsekit.errors import VsekitError

SMALL = {"n_train": 12, "n_dev": 6, "n_test": 40}


def split(name: str = "test", **overrides: int) -> syn.SyntheticSplit:
    return syn.generate_split(syn.SyntheticParams(**{**SMALL, **overrides}), name)


# --- independent reference -----------------------------------------------------------------


def ref_matches(obj: syn.SceneObject, query: syn.ObjectQuery) -> bool:
    return all(getattr(query, a) in (None, getattr(obj, a))
               for a in ("shape", "colour", "size", "column", "row"))


def ref_holds(scene: syn.Scene, fact: syn.Fact) -> bool:
    if isinstance(fact, syn.Count):
        return len(scene) == fact.n
    if isinstance(fact, syn.Exists):
        return any(ref_matches(obj, fact.query) for obj in scene)
    for a in scene:
        for b in scene:
            ordered = {"left of": a.column < b.column, "right of": a.column > b.column,
                       "above": a.row < b.row, "below": a.row > b.row}[fact.relation]
            if ordered and ref_matches(a, fact.first) and ref_matches(b, fact.second):
                return True
    return False


def ref_graded(scenes: list[syn.Scene], caption_facts: list[tuple[syn.Fact, ...]]) -> np.ndarray:
    out = np.zeros((len(scenes), len(caption_facts)))
    for i, scene in enumerate(scenes):
        for j, facts in enumerate(caption_facts):
            out[i, j] = sum(ref_holds(scene, f) for f in facts) / len(facts)
    return out


# --- caption grammar (text → facts) --------------------------------------------------------

POSITIONS = {"on the left": (0, None), "on the right": (2, None), "at the top": (None, 0),
             "at the bottom": (None, 2), "in the centre": (1, 1),
             "in the top left corner": (0, 0), "in the top right corner": (2, 0),
             "in the bottom left corner": (0, 2), "in the bottom right corner": (2, 2)}
RELATIONS = {"left of": "left of", "to the left of": "left of", "right of": "right of",
             "to the right of": "right of", "above": "above", "below": "below",
             "under": "below"}
NUMBERS = {w: n for n, w in enumerate(["zero", "one", "two", "three", "four", "five", "six",
                                       "seven", "eight", "nine"])}
NP = (r"an? (?:(small|large) )?(?:(red|green|blue|yellow|purple|white) )?"
      r"(circle|square|triangle|cross|object)(?: (" + "|".join(POSITIONS) + "))?")
PREFIX = r"(?:a picture of |an image of |a scene with |a photo showing )?"
OBJECTS = r"(a single object|(?:two|three|four|five|six|seven|eight|nine) objects)"


def parse_np(text: str) -> syn.ObjectQuery:
    m = re.fullmatch(NP, text)
    assert m, f"not a noun phrase: {text!r}"
    size, colour, shape, place = m.groups()
    column, row = POSITIONS[place] if place else (None, None)
    return syn.ObjectQuery(shape=None if shape == "object" else shape, colour=colour, size=size,
                           column=column, row=row)


def parse_count(text: str) -> syn.Count:
    return syn.Count(1 if text == "a single object" else NUMBERS[text.split()[0]])


def parse_caption(text: str) -> set[syn.Fact]:
    """The facts a caption states, read from its words alone."""
    body = re.fullmatch(PREFIX + "(.*)", text).group(1)
    relation = "|".join(sorted(RELATIONS, key=len, reverse=True))
    if m := re.fullmatch(f"({NP}) ({relation}) ({NP})", body):
        a, b = parse_np(m.group(1)), parse_np(m.group(7))
        assert a.column is None and b.column is None and a.row is None and b.row is None
        return {syn.Exists(a), syn.Exists(b), syn.Relation(a, RELATIONS[m.group(6)], b)}
    if m := re.fullmatch(f"{OBJECTS}: (.*)", body):
        items = re.split(r", | and ", m.group(2))
        return {parse_count(m.group(1)), *(syn.Exists(parse_np(x)) for x in items)}
    if m := re.fullmatch(f"{OBJECTS}(?: including (.*))?", body):
        rest = {syn.Exists(parse_np(m.group(2)))} if m.group(2) else set()
        return {parse_count(m.group(1)), *rest}
    if m := re.fullmatch(f"({NP}) and ({NP})", body):
        return {syn.Exists(parse_np(m.group(1))), syn.Exists(parse_np(m.group(6)))}
    return {syn.Exists(parse_np(body))}


# --- tests ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_split() -> None:
    a, b = split(seed=3), split(seed=3)
    assert a.split.images.pixels.tobytes() == b.split.images.pixels.tobytes()
    assert a.split.captions == b.split.captions
    assert a.caption_facts == b.caption_facts
    assert np.array_equal(a.split.relevance, b.split.relevance)
    assert a.split.graded_relevance.tobytes() == b.split.graded_relevance.tobytes()


def test_different_seed_or_split_differs() -> None:
    a, b, train = split(seed=3), split(seed=4), split("train", seed=3, n_train=40)
    for other in (b, train):
        assert not np.array_equal(a.split.images.pixels, other.split.images.pixels)
        assert a.split.captions != other.split.captions


def test_split_does_not_depend_on_other_split_sizes() -> None:
    a = split("train", n_test=5, n_dev=3)
    b = split("train", n_test=70, n_dev=9)
    assert a.split.images.pixels.tobytes() == b.split.images.pixels.tobytes()
    assert a.split.captions == b.split.captions


@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes_dtypes_and_ids(image_size: int) -> None:
    s = split(image_size=image_size, captions_per_image=4).split
    assert s.images.kind == "pixels"
    assert s.images.pixels.shape == (40, image_size, image_size, 3)
    assert s.images.pixels.dtype == np.uint8
    assert len(s.captions) == 160 and all(isinstance(c, str) and c for c in s.captions)
    assert s.caption_to_image.dtype == np.int64
    assert s.caption_to_image.tolist() == [j // 4 for j in range(160)]
    assert s.image_ids[0] == "synthetic-test-000000" and s.image_ids[39] == "synthetic-test-000039"
    assert s.relevance.dtype == np.bool_ and s.relevance.shape == (40, 160)
    assert s.graded_relevance.dtype == np.float32 and s.graded_relevance.shape == (40, 160)
    assert s.caption_features is None


def test_registered_format_builds_three_splits() -> None:
    name, params = DATA_FORMATS.parse({"format": "synthetic", "n_train": 8, "n_dev": 4,
                                       "n_test": 5, "captions_per_image": 2}, "data")
    splits = DATA_FORMATS.build(name, params)
    assert {k: v.n_images for k, v in splits.items()} == {"train": 8, "dev": 4, "test": 5}
    assert {k: v.name for k, v in splits.items()} == {k: k for k in splits}
    assert splits["dev"].n_captions == 8


def test_own_image_is_relevant_and_relevance_is_full_grade() -> None:
    s = split(max_objects=9).split
    own = s.caption_to_image, np.arange(s.n_captions)
    assert s.relevance[own].all()
    assert (s.graded_relevance[own] == 1.0).all()
    assert np.array_equal(s.relevance, s.graded_relevance == 1.0)
    assert ((s.graded_relevance >= 0) & (s.graded_relevance <= 1)).all()


@pytest.mark.parametrize(("seed", "max_objects"), [(0, 3), (5, 9), (11, 1), (2, 2)])
def test_relevance_matches_slow_reference(seed: int, max_objects: int) -> None:
    out = split(seed=seed, max_objects=max_objects, n_test=30)
    expected = ref_graded(out.scenes, out.caption_facts)
    assert np.array_equal(out.split.relevance, expected == 1.0)
    np.testing.assert_allclose(out.split.graded_relevance, expected, rtol=0, atol=1e-6)


QUERIES = st.builds(syn.ObjectQuery, shape=st.none() | st.sampled_from(syn.SHAPES),
                    colour=st.none() | st.sampled_from(list(syn.COLOURS)),
                    size=st.none() | st.sampled_from(syn.SIZES),
                    column=st.none() | st.integers(0, 2), row=st.none() | st.integers(0, 2))
FACTS = st.one_of(
    st.builds(syn.Exists, QUERIES),
    st.builds(syn.Count, st.integers(0, 10)),
    st.builds(syn.Relation, QUERIES, st.sampled_from(["left of", "right of", "above", "below"]),
              QUERIES),
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), facts=st.lists(st.lists(FACTS, min_size=1, max_size=4)
                                                  .map(tuple), min_size=1, max_size=6))
def test_relevance_of_arbitrary_facts_matches_reference(seed: int,
                                                        facts: list[tuple[syn.Fact, ...]]) -> None:
    rng = np.random.default_rng(seed)
    scenes = [syn.sample_scene(rng, 32, int(rng.integers(1, 10))) for _ in range(25)]
    relevance, graded = syn.relevance_matrices(scenes, facts)
    expected = ref_graded(scenes, facts)
    assert np.array_equal(relevance, expected == 1.0)
    np.testing.assert_allclose(graded, expected, rtol=0, atol=1e-6)


def test_caption_text_states_exactly_its_facts() -> None:
    for seed, max_objects in [(0, 3), (1, 9), (4, 1)]:
        out = split(seed=seed, max_objects=max_objects, n_test=60)
        for text, facts in zip(out.split.captions, out.caption_facts, strict=True):
            assert parse_caption(text) == set(facts), text


def test_partial_captions_create_false_negatives() -> None:
    s = syn.generate_split(syn.SyntheticParams(), "test").split
    assert s.n_images == 500
    relevant_per_caption = s.relevance.sum(axis=0)
    assert relevant_per_caption.mean() > 1
    assert (relevant_per_caption > 1).mean() > 0.5
    partial = (s.graded_relevance > 0) & (s.graded_relevance < 1)
    assert partial.any(axis=0).mean() > 0.1  # many captions are half-true of some image


def test_captions_of_one_image_are_varied() -> None:
    s = split(n_test=50, max_objects=3).split
    distinct = [len(set(s.captions[i * 5:(i + 1) * 5])) for i in range(50)]
    assert np.mean(distinct) > 4


@pytest.mark.parametrize("image_size", [32, 64])
def test_objects_are_drawn_in_their_colour_inside_their_cell(image_size: int) -> None:
    out = split(image_size=image_size, max_objects=9, n_test=30)
    pixels = out.split.images.pixels
    edges = [round(k * image_size / 3) for k in range(4)]
    for i, scene in enumerate(out.scenes):
        covered = np.zeros((image_size, image_size), dtype=bool)
        for obj in scene:
            cy, cx = obj.top + obj.extent // 2, obj.left + obj.extent // 2
            assert tuple(pixels[i, cy, cx]) == syn.COLOURS[obj.colour]
            assert edges[obj.column] <= obj.left and obj.left + obj.extent <= edges[obj.column + 1]
            assert edges[obj.row] <= obj.top and obj.top + obj.extent <= edges[obj.row + 1]
            box = np.s_[obj.top:obj.top + obj.extent, obj.left:obj.left + obj.extent]
            assert not covered[box].any(), "objects overlap"
            covered[box] = True
        background = pixels[i][~covered]
        assert (background[:, 0] == background[:, 1]).all()
        assert (background[:, 1] == background[:, 2]).all()
        assert background.max() <= 66


def test_sizes_are_large_enough_to_see() -> None:
    for image_size in (24, 32, 64, 256):
        ext = syn.object_extents(image_size)
        assert 5 <= ext["small"] < ext["large"] <= image_size // 3 + 1
    assert syn.object_extents(32)["large"] >= 8


def test_colours_are_well_separated() -> None:
    rgb = np.array(list(syn.COLOURS.values()), dtype=float)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(distances) > 100
    assert (rgb.max(axis=1) > 150).all()  # every colour stands out from the dark background


def cross(o: tuple[float, float], a: tuple[float, float], p: tuple[float, float]) -> float:
    """z of (a - o) × (p - o): which side of the line o→a the point p lies on."""
    return (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0])


def ref_mask(shape: str, extent: int) -> np.ndarray:
    half = extent / 2
    out = np.zeros((extent, extent), dtype=bool)
    for y in range(extent):
        for x in range(extent):
            px, py = x + 0.5, y + 0.5
            if shape == "circle":
                inside = math.hypot(px - half, py - half) <= half
            elif shape == "square":
                inside = True
            elif shape == "triangle":  # apex (half, 0), base corners (0, extent), (extent, extent)
                corners = [(half, 0.0), (0.0, float(extent)), (float(extent), float(extent))]
                sides = [cross(corners[k], corners[(k + 1) % 3], (px, py)) for k in range(3)]
                inside = all(side <= 0 for side in sides) or all(side >= 0 for side in sides)
            else:
                thick = max(extent / 3, 1.0)
                inside = abs(px - half) <= thick / 2 or abs(py - half) <= thick / 2
            out[y, x] = inside
    return out


@pytest.mark.parametrize("extent", [5, 6, 7, 10, 14, 20])
def test_shape_masks_match_reference_and_differ(extent: int) -> None:
    masks = {shape: syn.shape_mask(shape, extent) for shape in syn.SHAPES}
    for shape, mask in masks.items():
        assert mask.dtype == np.bool_ and mask.shape == (extent, extent)
        assert np.array_equal(mask, ref_mask(shape, extent)), shape
        assert mask[extent // 2, extent // 2]
        assert np.array_equal(mask, mask[:, ::-1])
    for a, b in itertools.combinations(syn.SHAPES, 2):
        assert (masks[a] != masks[b]).sum() >= 3, (a, b)


def test_drawn_pixels_follow_the_shape_mask() -> None:
    out = split(n_test=20)
    for i, scene in enumerate(out.scenes):
        for obj in scene:
            box = out.split.images.pixels[i, obj.top:obj.top + obj.extent,
                                          obj.left:obj.left + obj.extent]
            painted = (box == syn.COLOURS[obj.colour]).all(axis=-1)
            assert np.array_equal(painted, ref_mask(obj.shape, obj.extent))


@pytest.mark.parametrize("params", [
    {"n_train": 0}, {"n_dev": -1}, {"n_test": 0}, {"captions_per_image": 0}, {"seed": -1},
    {"image_size": 16}, {"image_size": 512}, {"max_objects": 0}, {"max_objects": 10},
    {"n_train": 100_000}, {"n_train": "many"}, {"colours": 3},
])
def test_bad_params_raise_one_line_error(params: dict) -> None:
    with pytest.raises(VsekitError) as info:
        DATA_FORMATS.parse({"format": "synthetic", **params}, "data")
    assert "\n" not in str(info.value)


def test_unknown_split_name_is_an_error() -> None:
    with pytest.raises(VsekitError, match="unknown synthetic split"):
        syn.generate_split(syn.SyntheticParams(), "val")
