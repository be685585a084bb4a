import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archselect.config import RunConfig, dump_yaml, load_config
from archselect.errors import UserError


def test_defaults_are_the_nb201_paper_settings():
    cfg = load_config()
    assert (cfg.space.name, cfg.space.C, cfg.space.N) == ("nb201", 16, 5)
    s = cfg.search
    assert (s.w_lr, s.w_lr_min, s.w_momentum, s.grad_clip) == (0.025, 0.001, 0.9, 5.0)
    assert (s.a_lr, s.a_beta1, s.a_beta2, s.a_weight_decay) == (3e-4, 0.5, 0.999, 1e-3)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("space: {C: 8}\nsearch: {epochs: 3}\n")
    cfg = load_config(p, ["search.epochs=5", "data.subset=1000", "select.selectors=magnitude,perturbation",
                          "data.image_size=null", "search.w_lr=0.1"])
    assert cfg.space.C == 8 and cfg.search.epochs == 5 and cfg.data.subset == 1000
    assert cfg.select.selectors == ["magnitude", "perturbation"] and cfg.search.w_lr == 0.1


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["search.epochs=7", "space.N=2"])
    p = tmp_path / "config.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("override, words", [
    (["search.epoch=3"], "unknown config key 'search.epoch'.*epochs"),
    (["colour=red"], "unknown config key 'colour'"),
    (["search.epochs=many"], "search.epochs: expected an integer"),
    (["search.epochs=-1"], "search.epochs must be >= 0"),
    (["data.portion=1.5"], "data.portion"),
    (["space.C=2.5"], "space.C: expected an integer"),
    (["deterministic=maybe"], "deterministic: expected true or false"),
    (["device=tpu"], "device 'tpu'"),
    (["noequals"], "section.key=value"),
    (["search=3"], "search: expected a mapping"),
])
def test_bad_config_names_the_key(override, words):
    with pytest.raises(UserError, match=words):
        load_config(None, override)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("space: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@given(st.dictionaries(st.sampled_from(["seed", "device", "space", "data", "search", "x"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans(),
                                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)), max_size=3))
def test_fuzz_config_is_valid_or_user_error(data):
    from archselect.config import build, check

    try:
        check(build(RunConfig, data))
    except UserError as e:
        assert "\n" not in str(e)


def test_errors_suggest_the_closest_name_and_say_where_the_yaml_broke(tmp_path):
    from archselect.selection import SELECTORS

    with pytest.raises(UserError, match=r"unknown config key 'search.epoch' \(did you mean 'epochs'\?\)"):
        load_config(None, ["search.epoch=3"])
    with pytest.raises(UserError, match=r"unknown selector 'shaply' \(did you mean 'shapley'\?\)"):
        SELECTORS.get("shaply")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  epochs: 3\n  optimizer: [darts\n")
    with pytest.raises(UserError, match=r"not valid YAML at line 4, column 1"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_with_valid_selector_options(path):
    """configs/*.yaml: each validates as written (paper configs included: ImageNet's 224 px retraining config is held
    to the search-step memory estimate only when a search starts), and its select.options build their selectors."""
    from archselect.selection import SELECTORS

    cfg = load_config(path)
    for name, options in cfg.select.options.items():
        SELECTORS.get(name)(options)


def test_the_search_memory_bound_counts_imagenets_side_and_the_mobilenet_layout():
    """The paper's ProxylessNAS (batch 256) and GM-NAS (batch 512) ImageNet searches fit the bound; ImageNet's unset
    image size counts as its 224 px crop, not 32; a MobileNet twice as wide at batch 1024 does not fit."""
    from archselect.config import MAX_ACTIVATION_BYTES, check_search_memory, estimated_activation_bytes

    paper = Path(__file__).resolve().parents[1] / "configs" / "mobilenet-proxylessnas-imagenet.yaml"
    for batch in (256, 512):
        assert estimated_activation_bytes(load_config(paper, [f"data.batch_size={batch}"])) < MAX_ACTIVATION_BYTES
    with pytest.raises(UserError, match="space.width_mult=2.0, data.batch_size=1024 and 224 px"):
        check_search_memory(load_config(paper, ["data.batch_size=1024", "space.width_mult=2.0"]))
    cells = ["space.C=16", "space.N=1", "data.batch_size=1024"]
    check_search_memory(load_config(None, cells))  # fashion-mnist: 28 px images
    imagenet = load_config(None, [*cells, "data.dataset=imagenet"])  # loads: it may be a retraining config
    with pytest.raises(UserError, match="224 px"):
        check_search_memory(imagenet)
    with pytest.raises(UserError, match="32 px"):  # an in-memory dataset's config is refused as it loads
        load_config(None, ["space.C=16", "space.N=1", "data.batch_size=2048"])


def test_the_search_memory_bound_counts_one_process_share_and_ofas_one_block(monkeypatch):
    """OFA's ImageNet protocol (global batch 2048, elastic blocks): refused in one process, accepted under torchrun
    with 8 processes (256 images each); an elastic supernet keeps one block per layer, six times fewer than the
    same layers mixed."""
    from archselect.config import check_search_memory, estimated_activation_bytes

    ofa = load_config(Path(__file__).resolve().parents[1] / "configs" / "mobilenet-ofa-imagenet.yaml")
    with pytest.raises(UserError, match="data.batch_size=2048 and 224 px"):
        check_search_memory(ofa)
    monkeypatch.setenv("WORLD_SIZE", "8")
    check_search_memory(ofa)
    assert estimated_activation_bytes(ofa, 8) * 8 == estimated_activation_bytes(ofa)
    mixed = dataclasses.replace(ofa, space=dataclasses.replace(ofa.space, elastic=False),
                                search=dataclasses.replace(ofa.search, optimizer="darts"))
    assert estimated_activation_bytes(mixed) > 4 * estimated_activation_bytes(ofa)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="in each of 2 processes"):
        check_search_memory(dataclasses.replace(ofa, data=dataclasses.replace(ofa.data, batch_size=4096)))


def test_valid_size_rules():
    assert load_config(None, ["data.valid_size=5", "data.valid_balanced=true"]).data.valid_size == 5
    for keys, words in ((["data.valid_size=0"], "at least 1"), (["data.valid_balanced=true"], "set data.valid_size"),
                        (["data.valid_size=5", "data.portion=0.9"], "set one of them")):
        with pytest.raises(UserError, match=words):
            load_config(None, keys)


