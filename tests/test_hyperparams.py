"""``ckpt_index.hyperparams``: flattening configs to typed parameters, their bounds, the Hydra
override names, merging sources and the content digest."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ckpt_index.hyperparams import (
    MAX_DEPTH,
    MAX_PARAM_NAME,
    MAX_PARAMS,
    MAX_VALUE_BYTES,
    as_rows,
    decode_value,
    digest,
    encode_value,
    flatten,
    merge,
    override_names,
    to_object,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, ("int", 3.0, "3")),
        (-7, ("int", -7.0, "-7")),
        (0.01, ("float", 0.01, "0.01")),
        (1e-06, ("float", 1e-06, "1e-06")),
        (True, ("bool", None, "true")),
        (False, ("bool", None, "false")),
        (None, ("null", None, None)),
        ("adam", ("str", None, "adam")),
        ("", ("str", None, "")),
        ([1, 2.5, "a", None, True], ("json", None, '[1,2.5,"a",null,true]')),
        ((1, 2), ("json", None, "[1,2]")),
        ({}, ("json", None, "{}")),
        ([{"a": 1}], ("json", None, '[{"a":1}]')),
        (float("nan"), ("float", None, "nan")),
        (float("inf"), ("float", None, "inf")),
        (float("-inf"), ("float", None, "-inf")),
        ([float("nan")], ("json", None, '["nan"]')),
        (b"\x00ab", ("str", None, None)),  # text checked below
    ],
)
def test_encode_value_types(value: Any, expected: tuple[Any, ...]) -> None:
    value_type, numeric, text = encode_value(value)
    assert (value_type, numeric) == expected[:2]
    if expected[2] is not None or value_type == "null":
        assert text == expected[2]
    else:
        assert isinstance(text, str) and "\x00" not in text


def test_bools_are_not_ints_and_ints_are_numbers() -> None:
    params, _ = flatten({"flag": True, "one": 1, "f": 1.0}, "sidecar")
    assert params["flag"][1:4] == ("bool", None, "true")
    assert params["one"][1:4] == ("int", 1.0, "1")
    assert params["f"][1:4] == ("float", 1.0, "1.0")
    assert decode_value(*params["flag"][1:4]) is True
    assert decode_value(*params["one"][1:4]) == 1 and type(decode_value(*params["one"][1:4])) is int


def test_huge_ints_are_text_and_large_ints_keep_their_digits() -> None:
    huge = 10**400
    assert encode_value(huge)[0:2] == ("str", None)
    assert encode_value(huge)[2].startswith("an integer of 1329 bits")
    big = 2**63 + 1
    value_type, numeric, text = encode_value(big)
    assert value_type == "int" and text == str(big) and numeric == float(big)
    assert decode_value(value_type, numeric, text) == big  # exact, from the text


def test_decode_round_trips() -> None:
    config = {"i": 5, "f": 0.25, "b": False, "s": "x", "n": None, "l": [1, [2]], "e": {}}
    params, warnings = flatten(config, "sidecar")
    assert warnings == []
    assert to_object(params.values()) == {
        "b": False,
        "e": {},
        "f": 0.25,
        "i": 5,
        "l": [1, [2]],
        "n": None,
        "s": "x",
    }
    nan = encode_value(float("nan"))
    assert decode_value(*nan) == "nan"  # JSON output cannot hold NaN: the text


def test_flatten_dotted_names_source_and_order() -> None:
    params, warnings = flatten(
        {"model": {"optimizer": {"lr": 0.01}, "name": "dbnet"}, "seed": 1}, "hydra"
    )
    assert warnings == []
    assert list(params) == ["model.optimizer.lr", "model.name", "seed"]  # the config's order
    assert params["model.optimizer.lr"] == (
        "model.optimizer.lr",
        "float",
        0.01,
        "0.01",
        "hydra",
        False,
    )
    assert [p[0] for p in as_rows(params)] == ["model.name", "model.optimizer.lr", "seed"]


def test_flatten_of_what_is_not_a_mapping_is_empty() -> None:
    for config in (None, 3, "text", [1, 2]):
        assert flatten(config, "sidecar") == ({}, [])


def test_keys_that_are_not_strings_are_named_by_their_text() -> None:
    params, warnings = flatten({1: "a", None: "b", 2.5: "c", False: "d", (1, 2): "e"}, "wandb")
    assert warnings == []
    assert set(params) == {"1", "null", "2.5", "false", "a tuple of 2 items"}
    assert params["null"][3] == "b" and params["2.5"][3] == "c"


def test_skip_private_keys_at_every_level() -> None:
    config = {"_wandb": {"x": 1}, "a": {"_private": 2, "b": 3}}
    params, _ = flatten(config, "wandb", skip_private=True)
    assert set(params) == {"a.b"}
    assert set(flatten(config, "wandb")[0]) == {"_wandb.x", "a._private", "a.b"}


def test_overridden_names_are_marked() -> None:
    params, _ = flatten({"model": {"lr": 0.1, "wd": 0}}, "sidecar", overridden=["model.lr"])
    assert params["model.lr"][5] is True and params["model.wd"][5] is False


def test_bound_on_the_number_of_params() -> None:
    config = {f"p{i:04d}": i for i in range(MAX_PARAMS + 50)}
    params, warnings = flatten(config, "sidecar")
    assert len(params) == MAX_PARAMS
    assert "p1999" in params and "p2000" not in params  # the first ones, in config order
    assert warnings == [
        f"sidecar hyperparameters: more than {MAX_PARAMS} parameters: dropped 'p2000' and 49 more"
    ]


def test_bound_on_name_length() -> None:
    long_key = "k" * (MAX_PARAM_NAME + 1)
    params, warnings = flatten({long_key: 1, "ok": 2, "a": {"b" * MAX_PARAM_NAME: 3}}, "hydra")
    assert set(params) == {"ok"}  # "a.bbb..." is 202 characters too
    assert len(warnings) == 1
    assert f"a name longer than {MAX_PARAM_NAME} characters" in warnings[0]
    assert "and 1 more" in warnings[0]
    exact = "k" * MAX_PARAM_NAME
    assert set(flatten({exact: 1}, "hydra")[0]) == {exact}


def test_bound_on_value_bytes() -> None:
    fits = "x" * MAX_VALUE_BYTES
    too_long = "x" * (MAX_VALUE_BYTES + 1)
    wide = "é" * (MAX_VALUE_BYTES // 2 + 1)  # fewer characters than bytes
    params, warnings = flatten(
        {"fits": fits, "long": too_long, "wide": wide, "list": list(range(5000))}, "sidecar"
    )
    assert set(params) == {"fits"}
    assert warnings == [
        f"sidecar hyperparameters: a value longer than {MAX_VALUE_BYTES} bytes: dropped 'long' "
        "and 2 more"
    ]


def test_bound_on_depth_keeps_the_rest_as_one_json_value() -> None:
    config: dict[str, Any] = {"leaf": 1}
    for level in reversed(range(MAX_DEPTH + 4)):
        config = {f"l{level}": config}
    params, warnings = flatten(config, "sidecar")
    assert warnings == []
    (name,) = params
    assert name.count(".") == MAX_DEPTH - 1  # 16 names deep
    assert params[name][1] == "json"
    assert decode_value(*params[name][1:4]) == {"l16": {"l17": {"l18": {"l19": {"leaf": 1}}}}}


def test_empty_mappings_are_json_values() -> None:
    params, _ = flatten({"a": {}, "b": {"c": {}}}, "sidecar")
    assert params["a"][1:4] == ("json", None, "{}")
    assert params["b.c"][1:4] == ("json", None, "{}")


def test_a_name_both_dotted_and_nested_keeps_the_first() -> None:
    params, _ = flatten({"a.b": 1, "a": {"b": 2}}, "sidecar")
    assert params["a.b"][3] == "1"


def test_text_that_cannot_be_stored_is_cleaned() -> None:
    params, _ = flatten({"bad\x00name": "nul\x00 and \udc80 surrogate"}, "sidecar")
    ((name, param),) = params.items()
    assert "\x00" not in name
    assert "\x00" not in param[3] and "\udc80" not in param[3]
    param[3].encode("utf-8")


def test_nan_and_infinities_are_not_numbers() -> None:
    params, _ = flatten({"a": math.nan, "b": math.inf, "c": -math.inf}, "sidecar")
    assert [params[k][2] for k in "abc"] == [None, None, None]
    assert [params[k][3] for k in "abc"] == ["nan", "inf", "-inf"]


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["model.lr=0.1"], ["model.lr"]),
        (["+model.extra=1"], ["model.extra"]),
        (["++trainer.max_epochs=3"], ["trainer.max_epochs"]),
        (["~model.dropout"], []),
        (["~model.dropout=0.1"], []),
        (["db@backup=mysql"], ["db"]),
        (["model.lr = 0.1"], ["model.lr"]),
        (["no_equals", 3, None], []),
        (["=1"], []),
        ([f"{'k' * (MAX_PARAM_NAME + 1)}=1"], []),
        ("model.lr=0.1", []),  # not a list
        (None, []),
        (["a=1", "b=x=y", "+c=[1,2]"], ["a", "b", "c"]),
    ],
)
def test_override_names(overrides: Any, names: list[str]) -> None:
    assert override_names(overrides) == names


def test_merge_first_layer_wins_and_override_marks_stay() -> None:
    sidecar, _ = flatten({"lr": 0.1, "bs": 8}, "sidecar")
    hydra, _ = flatten({"lr": 0.5, "wd": 0.0}, "hydra", overridden=["lr", "wd"])
    merged = merge(sidecar, hydra)
    assert merged["lr"] == ("lr", "float", 0.1, "0.1", "sidecar", True)
    assert merged["bs"][4:] == ("sidecar", False)
    assert merged["wd"][4:] == ("hydra", True)


def test_digest_is_by_content_not_order() -> None:
    a, _ = flatten({"x": 1, "y": {"z": "s"}}, "sidecar")
    b, _ = flatten({"y": {"z": "s"}, "x": 1}, "sidecar")
    assert digest(a.values()) == digest(b.values())
    assert len(digest(a.values())) == 32
    for changed in (
        {"x": 1.0, "y": {"z": "s"}},  # a float, not an int
        {"x": True, "y": {"z": "s"}},  # a bool
        {"x": "1", "y": {"z": "s"}},  # a string
        {"x": 1, "y": {"z": "t"}},
    ):
        c, _ = flatten(changed, "sidecar")
        assert digest(c.values()) != digest(a.values()), changed
    hydra, _ = flatten({"x": 1, "y": {"z": "s"}}, "hydra")
    assert digest(hydra.values()) != digest(a.values())  # the source is part of the content
    marked, _ = flatten({"x": 1, "y": {"z": "s"}}, "sidecar", overridden=["x"])
    assert digest(marked.values()) != digest(a.values())
