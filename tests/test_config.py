"""Tests for captioning.config: defaults, experiment files, overrides, errors, TOML round trip."""

from __future__ import annotations

import dataclasses
import re
import json
import warnings
import zipfile
from pathlib import Path

import pytest
import tomllib

from captioning import config as config_module
from captioning.config import (
    MOVED_KEYS,
    SECTIONS,
    ConfigError,
    ConfigMigrationWarning,
    DecoderConfig,
    ExperimentConfig,
    apply_values,
    load_config,
    parse_override,
    to_dict,
    to_toml,
)
from captioning.validate import validate
from captioning.runs import config_differences, load_run_config

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPOSITORY_ROOT / "experiments"
SHIPPED_EXPERIMENTS = sorted(EXPERIMENTS.rglob("*.toml"))


def write_experiment(tmp_path: Path, text: str, name: str = "experiment") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def changed_keys(config: ExperimentConfig) -> dict[str, object]:
    """``{"section.field": value}`` for every value that differs from the defaults."""
    defaults, values = to_dict(ExperimentConfig()), to_dict(config)
    changed = {}
    for key, value in values.items():
        if isinstance(value, dict):
            changed.update(
                {f"{key}.{field}": item for field, item in value.items() if item != defaults[key][field]}
            )
        elif value != defaults[key]:
            changed[key] = value
    return changed


# ---- defaults -------------------------------------------------------------------------


def test_defaults_load_without_a_file():
    config = load_config()
    assert config.name == "default"
    assert config.data.name == "shapes"
    assert config.images.x_size == 512 and config.images.y_size == 512
    assert config.encoder.name == "conv_stack"
    assert config.encoder.filters == [32, 64, 128, 256]
    assert config.decoder.cell == "lstm"
    assert config.decoder.units == 512
    assert config.training.learning_rate == 1e-3
    assert (config.generation.sampler, config.generation.beam_width, config.generation.length_penalty) == ("greedy", 3, 0.0)
    assert changed_keys(config) == {}


def test_default_lists_are_not_shared_between_configs():
    first, second = load_config(), load_config()
    first.encoder.filters.append(512)
    assert second.encoder.filters == [32, 64, 128, 256]


def test_every_section_is_listed():
    assert SECTIONS == ["data", "images", "encoder", "decoder", "generation", "training", "fine_tune", "self_critical",
                        "runtime"]


# ---- experiment files -----------------------------------------------------------------


def test_experiment_file_changes_only_what_it_states_and_is_named_after_the_file(tmp_path):
    path = write_experiment(
        tmp_path,
        """
        [encoder]
        filters = [8, 16]
        batch_norm = false

        [decoder]
        units = 128
        """,
        name="small_gru",
    )
    config = load_config(path)
    assert changed_keys(config) == {
        "name": "small_gru",
        "encoder.filters": [8, 16],
        "encoder.batch_norm": False,
        "decoder.units": 128,
    }


def test_experiment_file_name_key_wins_over_the_file_name(tmp_path):
    path = write_experiment(tmp_path, 'name = "baseline"\n[training]\nepochs = 2\n', name="other")
    config = load_config(path)
    assert config.name == "baseline"
    assert config.training.epochs == 2


def test_overrides_apply_after_the_experiment_file(tmp_path):
    path = write_experiment(tmp_path, "[decoder]\nunits = 128\nembedding_dim = 32\n")
    config = load_config(path, ["decoder.units=64"])
    assert config.decoder.units == 64  # the override wins
    assert config.decoder.embedding_dim == 32  # the file's other value stays


def test_experiment_file_integer_for_a_float_field_becomes_a_float(tmp_path):
    config = load_config(write_experiment(tmp_path, "[training]\nlearning_rate = 1\n"))
    assert config.training.learning_rate == 1.0
    assert type(config.training.learning_rate) is float


# ---- base files -------------------------------------------------------------------------


def test_base_file_values_apply_first_and_the_file_changes_what_it_states(tmp_path):
    write_experiment(tmp_path, 'name = "the base"\n[decoder]\ncell = "gru"\nunits = 128\n', name="base")
    path = write_experiment(tmp_path, 'base = "base.toml"\n[decoder]\nunits = 64\n', name="variant")
    config = load_config(path)
    assert (config.decoder.cell, config.decoder.units) == ("gru", 64)
    assert config.name == "variant"  # the base's name is not inherited
    assert set(changed_keys(config)) == {"name", "decoder.cell", "decoder.units"}


def test_base_is_relative_to_the_file_and_may_have_a_base_of_its_own(tmp_path):
    (tmp_path / "deep").mkdir()
    write_experiment(tmp_path, "[decoder]\nunits = 128\n[training]\nepochs = 3\n", name="grand")
    write_experiment(tmp_path / "deep", 'base = "../grand.toml"\n[training]\nepochs = 5\n', name="parent")
    path = write_experiment(tmp_path / "deep", 'base = "parent.toml"\n[decoder]\ncell = "gru"\n', name="child")
    config = load_config(path, ["training.epochs=7"])
    assert (config.decoder.units, config.decoder.cell, config.training.epochs, config.name) == (128, "gru", 7, "child")
    assert load_config(tmp_path / "deep" / "parent.toml").training.epochs == 5


def test_files_naming_each_other_as_base_are_a_config_error(tmp_path):
    write_experiment(tmp_path, 'base = "b.toml"\n', name="a")
    write_experiment(tmp_path, 'base = "a.toml"\n', name="b")
    with pytest.raises(ConfigError, match=r"name each other as base: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        load_config(tmp_path / "a.toml")


def test_missing_base_names_the_file_and_where_it_looked(tmp_path):
    path = write_experiment(tmp_path, 'base = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match=r"experiment\.toml: base 'nowhere\.toml' not found \(looked for .*nowhere\.toml\)"):
        load_config(path)


def test_base_that_is_not_a_path_is_a_config_error(tmp_path):
    path = write_experiment(tmp_path, "base = 3\n")
    with pytest.raises(ConfigError, match="base must be the path of another experiment file, got 3"):
        load_config(path)


def test_an_error_in_a_base_file_names_the_base_file(tmp_path):
    write_experiment(tmp_path, "[decoder]\nunitz = 3\n", name="broken")
    path = write_experiment(tmp_path, 'base = "broken.toml"\n')
    with pytest.raises(ConfigError, match=r"broken\.toml: unknown key 'decoder\.unitz'"):
        load_config(path)


# ---- overrides ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, section, field, value",
    [
        ("decoder.units=256", "decoder", "units", 256),
        ("decoder.dropout=0.5", "decoder", "dropout", 0.5),
        ("training.learning_rate=3e-4", "training", "learning_rate", 3e-4),
        ("encoder.batch_norm=false", "encoder", "batch_norm", False),
        ("images.cache=true", "images", "cache", True),
        ("encoder.filters=[8,16]", "encoder", "filters", [8, 16]),
        ("encoder.filters=[]", "encoder", "filters", []),
        ("decoder.cell=gru", "decoder", "cell", "gru"),  # bare word: not TOML, kept as text
        ("data.root=data/my shapes", "data", "root", "data/my shapes"),  # bare path with a space
        ('data.root="quoted dir"', "data", "root", "quoted dir"),  # TOML basic string
        ("data.root='C:\\data'", "data", "root", "C:\\data"),  # TOML literal string keeps backslash
        ('data.root="with \\"quotes\\""', "data", "root", 'with "quotes"'),
        (" decoder.units = 96 ", "decoder", "units", 96),  # spaces around key and value
        ("generation.sampler=beam", "generation", "sampler", "beam"),
        ("generation.beam_width=5", "generation", "beam_width", 5),
        ("generation.length_penalty=0.6", "generation", "length_penalty", 0.6),
    ],
)
def test_override_value_is_parsed_and_applied(override, section, field, value):
    config = load_config(overrides=[override])
    applied = getattr(getattr(config, section), field)
    assert applied == value
    assert type(applied) is type(value)


def test_integer_override_for_a_float_field_becomes_a_float():
    config = load_config(overrides=["training.learning_rate=1"])
    assert config.training.learning_rate == 1.0
    assert type(config.training.learning_rate) is float


def test_later_override_of_the_same_key_wins():
    config = load_config(overrides=["decoder.units=8", "decoder.units=16"])
    assert config.decoder.units == 16


def test_parse_override_splits_section_field_and_value():
    assert parse_override("decoder.units=256") == ("decoder", "units", 256)
    assert parse_override("data.root=a=b") == ("data", "root", "a=b")  # only the first '=' splits


# ---- errors ---------------------------------------------------------------------------


def test_unknown_section_names_it_and_lists_the_sections():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["decodr.units=3"])
    message = str(error.value)
    assert "decodr" in message
    for section in SECTIONS:
        assert section in message


def test_unknown_field_names_the_key_and_lists_valid_fields():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["decoder.unitz=3"])
    message = str(error.value)
    assert "decoder.unitz" in message
    for field in dataclasses.fields(DecoderConfig):
        assert field.name in message


def test_unknown_field_in_a_file_names_the_file_and_the_key(tmp_path):
    path = write_experiment(tmp_path, "[training]\nepoch = 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert "training.epoch" in message
    assert "epochs" in message and "batch_size" in message


def test_unknown_section_in_a_file_is_an_error(tmp_path):
    path = write_experiment(tmp_path, "[optimizer]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'.*training"):
        load_config(path)


def test_a_section_that_is_not_a_table_is_an_error(tmp_path):
    path = write_experiment(tmp_path, "decoder = 3\n")
    with pytest.raises(ConfigError, match="'decoder' must be a table"):
        load_config(path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.epochs=abc", "training.epochs"),  # bare string for an int
        ("training.epochs=true", "training.epochs"),  # bool is not an int here
        ("training.epochs=1.5", "training.epochs"),  # no silent float -> int
        ('training.epochs="3"', "training.epochs"),  # quoted string for an int
        ("training.learning_rate=true", "training.learning_rate"),  # bool is not promoted to float
        ("encoder.batch_norm=1", "encoder.batch_norm"),  # int is not a bool
        ("encoder.filters=8", "encoder.filters"),  # scalar for a list
        ('encoder.filters=[1,"a"]', "encoder.filters[1]"),  # the bad item is named
        ("encoder.filters=[1,true]", "encoder.filters[1]"),
        ("decoder.units=\"many\"", "decoder.units"),  # string for an int
    ],
)
def test_wrong_type_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert key in str(error.value)


def test_wrong_type_in_a_file_names_the_file_and_the_key(tmp_path):
    path = write_experiment(tmp_path, '[decoder]\nunits = "many"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert "decoder.units" in str(error.value)


@pytest.mark.parametrize("override", ["decoderunits=3", "decoder.units", "units=3", "=3"])
def test_malformed_override_is_a_config_error_showing_the_expected_form(override):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert override in str(error.value)
    assert "section.field=value" in str(error.value)


def test_missing_experiment_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="not found") as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_a_folder_is_not_an_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path):
    path = write_experiment(tmp_path, "[decoder\nunits = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as error:
        load_config(path)
    assert str(path) in str(error.value)


# ---- writing the resolved config ------------------------------------------------------


def round_trip(config: ExperimentConfig, tmp_path: Path) -> ExperimentConfig:
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    return load_config(path)


def test_default_config_round_trips_through_toml(tmp_path):
    assert to_dict(round_trip(ExperimentConfig(), tmp_path)) == to_dict(ExperimentConfig())


def test_changed_config_round_trips_through_toml(tmp_path):
    config = load_config(
        overrides=[
            "encoder.filters=[8, 16, 24]",
            "encoder.batch_norm=false",
            "decoder.cell=gru",
            "decoder.dropout=0.0",
            "training.learning_rate=1e-05",
            "training.epochs=1",
        ]
    )
    config.name = "a run named differently from its file"
    loaded = round_trip(config, tmp_path)
    assert to_dict(loaded) == to_dict(config)
    assert type(loaded.decoder.dropout) is float


@pytest.mark.parametrize(
    "text",
    [
        'say "cheese"',
        "C:\\runs\\new",  # backslashes, and \r \n that must not turn into escapes
        'ends with a backslash \\',
        '\\"',  # backslash then quote
        "tab\there",
        "two\nlines",  # a newline used to make the written TOML unreadable
        "unicode: café ✓",
        "",
    ],
)
def test_strings_with_quotes_backslashes_and_control_characters_round_trip(text, tmp_path):
    config = ExperimentConfig()
    config.name = text
    config.data.root = text
    loaded = round_trip(config, tmp_path)
    assert loaded.name == text
    assert loaded.data.root == text


def test_toml_lists_each_section_as_a_table():
    text = to_toml(ExperimentConfig())
    assert text.startswith('name = "default"\n')
    for section in SECTIONS:
        assert f"\n[{section}]\n" in text
    assert "filters = [32, 64, 128, 256]" in text
    assert "batch_norm = true" in text


# ---- shipped experiments --------------------------------------------------------------


SHIPPED_IDS = [str(path.relative_to(EXPERIMENTS)) for path in SHIPPED_EXPERIMENTS]
# Files whose base is in their own folder: the one-change rows of that folder's comparison. A
# folder's baseline may take its base from elsewhere with several changes (activations/relu.toml).
VARIANTS = [path for path in SHIPPED_EXPERIMENTS
            if (path.parent / tomllib.loads(path.read_text()).get("base", "../none")).parent.resolve() == path.parent.resolve()]


def test_there_are_shipped_experiments():
    assert SHIPPED_EXPERIMENTS, "experiments/*.toml is empty"


def section_differences(first: ExperimentConfig, second: ExperimentConfig) -> dict[str, set[str]]:
    """``{"decoder": {"cell"}}``: per section, the fields whose values differ."""
    first_values, second_values = to_dict(first), to_dict(second)
    differences = {}
    for section in SECTIONS:
        fields = {field for field, value in first_values[section].items() if second_values[section][field] != value}
        if fields:
            differences[section] = fields
    return differences


@pytest.mark.parametrize("path", VARIANTS, ids=[str(path.relative_to(EXPERIMENTS)) for path in VARIANTS])
def test_shipped_variant_changes_one_section_of_its_base_or_nothing(path):
    """A file with a base changes one thing of it (one field, or fields that go together such as
    x_size and y_size), or nothing: then it is the baseline row of its folder's comparison."""
    base = path.parent / tomllib.loads(path.read_text())["base"]
    differences = section_differences(load_config(base), load_config(path))
    if "fine_tune_layers" in differences.get("encoder", ()):
        # Adding a fine-tuning phase is one change: the layers to unfreeze and that phase's
        # [fine_tune] settings (flickr8k_mobilenet_finetune.toml).
        differences = {"fine-tuning": {"fine_tune_layers", *differences.pop("fine_tune", ())}, **{
            section: fields for section, fields in differences.items() if fields != {"fine_tune_layers"}}}
    if "name" in differences.get("decoder", ()) and differences.get("training") == {"learning_rate"}:
        # Another decoder family is one change: its sizes and the learning rate it trains at
        # (flickr8k_transformer_scst.toml).
        differences = {"decoder family": {*differences.pop("decoder"), *differences.pop("training")}, **differences}
    assert len(differences) <= 1, f"{path.name} changes {differences} of {base.name}"


def test_default_comparison_is_the_default_experiment_and_one_change_each():
    default = load_config(EXPERIMENTS / "shapes_conv_gru.toml")
    changes = {path.stem: section_differences(default, load_config(path)) for path in sorted((EXPERIMENTS / "shapes").glob("*.toml"))}
    assert changes == {"conv_gru": {}, "conv_gru_beam": {"generation": {"sampler"}}, "conv_lstm": {"decoder": {"cell"}}}


@pytest.mark.parametrize("path", SHIPPED_EXPERIMENTS, ids=SHIPPED_IDS)
def test_shipped_experiment_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert config.name == path.stem
    assert set(changed_keys(config)) - {"name"}, f"{path.name} changes nothing from the defaults"
    assert to_dict(round_trip(config, tmp_path)) == to_dict(config)
    validate(config)  # every shipped value means something: train would start


def test_activation_experiments_differ_only_in_the_activation_and_cover_every_one():
    from captioning.models.encoders import ACTIVATIONS
    from captioning.reports.compare import differing_fields

    configs = [load_config(path) for path in sorted((REPOSITORY_ROOT / "experiments" / "activations").glob("*.toml"))]
    assert sorted(config.encoder.activation for config in configs) == sorted(ACTIVATIONS)
    assert differing_fields(configs) == ["encoder.activation"]
    # the lesson needs the vanishing gradient visible (no batch norm) and measured
    assert all(not config.encoder.batch_norm and config.training.log_gradient_norms for config in configs)
    assert configs[0].images.x_size == load_config(REPOSITORY_ROOT / "experiments" / "shapes_conv_gru.toml").images.x_size


# ---- base experiment files ------------------------------------------------------------


def test_base_file_applies_first_and_the_file_wins(tmp_path):
    write_experiment(tmp_path, "name = 'the_base'\n[decoder]\ncell = 'gru'\nunits = 64\n", name="base")
    path = write_experiment(tmp_path, "base = 'base.toml'\n[decoder]\nunits = 128\n", name="child")
    config = load_config(path)
    assert changed_keys(config) == {"name": "child", "decoder.cell": "gru", "decoder.units": 128}


def test_bases_chain_and_resolve_relative_to_their_file(tmp_path):
    (tmp_path / "deep").mkdir()
    write_experiment(tmp_path, "[encoder]\nactivation = 'tanh'\n[decoder]\nunits = 64\n", name="grand")
    write_experiment(tmp_path / "deep", "base = '../grand.toml'\n[decoder]\nunits = 96\n", name="parent")
    path = write_experiment(tmp_path, "base = 'deep/parent.toml'\n[training]\nepochs = 2\n", name="child")
    config = load_config(path, ["training.epochs=3"])
    assert changed_keys(config) == {"name": "child", "encoder.activation": "tanh", "decoder.units": 96,
                                    "training.epochs": 3}


def test_unquoted_number_for_a_text_field_is_kept_as_text():
    config = load_config(None, ["data.root=2024"])
    assert config.data.root == "2024"


# ---- validate(config): what each value means ------------------------------------------


def test_the_defaults_are_valid():
    validate(ExperimentConfig())


# (override, what the ConfigError must say): for every section, a value that passes
# load_config's type check but that training, evaluation or captioning would refuse.
INVALID_VALUES = [
    ("data.name=flickr9k", r"unknown data set 'flickr9k' \(data.name\); valid: coco, csv, flickr30k, flickr8k"),
    ("data.captions_per_image=0", r"data.captions_per_image=0 must be at least 1"),
    ("images.x_size=0", r"images.x_size=0 must be at least 1"),
    ("images.augment_zoom=1.5", r"images.augment_zoom=1.5 must be at least 0 \(off\) and below 1"),
    ("encoder.name=resnet9", r"unknown encoder 'resnet9' \(encoder.name\); valid: conv_stack, vgg16"),
    ("encoder.activation=swishy", r"unknown encoder activation 'swishy' \(encoder.activation\); valid: relu"),
    ("encoder.filters=[]", r"encoder.filters is empty"),
    ("encoder.fine_tune_layers=2", r"encoder.fine_tune_layers=2 applies to pretrained backbones"),
    ("decoder.name=transformers", r"unknown decoder 'transformers' \(decoder.name\); valid: rnn, attention, transformer"),
    ("decoder.cell=gur", r"unknown decoder cell 'gur' \(decoder.cell\); valid: lstm, gru"),
    ("decoder.image_pooling=max", r"unknown image_pooling 'max' \(decoder.image_pooling\); valid: mean, flatten"),
    ("decoder.attention_placement=middle", r"'middle' \(decoder.attention_placement\); valid: input, output, between"),
    ("decoder.attention_penalty_scale=per_word", r"'per_word' \(decoder.attention_penalty_scale\); valid: per_token"),
    ("decoder.output_layer=tall", r"unknown output_layer 'tall' \(decoder.output_layer\); valid: deep, wide"),
    ("decoder.dropout=1.0", r"decoder.dropout=1.0 must be at least 0 \(off\) and below 1"),
    ("generation.sampler=nucleus", r"unknown generation.sampler 'nucleus'; valid: greedy, beam, top_k, top_p"),
    ("generation.top_p=0", r"generation.top_p must be above 0 and at most 1, got 0"),
    ("training.batch_size=0", r"training.batch_size=0 must be at least 1"),
    ("training.learning_rate_decay=0", r"training.learning_rate_decay=0.0 must be above 0 and at most 1"),
    ("runtime.checkpoint_every_steps=-1", r"runtime.checkpoint_every_steps=-1 is negative"),
    ("runtime.strategy=tpu", r"unknown runtime.strategy 'tpu'; valid: default, mirrored, multi_worker"),
    ("runtime.mixed_precision_dtype=float8", r"unknown mixed precision dtype 'float8' \(runtime.mixed_precision_dtype\); "
                                              r"valid: float16, bfloat16"),
    ("training.early_stopping_split=dev", r"unknown training.early_stopping_split 'dev'; valid: val, train_tail"),
    ("training.evaluation_split=tset", r"unknown evaluation split 'tset' \(training.evaluation_split\); valid: train"),
    ("training.gradient_norm_interval=0", r"training.gradient_norm_interval=0 must be at least 1"),
    ("self_critical.epochs=-1", r"self_critical.epochs=-1 is negative"),
    ("fine_tune.epochs=-1", r"fine_tune.epochs=-1 is negative"),
]


@pytest.mark.parametrize("override, message", INVALID_VALUES, ids=[override for override, _ in INVALID_VALUES])
def test_validate_names_the_field_its_value_and_the_valid_ones(override, message):
    config = load_config(None, [override])  # the type is right: only validate can refuse it
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_every_section_has_an_invalid_value_tested():
    assert {override.split(".")[0] for override, _ in INVALID_VALUES} == set(SECTIONS)


def test_validate_checks_a_decoders_own_fields_only_when_it_is_chosen():
    uneven = ["decoder.embedding_dim=12", "decoder.transformer_heads=8"]
    validate(load_config(None, uneven))  # rnn reads neither field
    with pytest.raises(ConfigError, match=r"decoder.embedding_dim=12 must divide by decoder.transformer_heads=8"):
        validate(load_config(None, [*uneven, "decoder.name=transformer"]))


@pytest.mark.parametrize("overrides, message", [
    (["images.augment=true", "images.augment_contrast=0.2", "encoder.name=vgg16"],
     r"images.augment_contrast=0.2 needs the encoder to see each augmented image"),
    (["training.log_gradient_norms=true", "encoder.name=mobilenet"], r"training.log_gradient_norms measures"),
    (["self_critical.epochs=1"], r"encoder 'conv_stack' here trains"),
    (["training.evaluation_split=val"], r"the 'val' split chose this run's best epoch"),
], ids=["augment-frozen", "gradients-frozen", "self-critical-trains", "evaluation-is-stopping-split"])
def test_validate_refuses_settings_of_two_sections_that_cannot_run_together(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))


def test_validate_imports_nothing_above_config_data_and_models():
    """training, evaluation and reports import validate; the other way round would be a cycle."""
    source = (REPOSITORY_ROOT / "captioning" / "validate.py").read_text()
    imported = re.findall(r"^\s*from (captioning[.\w]*) import", source, flags=re.MULTILINE)
    assert imported and all(re.match(r"captioning\.(config|data|models)\b", module) for module in imported), imported
# ---- keys moved out of [training] -------------------------------------------------------

# An old key, a value of its type that is not the default, and where it lands.
MOVED_VALUES = {
    "training.fine_tune_epochs": 3,
    "training.fine_tune_learning_rate": 0.003,
    "training.self_critical_epochs": 2,
    "training.self_critical_learning_rate": 0.0001,
    "training.self_critical_samples": 4,
    "training.self_critical_reward_end": False,
    "training.mixed_precision": True,
    "training.jit_compile": True,
    "training.strategy": "mirrored",
    "training.checkpoint_every_steps": 7,
}


@pytest.fixture(autouse=True)
def fresh_migration_messages(monkeypatch):
    """Each test sees the once-per-process migration messages afresh."""
    monkeypatch.setattr(config_module, "_reported_moves", set())


def value_at(config: ExperimentConfig, key: str):
    section, field = key.split(".")
    return getattr(getattr(config, section), field)


def toml_text(value) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)


def test_every_moved_key_is_tested_and_names_an_existing_field():
    assert set(MOVED_VALUES) == set(MOVED_KEYS)
    for old_key, new_key in MOVED_KEYS.items():
        assert value_at(ExperimentConfig(), new_key) != MOVED_VALUES[old_key], f"{old_key}'s test value is the default"


@pytest.mark.parametrize("old_key", sorted(MOVED_KEYS))
def test_old_key_in_an_override_loads_at_its_new_place_with_a_message(old_key):
    new_key = MOVED_KEYS[old_key]
    value = MOVED_VALUES[old_key]
    with pytest.warns(ConfigMigrationWarning, match=rf"{old_key} is now {new_key}"):
        config = load_config(None, [f"{old_key}={toml_text(value)}"])
    assert value_at(config, new_key) == value
    assert config == load_config(None, [f"{new_key}={toml_text(value)}"])


@pytest.mark.parametrize("old_key", sorted(MOVED_KEYS))
def test_old_key_in_an_experiment_file_loads_at_its_new_place_naming_the_file(old_key, tmp_path):
    new_key = MOVED_KEYS[old_key]
    field = old_key.split(".")[1]
    path = write_experiment(tmp_path, f"[training]\nepochs = 4\n{field} = {toml_text(MOVED_VALUES[old_key])}\n")
    with pytest.warns(ConfigMigrationWarning) as caught:
        config = load_config(path)
    messages = [str(warning.message) for warning in caught if warning.category is ConfigMigrationWarning]
    assert len(messages) == 1 and str(path) in messages[0] and new_key in messages[0]
    assert value_at(config, new_key) == MOVED_VALUES[old_key]
    assert config.training.epochs == 4


def test_old_key_in_a_base_file_loads_and_the_file_may_override_it_at_the_new_place(tmp_path):
    write_experiment(tmp_path, "[training]\nself_critical_epochs = 3\nself_critical_samples = 4\n", name="base")
    path = write_experiment(tmp_path, 'base = "base.toml"\n[self_critical]\nepochs = 1\n')
    with pytest.warns(ConfigMigrationWarning, match="base.toml"):
        config = load_config(path)
    assert (config.self_critical.epochs, config.self_critical.samples) == (1, 4)


def test_an_old_key_is_reported_once_per_process_and_a_source_in_one_line(tmp_path):
    path = write_experiment(tmp_path, "[training]\nstrategy = \"mirrored\"\nfine_tune_epochs = 2\n")
    with pytest.warns(ConfigMigrationWarning) as caught:
        load_config(path)
        load_config(path, ["training.jit_compile=true"])
    messages = [str(warning.message) for warning in caught]
    assert messages == [f"{path}: loaded old keys at their new place ([training] was split): "
                        "training.fine_tune_epochs is now fine_tune.epochs, training.strategy is now runtime.strategy",
                        "override 'training.jit_compile=true': loaded old keys at their new place ([training] was "
                        "split): training.jit_compile is now runtime.jit_compile"]


def test_old_and_new_key_with_different_values_are_an_error_naming_both(tmp_path):
    path = write_experiment(tmp_path, "[training]\nfine_tune_epochs = 3\n[fine_tune]\nepochs = 4\n")
    with pytest.raises(ConfigError, match=r"experiment\.toml: training\.fine_tune_epochs = 3 and fine_tune\.epochs = 4"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"training\.strategy = 'mirrored' and runtime\.strategy = 'default'"):
        apply_values(ExperimentConfig(), {"training": {"strategy": "mirrored"}, "runtime": {"strategy": "default"}},
                     source="the model file's config")


def test_old_and_new_key_with_the_same_value_load(tmp_path):
    path = write_experiment(tmp_path, "[training]\nfine_tune_epochs = 3\n[fine_tune]\nepochs = 3\n")
    with pytest.warns(ConfigMigrationWarning):
        assert load_config(path).fine_tune.epochs == 3


def test_an_old_key_with_a_value_of_the_wrong_type_names_the_new_key():
    with pytest.warns(ConfigMigrationWarning), pytest.raises(ConfigError, match=r"self_critical\.samples: expected an integer"):
        load_config(None, ["training.self_critical_samples=true"])


def test_an_old_text_field_override_stays_text():
    with pytest.warns(ConfigMigrationWarning):
        assert load_config(None, ["training.strategy=2024"]).runtime.strategy == "2024"  # then build_strategy refuses it


def old_training_section(config: ExperimentConfig) -> dict:
    """``config``'s [training] as config.py wrote it before the split: the moved fields inside it."""
    values = to_dict(config)
    training = dict(values["training"])
    for old_key, new_key in MOVED_KEYS.items():
        section, field = new_key.split(".")
        training[old_key.split(".")[1]] = values[section][field]
    return training


def test_an_old_run_directory_config_loads_to_the_same_config(tmp_path):
    """A run written before the split (its config.toml has the old [training]) resumes: its saved
    config equals the same config resolved now, so config_differences finds nothing."""
    config = load_config(EXPERIMENTS / "flickr8k_mobilenet_attention_decay_scst.toml", ["runtime.checkpoint_every_steps=7"])
    values = to_dict(config)
    lines = [f"name = {json.dumps(values.pop('name'))}", "", "[training]"]
    lines += [f"{field} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}"
              for field, value in old_training_section(config).items()]
    for section in ["data", "images", "encoder", "decoder", "generation"]:
        lines += ["", f"[{section}]"] + [f"{field} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}"
                                         for field, value in values[section].items()]
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("\n".join(lines) + "\n")
    with pytest.warns(ConfigMigrationWarning):
        saved = load_run_config(run_dir)
    assert to_dict(saved) == to_dict(config)
    assert config_differences(saved, config) == []
    assert (saved.self_critical.epochs, saved.runtime.checkpoint_every_steps) == (1, 7)


def test_the_shipped_model_file_is_flickr8k_best_in_todays_keys():
    """models/flickr8k.keras stores its resolved config as a plain dict, which PackagedCaptioner
    rebuilds through apply_values: today's keys (no migration warning), and the settings of
    experiments/flickr8k_best.toml, as models/README.md says, apart from where the data and
    the ImageNet weights were and the image cache (which an exported model never uses)."""
    model_path = REPOSITORY_ROOT / "models" / "flickr8k.keras"
    if not model_path.is_file():
        pytest.skip(f"{model_path} is missing")
    with zipfile.ZipFile(model_path) as archive:
        experiment = json.loads(archive.read("config.json"))["config"]["experiment"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigMigrationWarning)
        config = apply_values(ExperimentConfig(), experiment, source="the model file's config")
    assert to_dict(config) == experiment

    def trained_settings(settings: dict) -> dict:
        return {**settings, "name": None, "data": {**settings["data"], "root": None},
                "encoder": {**settings["encoder"], "weights": None}, "images": {**settings["images"], "cache": None}}

    best = to_dict(load_config(REPOSITORY_ROOT / "experiments" / "flickr8k_best.toml"))
    assert trained_settings(experiment) == trained_settings(best)


def test_a_dict_with_the_old_training_keys_loads_like_the_new_one():
    config = load_config(None, ["fine_tune.epochs=2", "runtime.strategy=mirrored", "self_critical.reward_end=false"])
    old = {section: fields for section, fields in to_dict(config).items() if section not in ("fine_tune", "self_critical",
                                                                                               "runtime")}
    old["training"] = old_training_section(config)
    with pytest.warns(ConfigMigrationWarning):
        assert apply_values(ExperimentConfig(), old, source="the model file's config") == config


@pytest.mark.parametrize("path", SHIPPED_EXPERIMENTS, ids=SHIPPED_IDS)
def test_shipped_experiment_uses_no_moved_key(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(path)
    assert [str(warning.message) for warning in caught if warning.category is ConfigMigrationWarning] == []
