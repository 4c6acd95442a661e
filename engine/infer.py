"""Ask a trained model about an image: the answer, the tool calls it made and the crops it saw.

    from engine.infer import Assistant
    bot = Assistant("runs/tiny-qwen2_5_vl", tools=["crop"])          # any model folder, checkpoint, LoRA or run
    reply = bot.ask("photo.png", "What color is the square?")
    print(reply.answer, reply.tool_calls, reply.crops)
    replies = bot.ask_many([("a.png", "Which shape?"), ("b.png", "How many?")])   # batched

The prompt is built exactly as training builds it (data.system_prompt, data.question_template, data.prefill and the
enabled tools' signatures). A model from a run (a run folder, a checkpoint, a LoRA checkpoint or merged export) is
asked with the run's own config.toml by default, so it is asked the way it was taught; `config` replaces it, and each
setting that then changes how the model is asked is printed as one line ("infer: rollout.max_new_tokens 48 (run
trained with 96)"; `verbose=False` keeps quiet, `bot.notes` holds them). A plain model folder uses the defaults or
`config`. `tools`
enables tools (rollout.tools; the inline protocol, Qwen's `<tool_call>`, unless the config names multiturn);
`tools=[]` or a config without a tool protocol answers without tools. Answers are greedy unless `temperature` > 0.
Each tool output image is saved under `crops_dir` (`reply.crops`: their paths). The command line is infer.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from data.example import Example
from engine.config.settings import Config
from engine.report.evaluate import prompts_for
from engine.setup.layers import asking_differences, run_config
from engine.setup.model_source import load_any, resolve_model
from engine.rollout.rollout import rollout
from engine.rollout.tool_calls import make_protocol
from rewards.format import extract_answer


@dataclass
class Reply:
    question: str
    answer: str | None  # the extracted final answer (<answer>…</answer> or JSON "answer"); None if there is none
    response: str  # everything the model wrote
    tool_calls: list[dict] = field(default_factory=list)  # name, args (model's frame), ok, error, box_pixels
    crops: list[str] = field(default_factory=list)  # where each tool output image was saved
    stop: str = ""  # eos, length, limit


def _source(image) -> str | bytes:
    """A path (str or Path) or a PIL image, as an Example's image source."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    return str(image)


class Assistant:
    def __init__(self, model: str | Path, *, config: Config | None = None, tools: list[str] | None = None,
                 temperature: float = 0.0, crops_dir: str | Path = "runs/infer", device: str | None = None,
                 verbose: bool = True):
        source = resolve_model(model)
        run_cfg = run_config(source)  # how the model was trained, when it comes from a run
        cfg = config or run_cfg or Config()
        rollout_cfg = cfg.rollout
        if tools is not None:
            protocol = "inline" if tools and rollout_cfg.protocol is None else rollout_cfg.protocol
            rollout_cfg = replace(rollout_cfg, tools=list(tools), protocol=protocol if tools else rollout_cfg.protocol)
        rollout_cfg = replace(rollout_cfg, temperature=temperature, group_size=1)  # one answer per question
        rollout_cfg.validate()
        self.cfg = replace(cfg, rollout=rollout_cfg)
        if run_cfg is None:
            self.notes = [f"infer: {model} is not from a run (no config.toml beside it): asking with "
                          f"{'the given config' if config else 'the defaults (pass config=...)'}"]
        else:  # what the given config or tools change against the run's own, one line each
            self.notes = asking_differences(run_cfg, replace(self.cfg, rollout=replace(
                rollout_cfg, temperature=run_cfg.rollout.temperature, group_size=run_cfg.rollout.group_size)), "infer")
        for line in self.notes if verbose else ():
            print(line)
        m = cfg.model
        self.vlm, self.source = load_any(model, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                         device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                                         box_frame=m.box_frame or None, min_pixels=cfg.data.min_pixels,
                                         max_pixels=cfg.data.max_pixels)
        self.protocol = make_protocol(rollout_cfg.protocol, self.vlm, tools=rollout_cfg.tools)
        self.crops_dir = Path(crops_dir)
        self.generator = torch.Generator(device=next(self.vlm.model.parameters()).device).manual_seed(cfg.train.seed)
        self._asked = 0  # numbers the saved crops across calls

    def ask(self, image, question: str, choices: list[str] = ()) -> Reply:
        """One question about one image (a path or a PIL image); `choices`: a multiple-choice question's options,
        which the question template shows as training showed them ({options}, {choices})."""
        example = Example(question=question, answers=[], images=[_source(image)], choices=list(choices))
        return self.ask_many([example])[0]

    @torch.no_grad()
    def ask_many(self, pairs, batch_size: int = 16) -> list[Reply]:
        """Replies to (image, question) pairs, or to data.Example records, sampled `batch_size` at a time."""
        examples = [p if isinstance(p, Example) else Example(question=p[1], answers=[], images=[_source(p[0])])
                    for p in pairs]
        replies = []
        for start in range(0, len(examples), batch_size):
            prompts = prompts_for(examples[start:start + batch_size], self.vlm, self.cfg)
            trajs = rollout(self.vlm, prompts, self.cfg.rollout, protocol=self.protocol, generator=self.generator)
            replies += [self._reply(t) for t in trajs]
        return replies

    def _reply(self, t) -> Reply:
        crops = []
        if len(t.images) > len(t.prompt.images):
            self.crops_dir.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(t.images[len(t.prompt.images):], 1):
            path = self.crops_dir / f"{self._asked:04d}_{k}.png"
            image.save(path)
            crops.append(str(path))
        self._asked += 1
        calls = [{"name": c.name, "args": c.args, "ok": c.ok, "error": c.error, "box_pixels": c.box_pixels}
                 for c in t.tool_calls]
        return Reply(question=t.prompt.example.question, answer=extract_answer(t.text), response=t.text,
                     tool_calls=calls, crops=crops, stop=t.stop)
