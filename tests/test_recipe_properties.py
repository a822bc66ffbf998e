"""No input makes the recipe loader or the --set parser raise anything but a RecipeError of one line per problem."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from retail_vision.errors import RecipeError
from retail_vision.recipe import Recipe, apply_override

SECTIONS = ["name", "data", "model", "augment", "train", "output", "export"]
KEYS = SECTIONS + ["source", "validation", "backbone", "weights", "epochs", "head", "fine_tune", "unfreeze",
                   "batch_size", "learning_rate", "batchnorm", "flip", "tflite", "cache_features"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)


def assert_one_line_per_problem(error):
    """One line; or a header 'N problems:' followed by N indented lines, one per problem."""
    lines = str(error).split("\n")  # not splitlines(): an echoed key may hold \x1e or \x85
    assert lines and all(line.strip() for line in lines)
    if len(lines) > 1:
        assert lines[0].endswith(f"{len(lines) - 1} problems:"), lines
        assert all(line.startswith("  ") for line in lines[1:])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_any_mapping_loads_or_fails_with_one_line_per_problem(raw):
    try:
        Recipe.from_dict(raw, "/base")
    except RecipeError as error:
        assert_one_line_per_problem(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
@example("[=")  # once escaped as an IndexError: '[' looked like a pydantic union-branch tag
@example("0\n0=")  # a line break in a key: echoed escaped, so the error stays one line
@example("0\x1e0=")  # a record separator, which str.splitlines() would split at
def test_any_override_applies_or_fails_with_one_line_per_problem(text):
    raw = {"data": {"source": "x"}, "train": {"head": {"epochs": 1}}}
    try:
        apply_override(raw, text)
        Recipe.from_dict(raw, "/base")
    except RecipeError as error:
        assert_one_line_per_problem(error)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_yaml_text_loads_or_fails_with_one_line_per_problem(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("r") / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        Recipe.from_yaml(str(path))
    except RecipeError as error:
        assert_one_line_per_problem(error)
