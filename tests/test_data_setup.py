"""The run's data settings: num_samples subsampling, epochs as step counts, split defaults for data with and
without splits, the image processor's pixel bounds and the 448-px main-image rule (engine/setup/data_setup.py,
models/load.py, engine/rollout/trajectory.py)."""

import json

import pytest
from PIL import Image

from data import load_examples, subsample
from engine.config.settings import Config
from engine.config.parsing import build_config
from engine.setup.data_setup import load_eval, load_train, with_epochs
from tests.data_fixtures import save_png, seed003_dataset, write_lines


def jsonl(tmp_path, n: int):
    save_png(tmp_path / "a.png", (8, 8))
    return write_lines(tmp_path / "d.jsonl", [{"image": "a.png", "question": f"q{i}", "answer": f"a{i}"}
                                               for i in range(n)])


def config(*overrides: str) -> Config:
    return build_config(Config, overrides=list(overrides))


def test_num_samples_draws_a_seeded_subset_in_data_order(tmp_path):
    path = jsonl(tmp_path, 10)
    picked = [e.question for e in load_train(config("--data.train", str(path), "--data.num_samples", "4"))]
    again = [e.question for e in load_train(config("--data.train", str(path), "--data.num_samples", "4"))]
    other = [e.question for e in load_train(config("--data.train", str(path), "--data.num_samples", "4",
                                                   "--train.seed", "1"))]
    assert len(picked) == 4 and picked == again and picked != other
    assert picked == sorted(picked, key=lambda q: int(q[1:]))  # data order kept
    assert len(set(picked)) == 4
    examples = load_examples(path).examples
    assert subsample(examples, 0, 0) == examples and subsample(examples, 99, 0) == examples


def test_epochs_set_the_step_counts(tmp_path):
    cfg = config("--data.train", "x", "--sft.epochs", "3", "--sft.batch_size", "16", "--rl.epochs", "0.5",
                 "--rollout.prompts_per_step", "8")
    resolved = with_epochs(cfg, 100)
    assert resolved.sft.steps == 19  # ceil(3 * 100 / 16) = ceil(18.75)
    assert resolved.rl.steps == 7  # ceil(0.5 * 100 / 8) = ceil(6.25)
    assert with_epochs(config("--data.train", "x", "--sft.steps", "5"), 100).sft.steps == 5  # epochs 0: as given


def test_epochs_stand_in_for_sft_steps_in_validation():
    with pytest.raises(ValueError, match="sft.steps is 0"):
        config("--data.train", "x", "--train.stage", "sft")
    assert config("--data.train", "x", "--train.stage", "sft", "--sft.epochs", "1").sft.epochs == 1


def test_a_single_dataset_reads_whole_and_a_dict_defaults_to_train_and_test(tmp_path):
    datasets = pytest.importorskip("datasets", reason="save_to_disk folders are written with `datasets` (requirements-dev)")

    single = tmp_path / "single"
    seed003_dataset().save_to_disk(str(single))
    assert json.loads((single / "state.json").read_text())["_split"] is None
    assert len(load_train(config("--data.train", str(single)), verbose=False)) == 3
    assert len(load_eval(config("--data.train", "x", "--data.eval", str(single)), verbose=False)) == 3
    with pytest.raises(ValueError, match=r"is a single dataset \(split None\), not a DatasetDict; drop the split"):
        load_train(config("--data.train", str(single), "--data.train_split", "train"), verbose=False)
    both = tmp_path / "dict"
    ds = seed003_dataset()
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(both))
    assert [e.answer for e in load_eval(config("--data.train", "x", "--data.eval", str(both)), verbose=False)] == ["dog"]
    chosen = config("--data.train", "x", "--data.eval", str(both), "--data.eval_split", "train")
    assert len(load_eval(chosen, verbose=False)) == 3


def test_pixel_bounds_reach_the_image_processor():
    from engine.trainer import load_policy
    from models.vision import encode_images

    image = Image.new("RGB", (224, 224))
    default = load_policy(config("--data.train", "x"), device="cpu")
    small = load_policy(config("--data.train", "x", "--data.max_pixels", str(56 * 56)), device="cpu")
    # the tiny model's own cap is 112x112 (grid 8x8); 56x56 pixels gives a 4x4 grid
    assert encode_images(default.image_processor, [image])[1].tolist() == [[1, 8, 8]]
    assert encode_images(small.image_processor, [image])[1].tolist() == [[1, 4, 4]]
    with pytest.raises(ValueError, match="min_pixels 4000 is above data.max_pixels 3136"):
        config("--data.train", "x", "--data.max_pixels", "3136", "--data.min_pixels", "4000")


def test_main_image_short_side_resizes_what_the_model_sees_not_the_original(tmp_path):
    from data import Example
    from engine.trainer import load_policy
    from engine.rollout.trajectory import build_prompt, resize_short_side

    assert resize_short_side(Image.new("RGB", (1000, 500)), 448).size == (896, 448)
    assert resize_short_side(Image.new("RGB", (100, 300)), 448).size == (448, 1344)
    vlm = load_policy(config("--data.train", "x", "--data.max_pixels", str(10**6)), device="cpu")
    path = save_png(tmp_path / "wide.png", (1000, 500))
    example = Example(question="q", answers=["a"], images=[str(path)])
    plain = build_prompt(example, vlm, system_prompt="", question_template="{question}")
    rule = build_prompt(example, vlm, system_prompt="", question_template="{question}", short_side=448)
    assert rule.images[0].size == plain.images[0].size == (1000, 500)  # crops and boxes use the original
    # the processor rounds 896x448 to multiples of 28 (grid of 14-px patches): 896/14 = 64, 448/14 = 32
    assert rule.grid_thw.tolist() == [[1, 32, 64]] and plain.grid_thw.tolist() != rule.grid_thw.tolist()
