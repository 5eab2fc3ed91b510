"""Config files are data: read as plain YAML (no Python objects unless NASNET_DET_ALLOW_UNSAFE_YAML=1, which
warns), no key twice, ``_BASE_`` files merged as fvcore merges them and checked (cycles, depth, types).

The one-line errors of every entry point are in tests/robustness/test_bad_input.py; this file checks the loader itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fvcore.common.config import CfgNode

from nasnet_det.classification.config import get_cfg as classification_defaults
from nasnet_det.config import load_cfg
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.yaml_config import ALLOW_UNSAFE_ENV, load_config_tree

REPO = Path(__file__).resolve().parents[2]


def _tagged(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "made_by_config"
    config = tmp_path / "tag.yaml"
    config.write_text(f"SOLVER:\n  BASE_LR: 0.1\n  X: !!python/object/apply:os.mkdir ['{folder}']\n")
    return config, folder


@pytest.mark.parametrize("switch", [None, "0", ""])
def test_a_python_tag_runs_nothing_without_the_switch(tmp_path, monkeypatch, switch):
    config, folder = _tagged(tmp_path)
    if switch is None:
        monkeypatch.delenv(ALLOW_UNSAFE_ENV, raising=False)
    else:
        monkeypatch.setenv(ALLOW_UNSAFE_ENV, switch)
    with pytest.raises(BadInputError, match=r"tag\.yaml line 3: the tag !!python/object/apply:os\.mkdir"):
        load_cfg(classification_defaults(), config)
    assert not folder.exists()


def test_a_python_tag_in_a_base_file_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNSAFE_ENV, raising=False)
    config, folder = _tagged(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: tag.yaml\n")
    with pytest.raises(BadInputError, match="tag.yaml line 3"):
        load_config_tree(child)
    assert not folder.exists()


def test_the_switch_loads_python_objects_with_a_warning(tmp_path, monkeypatch, caplog):
    config, folder = _tagged(tmp_path)
    monkeypatch.setenv(ALLOW_UNSAFE_ENV, "1")
    with caplog.at_level(logging.WARNING):
        tree = load_config_tree(config)
    assert folder.is_dir()  # the code ran, as asked
    assert tree.merged == {"SOLVER": {"BASE_LR": 0.1, "X": None}}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and ALLOW_UNSAFE_ENV in warnings[0].getMessage()
    assert "tag.yaml" in warnings[0].getMessage() and "line 3" in warnings[0].getMessage()


def test_readers_of_keys_only_run_nothing_even_with_the_switch(tmp_path, monkeypatch):
    """The pipeline hashes a stage's config files (config_chain) in its own process: the Python objects are for
    the stage's tool to build, once."""
    from nasnet_det.pipeline.stages.base import config_chain

    config, folder = _tagged(tmp_path)
    monkeypatch.setenv(ALLOW_UNSAFE_ENV, "1")
    assert load_config_tree(config, python_objects=False).merged["SOLVER"]["X"] == [str(folder)]
    assert len(config_chain("search", "SEARCH.CONFIG_FILE", str(config))) == 1
    assert not folder.exists()


def test_a_repeated_key_names_the_key_and_both_lines(tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text("SOLVER:\n  BATCH_SIZE: 0\n  MAX_STEPS: 2\n  BATCH_SIZE: 8\n")
    with pytest.raises(BadInputError, match=r"dup\.yaml: key SOLVER\.BATCH_SIZE is given twice \(lines 2 and 4\)"):
        load_cfg(classification_defaults(), config)


def test_a_key_in_two_sections_and_yaml_merge_keys_are_not_repeats(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("base: &b {X: 1, Y: 2}\nA: {X: 1}\nB:\n  <<: *b\n  X: 3\n")
    assert load_config_tree(config).merged == {"base": {"X": 1, "Y": 2}, "A": {"X": 1}, "B": {"X": 3, "Y": 2}}


def test_a_base_used_twice_is_not_a_cycle(tmp_path):
    (tmp_path / "root.yaml").write_text("A: {X: 1, Y: 1}\n")
    (tmp_path / "left.yaml").write_text("_BASE_: root.yaml\nA: {X: 2}\n")
    (tmp_path / "right.yaml").write_text("_BASE_: root.yaml\nA: {Y: 3}\n")
    (tmp_path / "top.yaml").write_text("_BASE_: [left.yaml, right.yaml]\nB: 4\n")
    tree = load_config_tree(tmp_path / "top.yaml")
    assert tree.merged == CfgNode.load_yaml_with_base(str(tmp_path / "top.yaml"))  # fvcore's merge
    assert [Path(p).name for p, _ in tree.files] == ["root.yaml", "left.yaml", "root.yaml", "right.yaml", "top.yaml"]


def test_a_chain_of_64_files_is_read(tmp_path):
    for i in range(63):
        (tmp_path / f"c{i}.yaml").write_text(f"_BASE_: c{i + 1}.yaml\nK{i}: {i}\n")
    (tmp_path / "c63.yaml").write_text("LAST: true\n")
    assert len(load_config_tree(tmp_path / "c0.yaml").merged) == 64


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_the_projects_configs_read_as_fvcore_read_them(config):
    assert load_config_tree(REPO / config).merged == CfgNode.load_yaml_with_base(str(REPO / config))


def test_through_the_training_cli_the_switch_runs_the_tag_and_warns(tmp_path, monkeypatch, caplog, capsys):
    from nasnet_det.classification.cli import main

    folder = tmp_path / "made_by_config"
    config = tmp_path / "tag.yaml"
    # str(os.mkdir(...)) is "None": an unknown data source, so the run stops right after loading the config
    config.write_text(f"_BASE_: {REPO / 'configs' / 'train' / 'cifar10_smoke.yaml'}\nDATA:\n  SOURCE: "
                      f"!!python/object/apply:builtins.str [!!python/object/apply:os.mkdir ['{folder}']]\n")
    monkeypatch.delenv(ALLOW_UNSAFE_ENV, raising=False)
    assert main(["--config-file", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert "tag.yaml line 3: the tag !!python/object/apply:builtins.str" in capsys.readouterr().err
    assert not folder.exists()
    monkeypatch.setenv(ALLOW_UNSAFE_ENV, "1")
    with caplog.at_level(logging.WARNING):
        assert main(["--config-file", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert folder.is_dir()
    assert any(ALLOW_UNSAFE_ENV in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("config", ["configs/search/smoke.yaml", "configs/train/cifar10_smoke.yaml",
                                    "configs/detection/smoke-nasnet-c4.yaml", "configs/pipeline/smoke.yaml"])
def test_a_config_load_reads_each_of_its_files_once(config: str, monkeypatch):
    """MODEL.NASNET.PRESET is applied before the file's own keys from the one read of the file (was: read four
    times per load, by the loader, the preset step, the per-file sizing step and merge_from_file)."""
    import builtins
    import collections
    import os

    from nasnet_det.pipeline.config import load_pipeline_config
    from search.config import load_cfg as load_search_cfg

    def load_detection(path: Path) -> CfgNode:
        from nasnet_det.detection.config import get_nasnet_cfg

        return load_cfg(get_nasnet_cfg(), path)

    loaders = {"search": load_search_cfg, "train": lambda p: load_cfg(classification_defaults(), p),
               "detection": load_detection, "pipeline": load_pipeline_config}
    loader = loaders[config.split("/")[1]]
    loader(REPO / config)  # imports done, caches warm: only the load below is counted
    reads: collections.Counter[str] = collections.Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(".yaml"):
            reads[os.path.realpath(file)] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    loader(REPO / config)
    assert str((REPO / config).resolve()) in reads and set(reads.values()) == {1}, dict(reads)
