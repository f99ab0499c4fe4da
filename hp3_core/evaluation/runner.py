"""Run a protocol: generate the missing images (or read given ones), score every sample not yet
in ``metrics.csv``, then write the report, the plots and (when asked) FID.

Resumable at both steps: an image already on disk is not generated again (images are written to
a temporary name and renamed, so a killed run leaves no half-written image), and a sample
already in ``metrics.csv`` is not scored again. Change a metric's models? Move ``metrics.csv``
away (the rows already there were scored with the old ones).

Output folder::

    images/<identity>/<prompt_index>_<driver>.png   generated images (generation mode)
    metrics.csv                                     one row per sample
    report.md, plots/<metric>.png                   the summary
    run.json                                        the models and notes of the scoring runs
    fid.json                                        the last FID and what it was computed on
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HP3Error
from ..image_io import load_image, save_image
from .protocol import EvaluationSettings, GenerationSettings, Protocol, Sample, check_pattern
from .report import write_report
from .results import FILE as METRICS_FILE
from .results import Row, RowWriter, read_rows

log = logging.getLogger(__name__)
IMAGES = "images"
GENERATED_PATTERN = "{identity}/{prompt_index}_{driver}.png"
RUN_FILE = "run.json"
FID_FILE = "fid.json"


@dataclass
class RunSummary:
    """What a run did: counts, and the files it wrote."""

    samples: int
    generated: int
    scored: int
    already_scored: int
    failures: int
    report: Path
    metrics: Path
    plots: list[Path] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    fid: dict | None = None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, dynamic_ncols=True)


def image_path(protocol: Protocol, sample: Sample, out: Path, generated: str | None) -> Path:
    """Where a sample's image is: the ``generated`` pattern, else ``out/images/...``."""
    if generated is not None:
        return protocol.generated_path(sample, generated)
    return out / IMAGES / GENERATED_PATTERN.format(identity=sample.identity, prompt_index=sample.prompt_index,
                                                  driver=sample.driver)


def generate_missing(protocol: Protocol, settings: GenerationSettings, samples: list[Sample], out: Path,
                     device: str = "cpu", progress: bool = True) -> int:
    """Generate the samples whose image is not on disk yet with HP3Pipeline; returns how many."""
    todo = [s for s in samples if not image_path(protocol, s, out, None).is_file()]
    if not todo:
        return 0
    for key, flag in (("base", "--base"), ("hp3", "--hp3"), ("clip_vision", "--clip-vision")):
        if not getattr(settings, key):
            raise HP3Error(f"protocol '{protocol.path}': generation needs '{key}' (in 'generation:' or {flag})")
    from ..generation import driving_render, encode_sources, generate_image, load_models
    models = load_models(settings.base, settings.hp3, settings.models_dir, settings.clip_vision, pack=settings.pack,
                         detection=settings.detection, backend=settings.backend, device=device,
                         dlib_dirs=settings.dlib_dirs)
    width, height = settings.width_height
    features, renders = {}, {}
    with _progress(len(todo), "generate", progress) as bar:
        for s in todo:
            ident = protocol.identity(s.identity)
            sources = [protocol.resolve(p) for p in ident.sources]
            if s.identity not in features:
                features[s.identity] = encode_sources(models, [load_image(p) for p in sources],
                                                      [f"source '{p}'" for p in sources])
            if (s.identity, s.driver) not in renders:
                drv = protocol.resolve(protocol.driver(s.driver).image)
                renders[(s.identity, s.driver)] = driving_render(models, load_image(sources[0]), load_image(drv),
                                                                 source_name=f"source '{sources[0]}'")[0]
            image = generate_image(models, features[s.identity], renders[(s.identity, s.driver)], s.prompt,
                                   settings.negative_prompt, steps=settings.steps, guidance=settings.cfg,
                                   seed=settings.seed, strength=settings.strength, start=settings.start,
                                   end=settings.end, width=width, height=height)
            path = image_path(protocol, s, out, None)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.tmp.png")
            save_image(tmp, image)
            os.replace(tmp, path)  # atomic: a killed run never leaves a half-written image
            bar.update(1)
    del models
    gc.collect()  # free the diffusion model before the metrics' models load
    return len(todo)


def score_missing(protocol: Protocol, settings: EvaluationSettings, samples: list[Sample], out: Path,
                  generated: str | None, device: str = "cpu", progress: bool = True) -> tuple[int, dict]:
    """Score the samples not yet in ``metrics.csv``; returns (how many, {"notes", "labels"})."""
    from .scorer import Scorer, missing_image_row
    done = {r.key for r in read_rows(out / METRICS_FILE)}
    todo = [s for s in samples if s.key not in done]
    if not todo:
        return 0, {}
    scorer = Scorer(settings, device=device)
    with RowWriter(out / METRICS_FILE) as writer, _progress(len(todo), "evaluate", progress) as bar:
        for s in todo:
            ident = protocol.identity(s.identity)
            sources = [protocol.resolve(p) for p in ident.sources]
            scorer.set_identity(s.identity, [load_image(p) for p in sources], [f"source '{p}'" for p in sources])
            driver = protocol.driver(s.driver)
            drv_path = protocol.resolve(driver.image)
            scorer.set_driver(s.driver, load_image(drv_path) if drv_path.is_file() else None, f"'{drv_path}'")
            path = image_path(protocol, s, out, generated)
            if not path.is_file():
                row = missing_image_row(s, driver.condition, str(path))
            else:
                values, failures = scorer.score(s, load_image(path), f"generated image '{path}'")
                row = Row(s.identity, s.prompt_index, s.prompt, s.driver, driver.condition, str(path), values,
                          "; ".join(failures))
            writer.write([row])
            bar.update(1)
    return len(todo), {"notes": scorer.notes, "labels": scorer.labels}


def fid_result(settings: EvaluationSettings, images: list[Path], out: Path, device: str = "cpu") -> dict | None:
    """FID of the scored images vs ``fid_reference`` (cached in ``fid.json`` while nothing changed)."""
    if not settings.fid_reference:
        return None
    from .fid import compute_fid, image_files, inception_feature
    try:
        reference = image_files(settings.fid_reference)
        stamp = hashlib.sha256(json.dumps(
            [[str(p), p.stat().st_mtime_ns] for p in [*images, *reference]]
            + [str(settings.fid_weights)]).encode()).hexdigest()
        cache = out / FID_FILE
        if cache.is_file():
            old = json.loads(cache.read_text())
            if old.get("stamp") == stamp:
                return old["result"]
        result = {"value": compute_fid(images, reference, inception_feature(settings.fid_weights), device),
                  "generated": len(images), "reference": len(reference), "weights": str(settings.fid_weights)}
        cache.write_text(json.dumps({"stamp": stamp, "result": result}, indent=1))
        return result
    except HP3Error as err:
        log.warning("FID skipped: %s", err)
        return {"note": f"skipped: {err}"}


def run_protocol(protocol: Protocol, out: str | Path, settings: EvaluationSettings | None = None,
                 generation: GenerationSettings | None = None, generated: str | None = None,
                 device: str = "cpu", progress: bool = True) -> RunSummary:
    """Generate (or read), score and report a protocol into ``out`` (see the module docstring).

    Args:
        settings: the metrics' models (default: the protocol's ``evaluation:``).
        generation: generation settings (default: the protocol's ``generation:``).
        generated: a pattern of given images (default: the protocol's ``generated:``); when set,
            nothing is generated.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or protocol.evaluation
    generation = generation or protocol.generation
    generated = generated or protocol.generated
    samples = protocol.samples()
    if generated is not None:
        check_pattern(generated, f"protocol '{protocol.path}'")
        made = 0
        mode = f"scored given images: {protocol.resolve(generated)}"
    elif generation is not None:
        made = generate_missing(protocol, generation, samples, out, device, progress)
        width, height = generation.width_height
        mode = (f"generated with HP3Pipeline: base '{generation.base}', hp3 '{generation.hp3}', {generation.steps} "
                f"steps, cfg {generation.cfg}, seed {generation.seed}, size {width or 'default'}x"
                f"{height or 'default'}, strength {generation.strength}, 3D backend {generation.backend}")
    else:
        raise HP3Error(f"protocol '{protocol.path}' has neither 'generation:' nor 'generated:'; add one "
                       f"(or pass --generated PATTERN or --base/--hp3/--clip-vision)")
    scored, info = score_missing(protocol, settings, samples, out, generated, device, progress)
    run_file = out / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else {"notes": {}, "labels": {}}
    if info:
        run = {"notes": info["notes"], "labels": info["labels"], "settings": asdict(settings)}
        run_file.write_text(json.dumps(run, indent=1))
    keys = {s.key for s in samples}
    rows = [r for r in read_rows(out / METRICS_FILE) if r.key in keys]
    images = [Path(r.image) for r in rows if Path(r.image).is_file()]
    fid = fid_result(settings, images, out, device)
    n_id = len(protocol.identities)
    header = [f"protocol: {protocol.name or '(unnamed)'} ({protocol.path}); data root {protocol.data_root}",
              f"samples: {len(samples)} ({n_id} identities x their prompts x {len(protocol.drivers)} drivers); "
              f"rows in metrics.csv: {len(rows)}", f"images: {mode}"]
    report, plots = write_report(out, rows, header, run.get("notes", {}), run.get("labels", {}), fid)
    return RunSummary(samples=len(samples), generated=made, scored=scored, already_scored=len(rows) - scored,
                      failures=sum(1 for r in rows if r.failure), report=report, metrics=out / METRICS_FILE,
                      plots=plots, notes=run.get("notes", {}), fid=fid)
