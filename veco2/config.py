"""Typed run configuration: dataclasses loaded from YAML, with ``key.path=value`` overrides.

A config is built in three layers, later ones winning:

1. the dataclass defaults below (the documented defaults of every option);
2. YAML files (an ablation variant such as ``ablations/mlm_seq_tok.yaml``, a scale profile, ...);
3. overrides ``section.key=value`` from the command line or from Snakemake's config.

Unknown keys and bad values fail at once with a :class:`~veco2.errors.ConfigError` that names the
key, the file it came from and the allowed values.  The resolved config is saved next to every
output it produced (:func:`save_config`).

Options marked *reconstruction* are choices the VECO 2.0 paper (arXiv 2304.08205) does not
publish; their defaults are this suite's best guess, and the ablation/sweep machinery explores
them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .fileio import load_yaml

#: Field metadata of a setting that does not change the trained weights (where checkpoints go, how
#: often to log, what to evaluate afterwards ...): it may change between a run and its resumption,
#: and it is left out of :func:`weights_hash`.
KEEPS_WEIGHTS = {"affects_weights": False}


def _bookkeeping(default: Any) -> Any:
    return field(default=default, metadata=KEEPS_WEIGHTS)

# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    size: Literal["tiny", "small", "base", "large"] = "tiny"
    """The architecture by name (see ``veco2.model.SIZES``); ignored when ``init_from`` is set."""
    init_from: str | None = None
    """Initialise from a Hugging Face checkpoint (hub name such as ``xlm-roberta-base`` or a local
    path) instead of random weights."""
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    dropout: float = 0.1
    max_positions: int = 514
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    sparse_mlm_head: bool = True
    """Apply the MLM output layer only at masked positions (False: the full-vocabulary HF head at
    every position, kept for benchmarking against the plain way)."""


@dataclass
class DataConfig:
    corpus: str | None = "demo"
    """``demo`` (the embedded corpus), or a directory in the same layout: parallel pairs
    ``parallel/{train,dev,test}/en-LANG.tsv``, ``.jsonl`` or Moses ``en-LANG.en`` + ``en-LANG.LANG``;
    monolingual text ``mono/LANG.txt`` or ``.jsonl``; dictionaries ``dict/en-LANG.tsv``, MUSE-style
    ``.txt`` or FreeDict ``.tei``; each optionally gzipped (``docs/reliability.md``).  ``null`` (or
    ``""``): no corpus directory, the ``sources`` alone."""
    sources: list[dict] = field(default_factory=list)
    """More corpora, read after the corpus directory: a list of mappings, one source each (``role``:
    mono | parallel | dict; ``kind``: hub | files; the other keys in ``veco2.data.sources.SourceConfig``
    and ``docs/data.md#sources``)."""
    languages: list[str] = field(default_factory=list)
    """Non-English languages to use; empty = every language the corpus has (required without a
    corpus directory)."""
    dedup: bool = False
    """Drop repeated monolingual sentences and repeated pairs of each language (compared after case
    folding and whitespace normalisation; counted skips).  Off by default so that the shards of a
    corpus prepared before this option stay the same; on in the base and large configs."""
    max_chars: int | None = None
    """Drop sentences (pairs: either side) longer than this many characters (counted); null: no bound."""
    min_script_share: float | None = None
    """Drop sentences of a language whose share of letters in that language's script (pairs: also the
    English side in Latin) is below this (``veco2.data.sources.LANGUAGES``; counted); null: off."""
    prepare_workers: int = _bookkeeping(1)
    """Processes that tokenize and mine the chunks (``veco2 data prepare --workers``); 1 = in this
    process.  The shards are byte-identical whatever the number."""
    prepare_chunk_size: int = _bookkeeping(50000)
    """Records per chunk of a (role, language) stream: the unit of parallel work and of resumption
    (the shards do not depend on it)."""
    tokenizer: str = "train"
    """``train``: train a Unigram tokenizer on the corpus; otherwise a tokenizer path or hub name."""
    vocab_size: int = 8000
    max_length: int = 128
    """Maximum tokens of one side of an instance (a TLM instance holds two sides)."""
    bilingual_ratio: float = 0.5
    """Share of bilingual (parallel-pair) instances in each batch; the rest are monolingual."""
    language_sampling_alpha: float = 0.3
    """Exponent of the smoothed language sampling of each stream (monolingual; bilingual): language
    ``l`` is drawn with probability ``p_l^α / Σ_k p_k^α``, ``p_l`` its share of the instances (XLM-R,
    arXiv 1911.02116, §3.1, α = 0.3; ``veco2.data.batching.epoch_slots``).  1 = in proportion to the
    data; smaller values draw small languages more often."""
    packing: bool = True
    """Pack several sequences into one row with block-diagonal attention and restarted positions
    (about 1.5 % padding on the demo corpus instead of 25-70 %; benchmarks/RESULTS.md)."""
    bucket_by_length: bool = False
    """Group instances of similar length into a batch (helps unpacked batches; with packing it
    raises padding, so it is off by default)."""
    bucket_window: int = 64
    """How many batches' worth of instances are sorted together when bucketing."""
    shard_dir: str | None = None
    """Where the pre-tokenized shards live (default: ``<out_dir>/shards``)."""
    num_workers: int = _bookkeeping(0)


@dataclass
class MaskedLMConfig:
    weight: float = 1.0
    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    bilingual: Literal["tlm", "separate"] = "tlm"
    """How bilingual instances are encoded for MLM: ``tlm`` concatenates the pair into one sequence
    (XLM's TLM); ``separate`` masks each side as its own sequence."""
    tlm_reset_positions: bool = True
    """TLM only: restart the position ids at the target side of a TLM row, as XLM's TLM does ("we
    also reset the positional embeddings of target sentences to facilitate the alignment",
    Lample & Conneau 2019, arXiv 1901.07291, section 3.3); ``False``: one sequence of positions
    (XLM-R's pair layout)."""
    tlm_cross_layers: int | None = None
    """TLM only: the number of top encoder layers in which the two sides of a TLM row attend to
    each other.  ``None`` (default): every layer, XLM's TLM.  ``c``: in the ``L-c`` layers below,
    each side attends only to itself (*late fusion*, a speed option of this suite, not a published
    method: hidden states ``0 .. L-c`` hold each side encoded on its own, so ``seq.encoding=joint``
    pooled there needs no extra encoder pass; measured trade-off in benchmarks/RESULTS.md, variant
    file ``ablations/extra/late_fusion.yaml``)."""


@dataclass
class SequenceContrastiveConfig:
    weight: float = 0.0
    """λ_seq; 0 switches the objective off."""
    temperature: float = 0.05
    """τ_seq (reconstruction)."""
    pooling: Literal["mean", "cls"] = "mean"
    """Sentence vector: mean over the pooled tokens (XTREME retrieval's pooling) or the first token."""
    pool_special_tokens: bool = True
    """Mean pooling includes ``<s>``/``</s>`` of each side, as the retrieval evaluation
    (``veco2.xtreme.retrieval_run.encode``: every non-pad token) does; ``False``: content tokens only
    (reconstruction)."""
    layer: int | None = None
    """Hidden layer to pool (0 = embeddings, -1 = last).  ``None`` (default): the retrieval layer
    (``evaluation.retrieval_layer``, else ``veco2.xtreme.retrieval_run.default_layer``: 2/3 of the
    depth, XTREME's 8 of 12), so training aligns the layer that retrieval reads (reconstruction)."""
    projection: int | None = None
    symmetric: bool = True
    similarity: Literal["cosine", "dot"] = "cosine"
    """``cosine``: L2-normalised vectors (SimCSE, MoCo v2); ``dot``: raw dot products of the pooled
    (projected) vectors, as InfoXLM's XLCo (arXiv 2007.07834) (reconstruction)."""
    negatives: Literal["in_batch", "gather", "queue"] = "gather"
    """``in_batch``: the pairs of the local micro-batch; ``gather``: all-gathered from every process
    (gradients flow to the local part); ``queue``: InfoXLM's momentum encoder and queue of
    ``queue_size`` keys (the paper-scale configs use it) (reconstruction)."""
    queue_size: int = 131072
    """Keys in the queue (``negatives=queue``): InfoXLM's 131,072."""
    momentum: float = 0.9999
    """Momentum of the key encoder (``negatives=queue``): InfoXLM's 0.9999."""
    encoding: Literal["separate", "joint"] = "separate"
    """``separate`` (default): each side encoded on its own, unmasked (``<s> x </s>``, as retrieval
    encodes a sentence; one extra clean pass, shared with the token term, unless
    ``mlm.bilingual=separate``, whose passes are reused); ``joint``: each side pooled from its TLM
    row in the masked main pass, leaving out the positions chosen for MLM (no extra pass; with
    full-attention TLM the sides see each other, so use it with ``mlm.tlm_cross_layers`` and a
    ``layer`` below the cross layers) (reconstruction)."""


@dataclass
class TokenContrastiveConfig:
    weight: float = 0.0
    """λ_tok; 0 switches the objective off."""
    temperature: float = 0.1
    """τ_tok (reconstruction)."""
    subword_pooling: Literal["mean", "first"] = "mean"
    negatives: Literal["other_side", "both_sides"] = "other_side"
    exclude_other_matched: bool = False
    exclude_copies: bool = True
    """Leave every other occurrence of the anchor's or the positive's word (the same token ids) in
    the instance out of the negatives (they are false negatives); ``False``: keep them
    (reconstruction)."""
    symmetric: bool = True
    layer: int = -1
    projection: int | None = None
    encoding: Literal["separate", "joint"] = "separate"
    """``separate`` (default): token vectors from the unmasked, separately encoded sides of the
    bilingual instance -- the clean pass the sequence term reads, so both terms cost one extra
    pass; ``joint``: from the instance's TLM row in the masked main pass, with the positions chosen
    for MLM left out of anchors, positives and negatives (no extra pass) (reconstruction)."""


#: Config sections of the objectives registered beyond the three built-in ones
#: (``veco2.objectives.register_objective``), by name in registration order.
_REGISTERED_SECTIONS: dict[str, type] = {}


def add_objective_section(name: str, config_cls: type) -> None:
    """Make ``objectives.NAME`` a config section of type ``config_cls`` (a dataclass with a float
    ``weight``) in every :class:`ObjectivesConfig` created from now on; YAML files and
    ``objectives.NAME.key=value`` overrides then reach it like the built-in sections.  Called by
    ``veco2.objectives.register_objective``; a built-in name is accepted with its own class."""
    if name in BUILTIN_OBJECTIVES:
        builtin = typing.get_type_hints(ObjectivesConfig)[name]
        if builtin is not config_cls:
            raise ConfigError(f"objectives.{name} is a built-in section of type {builtin.__name__}, "
                              f"not {config_cls.__name__}")
        return
    if not name.isidentifier() or hasattr(ObjectivesConfig, name):
        raise ConfigError(f"objectives.{name}: an objective's name must be a Python identifier that is "
                          "not an attribute of ObjectivesConfig")
    if not dataclasses.is_dataclass(config_cls) or "weight" not in {f.name for f in dataclasses.fields(config_cls)}:
        raise ConfigError(f"objectives.{name}: {config_cls!r} must be a dataclass with a float 'weight' field")
    _REGISTERED_SECTIONS[name] = config_cls


def remove_objective_section(name: str) -> None:
    """Undo :func:`add_objective_section` (configs created from now on lack the section)."""
    _REGISTERED_SECTIONS.pop(name, None)


@dataclass
class ObjectivesConfig:
    """The loss terms, one section per objective: ``L = Σ_name weight_name · L_name``.

    The three built-in sections are fields; an objective registered from outside veco2
    (``veco2.objectives.register_objective``) adds its section as an attribute of the same name
    (see :meth:`sections`), merged, validated, hashed and saved like the built-in ones.  Copy it
    with ``copy.deepcopy``: ``dataclasses.replace`` rebuilds registered sections at their defaults.
    """

    mlm: MaskedLMConfig = field(default_factory=MaskedLMConfig)
    seq: SequenceContrastiveConfig = field(default_factory=SequenceContrastiveConfig)
    tok: TokenContrastiveConfig = field(default_factory=TokenContrastiveConfig)

    def __post_init__(self) -> None:
        for name, config_cls in _REGISTERED_SECTIONS.items():
            setattr(self, name, config_cls())

    def sections(self) -> dict[str, Any]:
        """Every objective's section by name: mlm, seq, tok, then the registered ones."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update({name: getattr(self, name) for name in _REGISTERED_SECTIONS if hasattr(self, name)})
        return out

    def weights(self) -> dict[str, float]:
        """``{name: weight}`` of every objective: the one definition of the loss weights."""
        return {name: section.weight for name, section in self.sections().items()}

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(section) for name, section in self.sections().items()}


#: The built-in objectives' sections (the fields of :class:`ObjectivesConfig`).
BUILTIN_OBJECTIVES = tuple(f.name for f in dataclasses.fields(ObjectivesConfig))


@dataclass
class TrainingConfig:
    seed: int = 0
    batch_size: int = 32
    """Instances per optimizer step and process, before gradient accumulation."""
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 20
    max_steps: int = 200
    max_tokens: int | None = None
    """Token budget (non-pad input tokens); training stops at whichever of max_steps/max_tokens
    comes first."""
    clip_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    fused_adamw: bool = False
    compile: bool = _bookkeeping(False)
    checkpoint_every: int = _bookkeeping(50)
    keep_checkpoints: int = _bookkeeping(2)
    checkpoint_dir: str | None = _bookkeeping(None)
    """Rolling checkpoints (default ``<out_dir>/checkpoints``); resume is automatic."""
    log_every: int = _bookkeeping(10)
    max_nonfinite_skips: int = _bookkeeping(5)
    """Steps with a NaN/inf loss or gradient that are skipped (with a warning) before training stops."""
    tensorboard: bool = _bookkeeping(True)
    peak_flops: float | None = _bookkeeping(None)
    """Dense peak FLOP/s of the device for MFU (default: looked up from the GPU name)."""


@dataclass
class EvaluationConfig:
    retrieval_layer: int | None = None
    """Layer for sentence retrieval (None: about 2/3 of the depth, as XTREME's 8 of 12)."""
    retrieval_pooling: Literal["mean", "cls"] = "mean"
    heldout_pairs: int = 500
    """Held-out en–X dev pairs per language for the retrieval check after pre-training (and the pairs
    the word-translation probe looks for dictionary words in)."""
    word_translation_words: int = 200
    """Word pairs per language of the word-translation probe after pre-training (``veco2.probes``:
    dictionary entries in held-out pairs that never were a training synonym pair); 0 = no probe."""


@dataclass
class Config:
    name: str = _bookkeeping("unnamed")
    description: str = _bookkeeping("")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig, metadata=KEEPS_WEIGHTS)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "objectives": self.objectives.to_dict()}


def weight_settings(section: Any) -> dict[str, Any]:
    """The settings of ``section`` (a config dataclass) that decide the trained weights: every field
    except those marked :data:`KEEPS_WEIGHTS`, recursively."""
    if isinstance(section, ObjectivesConfig):
        # A registered objective that is switched off cannot change the weights: leaving it out
        # keeps every hash as it was before the objective was registered.
        return {name: weight_settings(value) for name, value in section.sections().items()
                if name in BUILTIN_OBJECTIVES or value.weight != 0}
    out = {}
    for f in dataclasses.fields(section):
        if not f.metadata.get("affects_weights", True):
            continue
        value = getattr(section, f.name)
        out[f.name] = weight_settings(value) if dataclasses.is_dataclass(value) else value
    return out


def weights_hash(cfg: Config) -> str:
    """One hash for "the same weights": a checkpoint resumes (veco2.trainer) and the workflow keeps
    its checkpoint directory (workflow/rules/common.smk) exactly when this hash is unchanged."""
    from .provenance import config_hash

    return config_hash(weight_settings(cfg))


# ----------------------------------------------------------------------------------------------
# Loading and validation


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    fail = ConfigError(f"{source}: {key}: got {value!r}, expected {_describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise fail
    if origin is list:
        if not isinstance(value, list):
            raise fail
        (item_type,) = typing.get_args(tp)
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is dict:  # a mapping checked by its reader (data.sources: veco2.data.sources.parse_sources)
        if not isinstance(value, dict):
            raise fail
        return value
    if tp is type(None):
        if value is not None:
            raise fail
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def merge_into(obj: Any, updates: dict, source: str, prefix: str = "", lines: dict[str, int] | None = None,
           origins: dict[str, str] | None = None) -> None:
    """Merge a nested dict into a dataclass instance in place, strictly.

    ``lines`` maps dotted keys to their line in the YAML file ``source`` (errors then say
    ``file:line``); ``origins`` collects, per dotted key, where its value came from (for the range
    checks that run after every layer is merged).
    """
    lines = lines or {}
    if not isinstance(updates, dict):
        where = prefix.rstrip(".")
        at = f"{source}:{lines[where]}" if where in lines else source
        raise ConfigError(f"{at}: {where or 'top level'}: expected a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = list(obj.sections()) if isinstance(obj, ObjectivesConfig) else [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            line = f" (line {lines[path]})" if path in lines else ""
            raise ConfigError(f"{source}: unknown key {path!r}{line}; allowed keys here: {', '.join(names)}")
        current = getattr(obj, key)
        at = f"{source}:{lines[path]}" if path in lines else source
        if dataclasses.is_dataclass(current):
            merge_into(current, value, source, prefix=f"{path}.", lines=lines, origins=origins)
        else:
            setattr(obj, key, _coerce(value, hints[key], path, at))
            if origins is not None:
                origins[path] = at


def _get(cfg: Config, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


_POSITIVE = ("data.vocab_size", "data.max_length", "data.bucket_window", "training.batch_size",
             "training.grad_accum", "training.max_steps", "training.max_tokens", "training.checkpoint_every",
             "training.keep_checkpoints", "training.log_every", "model.hidden_size", "model.num_layers",
             "model.num_heads", "model.intermediate_size", "objectives.seq.temperature",
             "objectives.tok.temperature", "objectives.seq.queue_size", "evaluation.heldout_pairs")
_NON_NEGATIVE = ("training.lr", "training.weight_decay", "training.warmup_steps", "training.clip_grad_norm",
                 "training.max_nonfinite_skips", "data.num_workers")
_FRACTIONS = ("data.bilingual_ratio", "data.language_sampling_alpha", "objectives.mlm.rate", "objectives.seq.momentum", "model.dropout")


#: A trained tokenizer needs room for pieces after <s> <pad> </s> <unk> <mask>.
MIN_TRAINED_VOCAB = 6


def _check_ranges(cfg: Config, origins: dict[str, str] | None = None) -> None:
    """Value checks that types cannot express; errors name the file:line (or override) that set the value."""
    origins = origins or {}

    def fail(path: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{origins.get(path, 'config')}: {path}: got {value!r}, {rule}")

    for path in _POSITIVE:
        value = _get(cfg, path)
        if value is not None and value <= 0:
            raise fail(path, value, "must be > 0")
    for path in _NON_NEGATIVE:
        value = _get(cfg, path)
        if value < 0:
            raise fail(path, value, "must be >= 0")
    for path in _FRACTIONS:
        value = _get(cfg, path)
        if not 0.0 <= value <= 1.0:
            raise fail(path, value, "must be between 0 and 1")
    for name, section in cfg.objectives.sections().items():  # the built-in weights and registered ones
        path = f"objectives.{name}.weight"
        if not isinstance(section.weight, (int, float)) or section.weight < 0:
            raise fail(path, section.weight, "must be >= 0")
    cross = cfg.objectives.mlm.tlm_cross_layers
    if cross is not None and cross < 0:
        raise fail("objectives.mlm.tlm_cross_layers", cross, "must be >= 0 (or null: every layer)")
    seq_layer, depth = cfg.objectives.seq.layer, cfg.model.num_layers
    if seq_layer is not None and depth is not None and not -depth - 1 <= seq_layer <= depth:
        raise fail("objectives.seq.layer", seq_layer,
                   f"must be a hidden layer of the {depth}-layer model ({-depth - 1} .. {depth}) or null")
    if cfg.objectives.mlm.mask_prob + cfg.objectives.mlm.random_prob > 1.0:
        raise ConfigError("config: objectives.mlm.mask_prob + objectives.mlm.random_prob must be <= 1")
    if cfg.data.tokenizer == "train" and cfg.data.vocab_size < MIN_TRAINED_VOCAB:
        raise fail("data.vocab_size", cfg.data.vocab_size,
                   f"must be >= {MIN_TRAINED_VOCAB} to train a tokenizer (5 special tokens + pieces)")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value) with the value parsed as YAML (so 1e-4, true, null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):  # .nan would silently switch a loss off
        raise ConfigError(f"override {text!r}: {raw!r} is not a finite number")
    return key.strip().split("."), value


def _nest(path: list[str], value: Any) -> dict:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return nested


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of that key in a YAML mapping (for error messages)."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    path = f"{prefix}{key.value}"
                    lines[path] = key.start_mark.line + 1
                    walk(value, f"{path}.")

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    except yaml.YAMLError:
        pass
    return lines


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    # strict: a key given twice, a non-finite number or runaway nesting is an error naming the line
    data = load_yaml(path, error=ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(*paths: str | Path, overrides: list[str] | dict | None = None) -> Config:
    """Build a :class:`Config` from defaults, YAML files (in order) and overrides.

    ``overrides`` is a list of ``key.path=value`` strings (command line) or a nested dict
    (Snakemake config).
    """
    cfg = Config()
    origins: dict[str, str] = {}
    for path in paths:
        data = read_yaml(path)
        merge_into(cfg, data, str(path), lines=_key_lines(Path(path).read_text(encoding="utf-8")), origins=origins)
    if isinstance(overrides, dict):
        merge_into(cfg, overrides, "overrides", origins=origins)
    else:
        for text in overrides or []:
            key, value = parse_override(text)
            merge_into(cfg, _nest(key, value), f"override {text!r}", origins=origins)
    _check_ranges(cfg, origins)
    return cfg


def config_from_dict(data: dict, source: str = "config") -> Config:
    cfg = Config()
    merge_into(cfg, data, source)
    _check_ranges(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from .fileio import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
