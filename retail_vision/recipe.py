"""The recipe schema: every field once, with its default and one line of meaning.

A recipe is YAML. Loading is strict: an unknown key, a wrong type or a bad value raises `RecipeError` with the
dotted path, the value received and the nearest valid choice, for every problem at once.
This module imports only the error types and the backbone registry, and never TensorFlow.
"""

from __future__ import annotations

import difflib
import os
import typing
from typing import Any, Literal, Union

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from retail_vision import backbones
from retail_vision.errors import RecipeError

TFLITE_KINDS = ("float32", "float16", "dynamic", "int8")  # the TFLite files export can write
HEADS = ("softmax", "cosine")  # classifier heads (classifier.py says what each is)
REJECTION_SCORES = ("msp", "max_logit", "energy", "cosine")  # unknown-product scores (rejection.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class DataConfig(_Section):
    source: str = Field(
        description="training images: a folder of class folders (any depth, class = leaf "
        "folder), a manifest (.csv/.txt rows 'path,label'), or 'tfds:<name>'"
    )
    validation: Union[float, str] = Field(
        0.2,
        description="a folder or manifest (a TFDS split name for tfds), or a fraction of "
        "train held out with a seeded stratified split",
    )
    test: Union[float, str, None] = Field(
        None,
        description="photos scored once at the end and never tuned on: a folder or manifest, or a fraction of "
        "train held out (seeded, stratified); none by default",
    )
    class_names: str | None = Field(
        None, description="class-name file for manifests whose labels are ids (one per line, or CSV name,id)"
    )
    data_dir: str | None = Field(None, description="TFDS data_dir (where prepared TFDS datasets live)")
    image_size: int | None = Field(
        None, ge=32, le=1024, description="square input side in pixels; default: the backbone's"
    )
    resize: Literal["crop", "pad"] = Field(
        "crop", description="keep aspect ratio and center-crop, or pad, to the square input"
    )
    cache: bool = Field(
        True, description="keep decoded, resized images in memory after the first epoch when they fit the memory "
        "budget (train.cache_storage); else each epoch decodes the photos again"
    )
    allow_outside_paths: bool = Field(
        False, description="let a manifest name files outside its own folder (refused by default)"
    )


class ModelConfig(_Section):
    backbone: str = Field("efficientnet_lite0", description="registry name; `retail-vision backbones` lists them")
    weights: str = Field("imagenet", description="'imagenet', 'none' (random init) or a path to a .weights.h5 file")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before the classification layer")
    head: Literal[HEADS] = Field(
        "cosine", description="'cosine': scaled cosine to unit class vectors, the head `enroll` extends (measured "
        "better on the grocery photos, docs/BENCHMARKS.md); 'softmax': a Dense layer"
    )

    @field_validator("backbone")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in backbones.names():
            raise ValueError(backbones.unknown_name_message(name))
        return name


class AugmentConfig(_Section):
    enabled: bool = Field(True, description="off switch for all augmentation")
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] = Field(
        "horizontal", description="random flips"
    )
    rotation: float = Field(0.05, ge=0.0, le=0.5, description="max rotation as a fraction of a full turn")
    zoom: float = Field(0.1, ge=0.0, lt=1.0, description="max zoom in/out as a fraction of the size")
    translation: float = Field(0.1, ge=0.0, lt=1.0, description="max shift as a fraction of the size")
    contrast: float = Field(0.1, ge=0.0, lt=1.0, description="max contrast change factor")
    brightness: float = Field(0.1, ge=0.0, lt=1.0, description="max brightness change, fraction of 255")
    crop_area: float = Field(
        1.0, gt=0.0, le=1.0, description="random resized crop: each view keeps a box of a random share of the "
        "photo's area, from this much to all of it (aspect 3:4 to 4:3), resized back; 1 is off"
    )
    rand_augment: float = Field(
        0.0, ge=0.0, le=1.0, description="strength of Keras RandAugment (2 random operations per image, colour and "
        "geometry); 0 is off"
    )
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none", description="fine-tune phase: blend pairs of training examples and their labels (Keras MixUp, "
        "alpha 0.2), or paste a patch of one into the other (Keras CutMix); on cached activations when cached"
    )

    @property
    def active(self) -> bool:
        """Whether any random layer runs (`augment.build_augmenter` builds one per nonzero setting)."""
        settings = (self.flip != "none", self.rotation, self.zoom, self.translation, self.contrast, self.brightness,
                    self.crop_area < 1.0, self.rand_augment)
        return self.enabled and any(settings)

    @property
    def mixing(self) -> str | None:
        """'mixup' or 'cutmix' when the fine-tune phase mixes its batches (`augment.build_mixer`), else None."""
        return self.mix if self.enabled and self.mix != "none" else None


class HeadPhaseConfig(_Section):
    epochs: int = Field(5, ge=0, description="epochs training only the head, backbone frozen")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="constant learning rate of the head phase")
    cache_features: Union[Literal["auto"], bool] = Field(
        "auto", description="train the head on backbone features computed once (train.cache_storage says where)"
    )
    augmented_views: int = Field(
        2, ge=1, le=32, description="augmented views per image in the feature cache (when augmentation is on)"
    )


class FineTunePhaseConfig(_Section):
    epochs: int = Field(5, ge=0, description="epochs training the unfrozen top of the backbone with the head")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="peak learning rate after warmup")
    unfreeze: Union[Literal["all"], int, str] = Field(
        "all", description="'all', the top N backbone layers (an int), or the name of the first layer to unfreeze"
    )
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warmup from 0, then cosine decay to 0")
    cache_activations: Union[Literal["auto"], bool] = Field(
        "auto",
        description="with a partial unfreeze: run the frozen layers once per image view (train.head.augmented_views) "
        "and train the top on their stored output (train.cache_storage says where); auto: yes, except on TPUs",
    )
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen",
        description="'frozen': BatchNorm keeps ImageNet statistics; 'train': statistics adapt to the new photos",
    )


class EarlyStoppingConfig(_Section):
    patience: int = Field(0, ge=0, description="epochs without val accuracy gain before stopping; 0 = off")


class TrainConfig(_Section):
    batch_size: int = Field(32, ge=1, le=4096, description="images per step")
    seed: int = Field(42, description="seed for the split, shuffling, augmentation and initialisation")
    mixed_precision: Union[Literal["auto"], bool] = Field(
        "auto", description="float16 compute with a float32 softmax; auto: on when a GPU is visible (no gain on CPU)"
    )
    deterministic: bool = Field(
        False, description="TF op determinism: same recipe + seed + machine give identical weights (slower on GPU)"
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="optimizer of both phases")
    weight_decay: float = Field(1e-4, ge=0.0, description="decoupled weight decay (adamw only)")
    # 0 since the cosine head and the temperature: smoothing 0.1 left the model underconfident in a
    # way one temperature could not undo (grocery val ECE 0.063 -> 0.043 without it, top-1 84.5% -> 85.8%).
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    calibrate: bool = Field(
        True, description="fit a softmax temperature on the validation photos at the end, so confidences mean "
        "what they say (argmax unchanged)"
    )
    class_weights: Literal["auto", "none"] = Field(
        "none", description="'auto' weights classes by inverse frequency (imbalanced data)"
    )
    cache_storage: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where cached features/activations live: auto: in memory when they fit half of the "
        "memory available at the start, else in files in the run directory (deleted when the run ends)"
    )
    head: HeadPhaseConfig = Field(default_factory=HeadPhaseConfig, description="phase 1")
    fine_tune: FineTunePhaseConfig = Field(default_factory=FineTunePhaseConfig, description="phase 2")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig, description="per phase")


class RejectionConfig(_Section):
    score: Literal[REJECTION_SCORES] = Field(
        "msp", description="what says 'unknown product': msp (top probability), max_logit, energy (log-sum-exp of "
        "the logits), cosine (embedding to the nearest class vector)"
    )
    keep_known: float = Field(
        0.95, gt=0.0, le=1.0, description="share of the validation photos (known products) the threshold accepts"
    )


class ExportConfig(_Section):
    enabled: bool = Field(False, description="export at the end of `fit` (as `retail-vision export RUN_DIR` would)")
    output: str = Field("exported_models", description="folder of exported models: <output>/<name>/<version>/")
    tflite: list[Literal[TFLITE_KINDS]] = Field(
        default_factory=list, description="TFLite files to write besides the SavedModel"
    )
    max_int8_drop: float = Field(
        1.0, ge=0.0, le=100.0,
        description="int8 top-1 may lose at most this many points against float, beyond chance on the held-out photos",
    )
    calibration_images: int = Field(200, ge=1, description="training images that calibrate int8 (seeded sample)")


class DistributeConfig(_Section):
    strategy: Literal["none", "mirrored", "multi_worker", "tpu"] = Field(
        "none", description="tf.distribute strategy: one device, this machine's GPUs, hosts (TF_CONFIG), TPU"
    )
    devices: list[str] | None = Field(None, description="mirrored: devices to use, e.g. ['/gpu:0', '/gpu:1']; all")
    tpu: str | None = Field(None, description="tpu: the TPU's name or grpc:// address; local TPU VM when unset")
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="learning rates as written, or multiplied by the number of replicas"
    )


class OutputConfig(_Section):
    runs_dir: str = Field("runs", description="where run directories are created (relative to the working directory)")


class Recipe(_Section):
    name: str = Field("retail-model", min_length=1, description="model name: run and export folders use it")
    data: DataConfig = Field(description="where the photos come from and how they are read")
    model: ModelConfig = Field(default_factory=ModelConfig, description="backbone and head")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training-time augmentation")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the two training phases")
    rejection: RejectionConfig = Field(default_factory=RejectionConfig, description="answering 'unknown product'")
    export: ExportConfig = Field(default_factory=ExportConfig, description="artifacts written after training")
    distribute: DistributeConfig = Field(default_factory=DistributeConfig, description="devices and hosts")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where results go")
    _source: str | None = PrivateAttr(None)  # the YAML file it was read from, for messages

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other) -> bool:  # the same recipe, wherever it was read from
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    # === Loading ===

    @classmethod
    def from_dict(cls, raw: Any, base_dir: str = ".") -> "Recipe":
        """Validate a parsed recipe; relative data paths are resolved against `base_dir`."""
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe: expected a mapping of sections, received {_short(raw)}")
        try:
            recipe = cls.model_validate(raw)
        except pydantic.ValidationError as error:
            problems = list(dict.fromkeys(_describe(problem, raw) for problem in error.errors()))
            if len(problems) == 1:
                raise RecipeError(problems[0]) from None
            raise RecipeError.listing(problems) from None
        return recipe._with_paths_resolved(base_dir)

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] = ()) -> "Recipe":
        """Load a YAML recipe file, applying `--set dotted.key=value` overrides first."""
        try:
            with open(path, encoding="utf-8") as handle:
                raw = yaml.safe_load(handle)
        except FileNotFoundError:
            raise RecipeError(f"{path}: recipe file not found") from None
        except IsADirectoryError:
            raise RecipeError(f"{path}: is a folder; give the recipe's .yaml file") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise RecipeError(f"{path}:{where}: malformed YAML: {problem}") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path}: not a UTF-8 text file") from None
        if raw is None:
            raise RecipeError(f"{path}: the recipe is empty; it needs at least data.source")
        for override in overrides:
            apply_override(raw, override)
        try:
            recipe = cls.from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)))
        except RecipeError as error:
            raise RecipeError(f"{path}: {error}") from None
        recipe._source = path
        return recipe

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    def _with_paths_resolved(self, base_dir: str) -> "Recipe":
        def resolve(value: str | None) -> str | None:
            if value is None or value.startswith("tfds:") or os.path.isabs(value):
                return value
            return os.path.normpath(os.path.join(base_dir, value))

        data = self.data.model_copy()
        data.source = resolve(data.source)
        if isinstance(data.validation, str) and not self.data.source.startswith("tfds:"):
            data.validation = resolve(data.validation)
        if isinstance(data.test, str):
            data.test = resolve(data.test)
        data.class_names = resolve(data.class_names)
        data.data_dir = resolve(data.data_dir)
        model = self.model.model_copy()
        if model.weights not in ("imagenet", "none"):
            model.weights = resolve(model.weights)
        return self.model_copy(update={"data": data, "model": model})


# === Overrides ===


def apply_override(raw: dict, override: str) -> None:
    """Apply one `dotted.key=value` to a parsed recipe in place; the value is read as YAML."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {override!r}: expected dotted.key=value, e.g. train.head.epochs=1")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError(f"--set {override!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


# === Error messages ===


def validated_section(name: str, raw: dict | None):
    """A recipe section (e.g. a run's saved `export:`) validated on its own, errors worded like a recipe's."""
    section = Recipe.model_fields[name].annotation
    try:
        return section.model_validate(raw or {})
    except pydantic.ValidationError as error:
        problems = list(dict.fromkeys(_describe({**problem, "loc": (name, *problem["loc"])}, {name: raw})
                                      for problem in error.errors()))
        raise RecipeError("; ".join(problems)) from None


def _describe(error: dict, raw: dict) -> str:
    """One line from a pydantic error: dotted path, what is wrong, value received, a suggestion."""
    loc = _without_union_branches(error["loc"])
    # Escaped where a key holds a line break or another control character: an error stays one line.
    path = ".".join(str(part) if str(part).isprintable() else repr(str(part))[1:-1] for part in loc) or "recipe"
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        known = list(_annotation_at(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        field = _annotation_at(loc[:-1]).model_fields[loc[-1]]
        return f"{path}: required field missing ({field.description})"
    annotation = _annotation_at(loc)
    if typing.get_origin(annotation) is Union:
        field = _annotation_at(loc[:-1]).model_fields[loc[-1]]
        return f"{path}: received {_short(value)}; expected {_accepted(annotation)} ({field.description})"
    if kind == "literal_error":
        choices = [str(choice) for choice in typing.get_args(annotation)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{path}: received {_short(value)}; expected one of {', '.join(map(repr, choices))}{hint}"
    if kind == "value_error":  # a validator's own message
        return f"{path}: {error['ctx']['error']}"
    if kind == "list_type":  # e.g. --set export.tflite=int8
        items = typing.get_args(annotation)
        choices = typing.get_args(items[0]) if items and typing.get_origin(items[0]) is Literal else ()
        allowed = f" of {', '.join(map(repr, choices))}" if choices else ""
        example = f", e.g. [{choices[0]}, {choices[-1]}]" if choices else ""
        return f"{path}: received {_short(value)}; expected a list{allowed}{example}"
    if kind == "model_type":
        return f"{path}: expected a section (mapping), received {_short(value)}"
    return f"{path}: received {_short(value)}; {error['msg'][0].lower()}{error['msg'][1:]}"


def _without_union_branches(loc: tuple) -> list:
    """pydantic names the union branch it tried ('int', "literal['all']") inside the location; drop it."""
    clean: list = []
    for part in loc:
        if typing.get_origin(_annotation_at(clean)) is Union and clean and not isinstance(part, int):
            continue
        clean.append(part)
    return clean


def _annotation_at(loc: list) -> Any:
    """The declared type at a dotted location; list indices step into the item type."""
    annotation: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            annotation = (typing.get_args(annotation) or (Any,))[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return Any
    return annotation


def _accepted(annotation: Any) -> str:
    """Words for what a union field takes: "'auto', true or false"."""
    words = []
    for option in typing.get_args(annotation):
        if typing.get_origin(option) is Literal:
            words.extend(repr(choice) for choice in typing.get_args(option))
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
                option, getattr(option, "__name__", str(option))))
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
