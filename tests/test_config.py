"Every preset in configs/ loads, validates and round-trips; bad input fails with a readable ConfigError."
from pathlib import Path

import pytest
import yaml

from hypercompress.config import (ConfigError, HypercompressConfig, _parse_yaml, config_from_dict, config_to_dict, dump_config,
                                  load_config)

CONFIGS = Path(__file__).resolve().parent.parent / 'configs'
PRESETS = sorted(CONFIGS.glob('*.yaml'))


def test_presets_exist():
    assert {'quickstart.yaml', '10x.yaml', '100x.yaml', '1000x.yaml', '10000x.yaml'} <= {p.name for p in PRESETS}


@pytest.mark.parametrize('preset', PRESETS, ids=lambda p: p.name)
def test_preset_loads(preset):
    config = load_config(preset)
    assert isinstance(config, HypercompressConfig)
    assert preset.read_text().startswith('#'), 'each preset starts with a comment saying what it is for'
    # every key the file sets is honoured (nothing silently dropped)
    def leaves(data, prefix=()):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from leaves(value, (*prefix, key))
            else:
                yield (*prefix, key), value
    dumped = config_to_dict(config)
    for path, value in leaves(_parse_yaml(preset.read_text())):
        node = dumped
        for key in path:
            node = node[key]
        if isinstance(value, str) and isinstance(node, float):
            value = float(value)  # '5e-5' read as text by YAML 1.1
        assert node == value, f'{".".join(path)}: file says {value!r}, config has {node!r}'


@pytest.mark.parametrize('preset', PRESETS, ids=lambda p: p.name)
def test_preset_round_trip(preset, tmp_path):
    config = load_config(preset)
    text = dump_config(config, tmp_path / 'dumped.yaml')
    assert (tmp_path / 'dumped.yaml').read_text() == text
    reloaded = load_config(tmp_path / 'dumped.yaml')
    assert reloaded == config
    assert dump_config(reloaded) == text
    assert [p.name for p in tmp_path.iterdir()] == ['dumped.yaml']  # the atomic write left no temporary file


def test_1000x_targets():
    config = load_config(CONFIGS / '1000x.yaml')
    assert config.targets.compression_ratio == 1000
    assert config.targets.retained_accuracy == 0.75
    assert config.branches.blt.enabled and config.branches.blt.vocab == 'bytes'
    assert config.distillation.student_init == 'random'  # measured in nbs/33: the teacher's initialisation hurt at 1000x
    assert config.distillation.learning_rate == pytest.approx(3e-3)
    # the recipe of nbs/33: heads of 28 splitting width 56, KL alone, two windows a step, early stopping on the dev slice
    assert (config.design.num_heads, config.distillation.ce_weight, config.distillation.batch_size) == (2, 0.0, 2)
    assert config.distillation.eval_every_tokens == 1_000_000 and config.distillation.weight_decay == 0


def test_defaults():
    config = load_config()
    assert config == HypercompressConfig() == config_from_dict({})
    assert config.mode == 'hybrid' and config.seed == 0
    assert (config.targets.compression_ratio, config.targets.retained_accuracy, config.targets.max_rank_fraction) == (10, 0.75, 0.5)
    assert config.branches.lra.rank is None and config.branches.lra.whitening is True
    assert config.branches.kv.sink_tokens == 4 and config.branches.kv.activation_matching_weight == 0.1
    assert config.branches.blt.vocab == 'teacher' and config.branches.sparsity.method == 'wanda'
    assert config.finetune.learning_rate == 5e-5 and config.storage.group_size == 64
    assert config.data.seq_len == 256 and config.evaluation.seq_len == 512


def test_empty_file_is_an_error_and_empty_section_is_defaults(tmp_path):
    for text in ('', '# nothing set\n'):
        (tmp_path / 'empty.yaml').write_text(text)
        fails(['empty configuration', str(tmp_path / 'empty.yaml')], tmp_path / 'empty.yaml')
    (tmp_path / 'section.yaml').write_text('logging:\n  # experiment: x\n')
    assert load_config(tmp_path / 'section.yaml') == HypercompressConfig()


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, 'targets:\n  compression_ratio: 2\n  retained_accuracy: 0.5\n  compression_ratio: 50\n')
    fails(["duplicate key 'compression_ratio' on lines 2 and 4", 'bad.yaml', 'line 4'], path)
    fails(["duplicate key 'targets' on lines 1 and 3"], write(tmp_path, 'targets: {}\nseed: 1\ntargets: {}\n'))
    fails(["duplicate key 'a'"], overrides=['branches.lra.rank={a: 1, a: 2}'])


def test_yaml_floats_written_without_dot(tmp_path):
    "PyYAML reads 5e-5 as text; float fields still accept it, and integer fields accept 2e6"
    assert yaml.safe_load('x: 5e-5') == {'x': '5e-5'}
    (tmp_path / 'c.yaml').write_text('finetune:\n  learning_rate: 5e-5\ndistillation:\n  token_budget: 2e6\n')
    config = load_config(tmp_path / 'c.yaml')
    assert config.finetune.learning_rate == 5e-5 and isinstance(config.finetune.learning_rate, float)
    assert config.distillation.token_budget == 2_000_000 and isinstance(config.distillation.token_budget, int)


def test_n_m_is_not_base_60(tmp_path):
    (tmp_path / 'c.yaml').write_text('branches:\n  sparsity:\n    n_m: 2:4\n')
    assert load_config(tmp_path / 'c.yaml').branches.sparsity.n_m == '2:4'
    assert load_config(overrides=['branches.sparsity.n_m=2:4']).branches.sparsity.n_m == '2:4'


def fails(contains, *args, **kwargs):
    "Assert `load_config(*args, **kwargs)` raises ConfigError whose message contains every string in `contains`"
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    for text in contains:
        assert text in str(info.value), str(info.value)
    return str(info.value)


def write(tmp_path, text):
    (path := tmp_path / 'bad.yaml').write_text(text)
    return path


def test_unknown_key_top_level(tmp_path):
    fails(["unknown key 'branchs' at top level; did you mean 'branches'?", 'bad.yaml'], write(tmp_path, 'branchs: {}\n'))


def test_unknown_key_nested(tmp_path):
    fails(["unknown key 'rnak' at branches.lra.rnak; did you mean 'rank'?"],
          write(tmp_path, 'branches:\n  lra:\n    rnak: 8\n'))


def test_unknown_key_without_close_match(tmp_path):
    fails(["unknown key 'zzz' at data.zzz", 'valid keys are: distill, finetune, seq_len'], write(tmp_path, 'data:\n  zzz: 1\n'))


def test_out_of_range(tmp_path):
    fails(['targets.compression_ratio=0.5 is out of range: must be between 1 and 10000'],
          write(tmp_path, 'targets:\n  compression_ratio: 0.5\n'))
    fails(['distillation.temperature=0 is out of range: must be greater than 0'], overrides=['distillation.temperature=0'])
    fails(['branches.lra.rank=0 is out of range: must be at least 1'], overrides=['branches.lra.rank=0'])


def test_wrong_type(tmp_path):
    fails(["data.seq_len='long' has the wrong type: expected an integer, got a string"], write(tmp_path, 'data:\n  seq_len: long\n'))
    fails(['branches.lra.rank=True has the wrong type: expected an integer or null'], overrides=['branches.lra.rank=true'])
    fails(["section branches must be a mapping of keys to values, got a list"], write(tmp_path, 'branches: [1, 2]\n'))
    fails(["mode='fast' is not allowed: must be one of 'hybrid', 'lra', 'sparsity', 'distill-only'"], overrides=['mode=fast'])


def test_all_problems_reported_at_once():
    message = fails(['2 problems', 'seed=1.5', 'targets.retained_accuracy=2'], overrides=['seed=1.5', 'targets.retained_accuracy=2'])
    assert message.count('\n') == 2


def test_missing_file(tmp_path):
    fails([f'config file not found: {tmp_path / "nope.yaml"}'], tmp_path / 'nope.yaml')
    fails(['config path is not a file'], tmp_path)


def test_bad_yaml(tmp_path):
    fails(['invalid YAML in', 'bad.yaml', 'line 3'], write(tmp_path, 'targets:\n  compression_ratio: 2\n   bad: [\n'))


def test_top_level_not_a_mapping(tmp_path):
    fails(['top level must be a mapping', 'got a list'], write(tmp_path, '- 1\n- 2\n'))


def test_bad_override_path():
    fails(["unknown key 'rnak' at branches.lra.rnak; did you mean 'rank'?", 'branches.lra.rnak=16'], overrides=['branches.lra.rnak=16'])
    fails(["unknown key 'brnaches' at top level; did you mean 'branches'?"], overrides=['brnaches.lra.rank=16'])
    fails(['seed is a value, not a section'], overrides=['seed.value=1'])
    fails(['must look like key.path=value'], overrides=['branches.lra.rank'])


def test_override_value_types():
    config = load_config(CONFIGS / 'quickstart.yaml', overrides=[
        'branches.lra.rank=16', 'finetune.learning_rate=5e-5', 'branches.kv.enabled=true', 'data.max_chunks=null',
        'branches.blt.vocab=bpe', 'targets.compression_ratio=4', 'logging.experiment=2024'])
    assert config.branches.lra.rank == 16 and isinstance(config.branches.lra.rank, int)
    assert config.finetune.learning_rate == 5e-5 and isinstance(config.finetune.learning_rate, float)
    assert config.branches.kv.enabled is True
    assert config.data.max_chunks is None
    assert config.branches.blt.vocab == 'bpe'
    assert config.targets.compression_ratio == 4.0 and isinstance(config.targets.compression_ratio, float)
    assert config.logging.experiment == '2024'
    assert load_config(CONFIGS / 'quickstart.yaml').branches.lra.rank is None  # the file itself is untouched


def test_overrides_apply_in_order():
    assert load_config(overrides=['seed=1', 'seed=2']).seed == 2


def test_assignment_is_validated():
    config = load_config()
    with pytest.raises(ConfigError, match='must be between 1 and 10000'):
        config.targets.compression_ratio = 0.5
    with pytest.raises(ConfigError, match="did you mean 'rank'"):
        config.branches.lra.rnak = 3
    assert config.targets.compression_ratio == 10


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        config_from_dict({'mode': 'nope'})


@pytest.mark.parametrize("section, key", [("branches.kv", "student_hidden"), ("branches.blt", "multimodal"), ("finetune", "mmlu_target")])
def test_keys_nothing_read_are_removed_with_a_reason(section, key):
    "A key that was accepted and never read is now refused, naming the key and what to do instead."
    data = {}
    inner = data
    for part in section.split("."): inner = inner.setdefault(part, {})
    inner[key] = 1
    with pytest.raises(ConfigError, match=rf"{section}\.{key} was removed: nothing read it|{section}\.{key} was removed: fine-tuning never"):
        config_from_dict(data)


def _schema_leaves(model, prefix=()):
    "Dotted paths of every leaf field of the config schema."
    from pydantic import BaseModel
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel): yield from _schema_leaves(annotation, prefix + (name,))
        else: yield prefix + (name,)


def test_every_config_field_is_read_somewhere():
    """Each leaf of the schema is read outside the schema: its name appears as an attribute (`.key`) or a quoted key in
    the library's other modules. A floor, not a proof (a common name passes easily), but a field nothing mentions fails."""
    import re
    from pathlib import Path
    import hypercompress
    package = Path(hypercompress.__file__).parent
    text = "\n".join(p.read_text() for p in package.glob("*.py") if p.name not in ("config.py", "_modidx.py"))
    unread = [".".join(path) for path in _schema_leaves(HypercompressConfig)
              if not re.search(rf"\.{path[-1]}\b|[\"']{path[-1]}[\"']", text)]
    assert not unread, f"config fields nothing reads: {unread}"
