"""The viewer on a folder with no dumped rollouts says why and what to do: a run not yet at its first
train.sample_every RL steps (the value read from its config.toml, and the resume flag that changes it), or a folder
that is not a run at all.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_view_no_dump.py`.
"""

from tools import view


def test_a_run_without_a_dump_names_its_sample_every_and_how_to_change_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\nsample_every = 20\n")
    assert view.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "This run dumps rollouts every 20 RL steps (train.sample_every 20), and the last step's when it ends" in err
    assert f"python train.py --resume {run} --train.sample_every N" in err
    (run / "config.toml").write_text("[train]\nsample_every = 0\n")
    assert view.main([str(run)]) == 2
    assert "at no step (train.sample_every 0)" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_said_to_be_none(tmp_path, capsys):
    assert view.main([str(tmp_path)]) == 2
    assert "It is not a run folder either (no config.toml): pass the train.out_dir" in capsys.readouterr().err
