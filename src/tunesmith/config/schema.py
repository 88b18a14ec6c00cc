"""The one typed configuration of a tunesmith run.

Every field is documented once here, in the docstring under it: `tunesmith train --help-config`
(config/help.py) prints each key with its type, its default and the docstring's first sentence (and
a later one that starts by saying what a `None`/`auto` default means), so that sentence should stand
alone. Models are frozen and forbid unknown keys, so a typo is an error, never a silent None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, docstrings as help."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    name: str = "smollm2-135m-instruct"
    """A built-in name (`smollm2-135m-instruct`), a local Hugging Face model folder, or a hub id."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype at load. `auto`: bfloat16 on a GPU that supports it, float32 on CPU."""

    attention: Literal["auto", "segments", "sdpa", "eager", "flex_attention", "flash_attention_2"] = "auto"
    """Attention kernel. `auto`: `segments` on CPU (sdpa run once per packed conversation, no
    whole-row mask), sdpa on a GPU. Packed batches need one that keeps packed conversations apart;
    all of these do (transformers builds the mask from position_ids)."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""

    load_in_8bit: bool = False
    """`method: lora` on a base model quantized to 8 bits (bitsandbytes LLM.int8; GPU or CPU backend)."""

    adapter: str | None = None
    """Start from this LoRA adapter (a run folder such as `runs/sft-run`, or an adapter folder) and
    train it on, instead of a fresh one: the usual SFT-then-DPO path. Its base must be `name`."""


FormatName = Literal["auto", "messages", "sharegpt", "alpaca", "qa", "prompt_completion", "text", "tokens"]
ColumnKey = Literal[
    "messages",
    "tools",
    "id",
    "conversations",
    "from",
    "value",
    "system",
    "instruction",
    "input",
    "output",
    "history",
    "question",
    "answer",
    "prompt",
    "completion",
    "text",
    "input_ids",
    "labels",
]
"""The canonical keys a file's own column names can be mapped to (see data/formats.py)."""
RoleName = Literal["system", "user", "assistant", "tool", "function_call"]


class DataSource(Section):
    """One file of a split, when a split mixes several or needs its own format settings."""

    path: str
    """A file (.jsonl .json .csv .tsv .parquet), a `datasets` folder, `hf:NAME[:SPLIT]`, or `bundled:NAME/FILE`."""

    weight: float = Field(1.0, gt=0)
    """Share of this file: 0.5 takes a fixed seeded half of its rows, 2 repeats them twice."""

    format: FormatName | None = None
    """Row format of this file; default `data.format`."""

    columns: dict[ColumnKey, str] | None = None
    """Column names of this file; default `data.columns`."""

    roles: dict[str, RoleName] | None = None
    """ShareGPT role names of this file; default `data.roles`."""


DataFiles = str | list[str | DataSource]


class DataConfig(Section):
    train: DataFiles
    """Training data: a path, `bundled:NAME/FILE`, `hf:NAME[:SPLIT]`, or a list of them / of {path, weight, ...}."""

    validation: DataFiles | None = None
    """Validation data (eval loss during training). Same forms as `train`."""

    test: DataFiles | None = None
    """Held-out data for `tunesmith eval` (generation metrics, base vs tuned)."""

    format: FormatName = "auto"
    """Row format: messages, sharegpt, alpaca, qa, prompt_completion, text, tokens; `auto` detects it per file
    and says what it found and why."""

    columns: dict[ColumnKey, str] = {}
    """Your column names for the canonical ones, e.g. {instruction: task, output: answer}."""

    roles: dict[str, RoleName] = {}
    """ShareGPT `from` values mapped to roles, merged over the defaults, e.g. {bot: assistant}."""

    on_bad_row: Literal["fail", "skip"] = "fail"
    """`fail`: any bad row stops before the model loads, naming file:line and field. `skip`: bad rows are left
    out, counted, and written to quarantine.jsonl in the run folder."""


class TemplateConfig(Section):
    chat_template: str = "model"
    """`model`: the model's own chat template; a built-in one (chatml, llama3, mistral, gemma, phi3, alpaca)
    for models without one; or a path to a `.jinja` file. It is saved with the adapter, so chat, eval and
    export use exactly the template training used."""

    train_on: Literal["assistant", "last", "all", "completion"] = "assistant"
    """Which tokens train: every assistant turn with its end-of-turn token (`assistant`), the last one
    (`last`), every token (`all`), or the completion of prompt/completion rows (`completion`)."""

    max_length: int = Field(1024, gt=8)
    """Longest tokenized conversation; longer rows are cut and counted in the data report."""

    variables: dict[str, bool | int | float | str] = {}
    """Extra variables the chat template reads, e.g. `enable_thinking: false`; every render gets them, at
    training and at inference (they are saved with the adapter)."""

    drop: list[Literal["reasoning", "tools"]] = []
    """Message fields to leave out before rendering: `reasoning` (reasoning_content/thinking fields and a
    leading <think>...</think> in answers) or `tools` (the tool schemas). Without this, a row whose reasoning or
    tools the template does not render is refused rather than trained without them."""


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    """Rank of the low-rank update."""

    alpha: float = Field(32, gt=0)
    """Scale numerator: the update is multiplied by alpha / r."""

    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input. 0 is fastest and fine for small, clean data."""

    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or `all-linear` for every linear layer except the output head."""

    rslora: bool = False
    """Rank-stabilized LoRA: scale the update by alpha / sqrt(r) instead of alpha / r."""

    dora: bool = False
    """DoRA: learn a magnitude per output feature as well as the low-rank direction (slower)."""

    init: Literal["default", "gaussian", "loftq", "pissa", "olora"] = "default"
    """How the adapter starts. `default` and `gaussian` start as the base model; `loftq` (method: qlora)
    starts from what 4-bit quantization lost, closer to the full-precision base; `pissa` and `olora`
    (unquantized bases) start from W's principal directions and often converge faster. See
    docs/lora-init.md."""


class TrainConfig(Section):
    objective: Literal["sft", "dpo", "orpo", "simpo", "kto"] = "sft"
    """What the run learns. `sft`: the answers of chat rows (next-token loss). `dpo`, `orpo`, `simpo`:
    prefer the chosen answer of preference pairs over the rejected one; `kto`: raise good answers and
    lower bad ones, from rows with a boolean label (or pairs, split into a good and a bad row)."""

    beta: float | None = Field(None, gt=0)
    """Preference strength. None: 0.1 for dpo, kto and orpo (the papers' and TRL's default: a small beta
    lets the model move far from the reference), 2.0 for simpo (its paper's range is 2 to 2.5)."""

    dpo_loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """DPO's loss on the reward margin: `sigmoid` (the DPO paper), `ipo` (squared, regularized towards a
    fixed margin; robust when one answer is always preferred), `hinge` (SLiC)."""

    sft_weight: float = Field(0.0, ge=0)
    """`dpo`: add this much of the chosen answers' next-token loss (RPO). DPO alone can lower the chosen
    answer's likelihood while it widens the margin, and the model then drops what both answers share
    (a slot key, say); 1.0 keeps the chosen answer likely. 0 is plain DPO, as in the paper and TRL."""

    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Conservative DPO and SimPO: the share of pairs assumed mislabelled. 0 trusts every label."""

    simpo_gamma: float = Field(0.5, ge=0)
    """SimPO's target margin between the chosen and rejected average log-probabilities (its paper's value)."""

    kto_desirable_weight: float = Field(1.0, gt=0)
    """KTO's weight on good answers. Raise it (or lower the other) when good rows are rarer than bad."""

    kto_undesirable_weight: float = Field(1.0, gt=0)
    """KTO's weight on bad answers."""

    epochs: float | None = Field(None, gt=0)
    """Passes over the training data (fractions allowed). Ignored when `max_steps` is set. Unset: enough
    for about 60 optimizer steps, at most 8 (training/defaults.py; the choice is printed and recorded)."""

    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps, whatever `epochs` says."""

    batch_size: int | None = Field(None, gt=0)
    """Micro-batch size: packed bins per step with `packing: bins`, conversations with `packing: none`,
    pairs for preference objectives. Unset: the largest up to 8 that gives at least 32 steps an epoch."""

    packing: Literal["bins", "none"] | None = None
    """`bins`: conversations packed best-fit-decreasing into bins of `template.max_length` tokens, no padding,
    no attention across conversations. `none`: one conversation per row, padded. Unset: bins when the data
    fills at least 32 of them, else none."""

    gradient_accumulation: int = Field(1, gt=0)
    """Micro-batches per optimizer step. Loss is normalized over the step's trained tokens."""

    learning_rate: float | None = Field(None, gt=0)
    """Peak learning rate (AdamW). Unset: LoRA 2e-4 x sqrt(1000 / optimizer steps) within 2e-4..1e-3, a
    tenth of that for a full fine-tune; 5e-5 (LoRA) or 1e-6 (full) for preference objectives."""

    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    """Decay after warmup."""

    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of the steps spent warming up linearly from 0."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""

    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""

    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision. `auto`: bf16 where the hardware runs it natively, else fp32."""

    seed: int = 42
    """Seeds data order, adapter init and dropout."""

    logging_steps: int = Field(1, gt=0)
    """Write a line to metrics.jsonl every this many optimizer steps."""

    optimizer: Literal["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"] = "adamw"
    """`adamw` (torch), `adamw_fused` (CUDA), `adamw_8bit` (bitsandbytes), `paged_adamw_8bit` (bitsandbytes, CUDA),
    `sgd`, `adafactor`."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less memory, about a third more compute."""

    save_steps: int | None = Field(None, gt=0)
    """Write a checkpoint every this many optimizer steps (and always at the end). None: only at the end."""

    keep_checkpoints: int = Field(2, ge=1)
    """Keep the newest this many checkpoints, plus the best by eval loss when there is a validation split."""

    eval_steps: int | None = Field(None, gt=0)
    """Eval loss on the validation split every this many steps. None: once per epoch."""

    early_stopping_patience: int | None = Field(None, gt=0)
    """Stop when eval loss has not improved for this many evaluations (needs a validation split)."""

    load_best_at_end: bool = False
    """At the end, keep the weights of the checkpoint with the lowest eval loss (needs a validation split)."""

    @property
    def preference_beta(self) -> float:
        """`beta`, or the objective's default when it is None."""
        if self.beta is not None:
            return self.beta
        return 2.0 if self.objective == "simpo" else 0.1


class TrackingConfig(Section):
    backends: list[Literal["mlflow", "wandb", "tensorboard"]] = []
    """Experiment trackers to log to, besides metrics.jsonl (always written). Each is an optional extra."""

    project: str = "tunesmith"
    """MLflow experiment / W&B project name."""

    mlflow_uri: str | None = None
    """MLflow tracking URI (a server URL, a sqlite `.db` path, or a folder for mlflow.db). Default:
    MLFLOW_TRACKING_URI, else sqlite ./mlflow.db. A `user:password@` in it is handed to MLflow as
    MLFLOW_TRACKING_USERNAME/PASSWORD and written nowhere (config.yaml, trackers and model card show
    `<redacted>`)."""

    wandb_mode: Literal["online", "offline"] = "offline"
    """W&B mode. `offline` writes to the run folder's wandb/ and syncs later with `wandb sync`."""


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """How several processes share the work: DDP (a full copy per GPU), FSDP2 (sharded parameters, gradients
    and optimizer state), or DeepSpeed ZeRO."""

    zero_stage: Literal[1, 2, 3] = 2
    """DeepSpeed ZeRO stage (strategy: deepspeed)."""

    cpu_offload: bool = False
    """FSDP / ZeRO: keep sharded parameters and optimizer state in CPU memory."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend. `auto`: nccl on CUDA, gloo on CPU."""


class EvalConfig(Section):
    metrics: list[
        Literal[
            "exact",
            "normalized",
            "contains",
            "regex",
            "json_exact",
            "json_valid",
            "json_fields",
            "rouge_l",
            "tool_call",
            "tool_name",
        ]
        | Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    ] = ["exact"]
    """Generation metrics on the test split: `exact` (same text), `normalized` (same after lowercasing and
    dropping punctuation, articles and extra spaces), `contains` (the reference appears in the answer),
    `regex` (the answer matches `eval.regex`), `json_exact` (same parsed JSON), `json_valid` (a JSON
    object), `json_fields` (share of the reference's JSON leaf fields the answer has equal), `rouge_l`
    (ROUGE-L F1 over words), `tool_call` (the same `<tool_call>` JSON calls: names and arguments), `tool_name`
    (the same tools called), or your own as `module:function` (function(prediction, reference) -> 0..1)."""

    regex: str | None = None
    """Pattern for the `regex` metric (Python `re.search` on the answer)."""

    compare_base: bool = True
    """Also evaluate the base model, to show what the fine-tune changed."""

    max_new_tokens: int | None = Field(None, gt=0)
    """Generation cap. Default: the longest reference answer plus a margin."""

    batch_size: int = Field(32, gt=0)
    """Prompts generated together (left-padded). Larger is faster until memory runs out."""

    limit: int | None = Field(None, gt=0)
    """Evaluate at most this many test rows (the first ones)."""

    @model_validator(mode="after")
    def _regex_is_usable(self) -> EvalConfig:
        import re

        if "regex" in self.metrics and not self.regex:
            raise ValueError("the regex metric needs eval.regex (the pattern answers must match)")
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"eval.regex is not a valid regular expression: {err}") from None
        return self


class Config(Section):
    """A whole run. `model`, `data` and the rest are sections; see each for its fields."""

    name: str | None = None
    """Run name, the folder under `output_dir`. Default: the config file's name and the time."""

    output_dir: str = "runs"
    """Where run folders are created (relative to the working directory)."""

    method: Literal["lora", "qlora", "full"] = "lora"
    """`lora` trains a small adapter on the frozen base model; `qlora` the same on a 4-bit NF4 base
    (bitsandbytes, on a GPU or its CPU backend); `full` trains every weight."""

    model: ModelConfig = ModelConfig()
    data: DataConfig
    template: TemplateConfig = TemplateConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    distributed: DistributedConfig = DistributedConfig()

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    """Where each key was set ("run.yaml:12" or "--set a.b=c"), for errors found after loading."""

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> Config:
        if self.model.adapter is not None and self.method == "full":
            raise ValueError(
                "model.adapter trains an existing LoRA adapter on; with method: full merge it first "
                "(`tunesmith merge RUN`) and name RUN/merged as model.name"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in {".", ".."}):
            raise ValueError("must be a plain folder name (no '/')")
        return value

    def origin(self, key: str) -> str:
        """Where `key` (dotted) was set, or "config" if it came from a default.

        >>> Config.model_validate({"data": {"train": "a.jsonl"}}).origin("data.train")
        'config'
        """
        return self._origins.get(key, "config")

    def with_origins(self, origins: dict[str, str]) -> Config:
        self._origins.update(origins)
        return self

    def run_dir(self) -> Path:
        """The run folder this config writes to (`name` must be set)."""
        if self.name is None:
            raise ValueError("config has no run name yet")
        return Path(self.output_dir) / self.name
