"""The model report reproduces the paper's parameter and mult-add counts; the CLI answers clearly."""

from __future__ import annotations

import json
from pathlib import Path

from nasnet_det.cli import main


def test_profile_matches_paper_within_tolerance(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "--checked-only", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert rows["NASNet-A 6@768 (CIFAR-10)"]["params"] == 3_346_538
    assert rows["NASNet-A 4@1056 (mobile)"]["params"] == 5_289_978
    assert rows["NASNet-A 6@4032 (large)"]["params"] == 88_753_150
    for r in rows.values():
        assert r["within_tolerance"], r
        assert abs(r["params"] / (r["paper_params_m"] * 1e6) - 1) <= 0.02
        if r["paper_mult_adds_m"]:
            assert abs(r["mult_adds"] / (r["paper_mult_adds_m"] * 1e6) - 1) <= 0.05
    printed = capsys.readouterr().out
    assert "NASNet-A 6@4032 (large)" in printed and "OUT OF TOLERANCE" not in printed


def test_genotype_command(capsys, tmp_path):
    assert main(["genotype", "nasnet_a"]) == 0
    assert json.loads(capsys.readouterr().out)["reduce"]["concat"] == [3, 4, 5, 6]
    assert main(["genotype", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_run_is_the_smoke_pipeline(monkeypatch):
    """`make run` calls `nasnet-det run`: the smoke pipeline from the checkout's configs, options passed on."""
    import nasnet_det.pipeline.cli as pipeline_cli

    seen = []
    monkeypatch.setattr(pipeline_cli, "main", lambda argv: seen.append(argv) or 0)
    assert main(["run", "--until", "search"]) == 0
    (argv,) = seen
    assert argv[0] == "--config-file" and Path(argv[1]).is_file() and argv[1].endswith("configs/pipeline/smoke.yaml")
    assert argv[2:] == ["--until", "search"]


def test_a_project_command_missing_from_stale_package_metadata_says_to_reinstall(monkeypatch, capsys):
    import nasnet_det.cli as cli

    assert set(cli.OWN_COMMANDS) <= set(cli._plugins())  # this install is current
    monkeypatch.setattr(cli, "_plugins", lambda: {})  # an install from before `pipeline` became an entry point
    assert main(["pipeline", "--help"]) == 2
    err = capsys.readouterr().err
    assert "'pipeline' command is not registered" in err and "reinstall the package (make setup" in err
