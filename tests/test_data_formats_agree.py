"""Every data format a user brings, fed to all three entry points: `python -m data.check`, train.py and
eval.py read the same examples from it (one loader decides: data.load_examples via engine/setup/data_setup.py).
The same three colours examples are written in each format; a format with splits gets a different test split,
which is what evaluation reads by default."""

import base64
import io
import json
from pathlib import Path

import pytest

import eval as eval_cli
import train
from data.check import main as check_main
from data.synth import generate

TRAIN = generate("colors", 3, seed=11)
TEST = generate("colors", 2, seed=12)


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jsonl_paths(folder: Path, samples) -> Path:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(samples):
        s.image.save(folder / "imgs" / f"{i}.png")
        lines.append({"image": f"imgs/{i}.png", "question": s.question, "answer": s.answer})
    (folder / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "data.jsonl"


def jsonl_base64(folder: Path, samples) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"image_data": "data:image/png;base64," + base64.b64encode(png(s.image)).decode(), "question": s.question,
              "answer": s.answer} for s in samples]
    (folder / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "data.jsonl"


def seed001(folder: Path, samples) -> Path:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(samples):
        s.image.save(folder / "imgs" / f"{i}.png")
        lines.append({"image_path": f"imgs/{i}.png", "image_id": str(i),
                      "QnA": [{"Q": s.question, "A3": f"<think>Look.</think><answer>{s.answer}</answer>"}]})
    (folder / "qna.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "qna.jsonl"


def dataset(samples):
    datasets = pytest.importorskip("datasets", reason="these formats are written with `datasets` (requirements-dev)")

    return datasets.Dataset.from_dict({"image": [s.image for s in samples], "question": [s.question for s in samples],
                                       "answer": [s.answer for s in samples]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "question": datasets.Value("string"),
                                                                  "answer": datasets.Value("string")}))


def hf_dataset(folder: Path, samples) -> Path:
    dataset(samples).save_to_disk(str(folder))  # one Dataset: state.json says "_split": null
    assert json.loads((folder / "state.json").read_text())["_split"] is None
    return folder


def hf_dataset_dict(folder: Path, samples) -> Path:
    train, test = dataset(samples), dataset(TEST)  # (skips the test when `datasets` is missing)
    import datasets

    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return folder


def parquet_file(folder: Path, samples) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dataset(samples).to_parquet(str(folder / "data.parquet"))
    return folder / "data.parquet"


def parquet_folder(folder: Path, samples) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dataset(samples).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    dataset(TEST).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    return folder


# format name as data.check prints it, and whether the held-out read is the test split
WRITERS = {"jsonl_paths": (jsonl_paths, "jsonl", False), "jsonl_base64": (jsonl_base64, "jsonl", False),
           "seed001": (seed001, "seed001", False), "hf_dataset": (hf_dataset, "hf_disk", False),
           "hf_dataset_dict": (hf_dataset_dict, "hf_disk", True), "parquet_file": (parquet_file, "parquet", False),
           "parquet_folder": (parquet_folder, "geometry3k", True)}
SMALL = ["--train.threads", "1", "--train.tensorboard", "false", "--train.stage", "sft", "--sft.steps", "1",
         "--sft.batch_size", "2", "--rollout.max_new_tokens", "4", "--data.overlong", "truncate"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_check_train_and_eval_read_the_same_examples(kind, tmp_path, capsys):
    write, fmt, split = WRITERS[kind]
    path = write(tmp_path / kind, TRAIN)
    held_out = TEST if split else TRAIN
    assert check_main([str(path)]) == 0
    checked = capsys.readouterr().out
    if split:  # every split is checked, each one counted
        assert f"format: {fmt}\nexamples: {len(TRAIN) + len(TEST)} (skipped 0)\nsplits: " in checked
        assert f"train {len(TRAIN)}" in checked and f"test {len(TEST)}" in checked
    else:
        assert f"format: {fmt}\nexamples: {len(TRAIN)} (skipped 0)" in checked
    assert f"question: {TRAIN[0].question}\n  answers: ['{TRAIN[0].answer}']" in checked

    run = tmp_path / "run"
    assert train.main(["--data.train", str(path), "--data.eval", str(path), "--train.out_dir", str(run), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert f"data: {len(TRAIN)} training examples ({fmt})" in printed
    assert f"data: {len(held_out)} held-out examples ({fmt})" in printed
    references = [json.loads(line)["reference"] for line in open(run / "eval_after_sft.jsonl")]
    assert references == [s.answer for s in held_out]

    model = json.loads((run / "summary.json").read_text())["final_checkpoint"]
    out = tmp_path / "eval"
    assert eval_cli.main(["--data.eval", str(path), "--model.path", model, "--rollout.max_new_tokens", "4",
                          "--out", str(out)]) == 0  # held-out data only: no data.train
    assert json.loads((out / "metrics.json").read_text())["num_examples"] == len(held_out)
    assert [json.loads(line)["reference"] for line in open(out / "predictions.jsonl")] == [s.answer for s in held_out]
