import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archselect.arch import NB201_OPS, Architecture, load_architecture, parse_nb201
from archselect.errors import UserError

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"

ops = st.sampled_from(NB201_OPS)


def nb201_string(choice):
    it = iter(choice)
    return "+".join("|" + "|".join(f"{next(it)}~{j}" for j in range(i)) + "|" for i in range(1, 4))


@given(st.lists(ops, min_size=6, max_size=6))
def test_nb201_string_round_trip(choice):
    text = nb201_string(choice)
    arch = parse_nb201(text)
    assert arch.to_nb201_string() == text
    assert Architecture.from_json(arch.to_json()) == arch
    assert [e.op for e in arch.cell("cell").edges] == choice


def test_edges_are_canonical_and_json_is_plain():
    arch = parse_nb201(BEST)
    assert [(e.src, e.dst) for e in arch.cell("cell").edges] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    d = json.loads(arch.to_json())
    assert d["space"] == "nb201" and d["text"] == BEST


def test_inputs_in_any_order_are_accepted_and_canonicalised():
    swapped = "|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert parse_nb201(swapped).to_nb201_string() == BEST


@pytest.mark.parametrize("text, words", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "3 node groups"),
    ("|conv_7x7~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "unknown"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "node 1 cannot"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "twice"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "needs 2 inputs"),
    ("|nor_conv_3x3|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "op~node"),
    ("nor_conv_3x3~0+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "must be"),
])
def test_malformed_strings_name_the_problem(text, words):
    with pytest.raises(UserError, match=words):
        parse_nb201(text)


@settings(max_examples=300)
@given(st.text(alphabet="|+~0123456789_abcnoprsvwxklt3 ", max_size=120))
def test_fuzz_parser_gives_architecture_or_user_error(text):
    try:
        arch = parse_nb201(text)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert parse_nb201(arch.to_nb201_string()) == arch


@settings(max_examples=200)
@given(st.lists(ops, min_size=6, max_size=6), st.integers(0, 200), st.sampled_from("|+~0123x_"))
def test_fuzz_mutations_of_valid_strings(choice, pos, ch):
    text = nb201_string(choice)
    pos %= len(text)
    mutated = text[:pos] + ch + text[pos + 1:]
    try:
        parse_nb201(mutated)
    except UserError:
        pass


@pytest.mark.parametrize("obj", [[], {"space": "nb201"}, {"space": "nb201", "cells": {"cell": {"edges": [[0, 1]]}}},
                                 {"space": "nb201", "cells": {"cell": {"edges": [[0, 1, "nor_conv_3x3"]]}}},
                                 {"space": "mars", "cells": {}}])
def test_bad_json_architectures_are_user_errors(obj):
    with pytest.raises(UserError):
        Architecture.from_dict(obj)


def test_load_architecture_from_string_file_and_result(tmp_path):
    arch = parse_nb201(BEST)
    assert load_architecture(BEST) == arch
    (tmp_path / "a.json").write_text(arch.to_json())
    assert load_architecture(str(tmp_path / "a.json")) == arch
    (tmp_path / "result.json").write_text(json.dumps({"architecture": arch.to_dict()}))
    assert load_architecture(str(tmp_path / "result.json")) == arch
    with pytest.raises(UserError, match="neither"):
        load_architecture(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_architecture(str(tmp_path / "bad.json"))
