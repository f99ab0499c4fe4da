"""``evaluate``: score HP3 (or any method's images) on a protocol: face and head similarity to the
source, pose and expression error to the driver, CLIPScore, optional FID; writes metrics.csv,
report.md and one plot per metric (see :mod:`hp3_core.evaluation`)."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from . import checks, common_options

NAME = "evaluate"
HELP = "score generated portraits on a protocol (identity, head, pose/expression, CLIPScore, FID)"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", required=True,
                   help="protocol .yaml/.json (e.g. hp3_core/evaluation/protocols/default.yaml)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--data-root", default=None, help="folder the protocol's image paths are relative to "
                                                     "(default: the protocol's folder)")
    p.add_argument("--generated", default=None,
                   help="score given images instead of generating: a pattern such as "
                        "'outputs/{identity}/{prompt_index}_{driver}.png' (relative to --data-root)")
    g = p.add_argument_group("generation (override the protocol's 'generation:')")
    g.add_argument("--base", default=None, help="local diffusers pipeline folder")
    g.add_argument("--hp3", default=None, help="HP3 weights (.safetensors)")
    common_options.add_clip_vision(g, required=False)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    m = p.add_argument_group("metric models (override the protocol's 'evaluation:')")
    common_options.add_models_dir(m, (common_options.INSIGHTFACE_PACKS, common_options.SMIRK_FLAME_FILES),
                                  note=", for the metrics and generation", overrides=True)
    common_options.add_pack(m, "of face similarity", default=None)
    common_options.add_detection(m, "of generation and the metrics", with_dlib=False, default=None)
    common_options.add_backend(m, "of generation and the pose metrics", default=None)
    m.add_argument("--second-recognizer", default=None, help="a second ArcFace-format .onnx for face_sim_2")
    common_options.add_identity(m, note=" (face_sim's; the other one, when there, gives face_sim_2)",
                                default=None)
    common_options.add_dlib_dir(m, overrides=True)
    m.add_argument("--clip", default=None, help="full CLIPModel folder (CLIPScore; head similarity by default)")
    m.add_argument("--head-clip", default=None, help="CLIP vision model for head similarity (default: --clip)")
    m.add_argument("--fid-reference", default=None, help="folder of reference images: compute FID")
    m.add_argument("--fid-weights", default=None,
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (never downloaded)")
    common_options.add_device(p, choices=("cpu", "cuda"))
    common_options.add_no_progress(p)


def _override(obj, **values):
    return replace(obj, **{k: v for k, v in values.items() if v is not None})


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (one-line errors naming the option and the fix)."""
    checks.input_file("--protocol", args.protocol, (".yaml", ".yml", ".json"))
    if args.data_root is not None:
        checks.input_folder("--data-root", args.data_root)
    # Metric model paths are not checked: a metric whose files are missing is skipped with a note.
    checks.search_folders("--models-dir", args.models_dir)
    checks.whole("--steps", args.steps, 1, 1000, meaning="sampling steps; 20-50 is typical")
    checks.whole("--seed", args.seed, 0, 2 ** 64 - 1)
    checks.device("--device", args.device)
    checks.output_folder("--out", args.out)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from ..evaluation import GenerationSettings, load_protocol, run_protocol

    protocol = load_protocol(args.protocol, args.data_root)
    settings = _override(protocol.evaluation, models_dir=args.models_dir, pack=args.pack, detection=args.detection,
                         backend=args.backend, second_recognizer=args.second_recognizer, clip=args.clip,
                         identity=args.identity, dlib_dirs=args.dlib_dir,
                         head_clip=args.head_clip, fid_reference=args.fid_reference, fid_weights=args.fid_weights)
    generation = protocol.generation
    if generation is not None or args.base or args.hp3:
        generation = _override(generation or GenerationSettings(), base=args.base, hp3=args.hp3,
                               clip_vision=args.clip_vision, models_dir=args.models_dir, detection=args.detection,
                               dlib_dirs=args.dlib_dir, backend=args.backend, steps=args.steps, seed=args.seed)
    summary = run_protocol(protocol, args.out, settings, generation, args.generated, device=args.device,
                           progress=not args.no_progress)
    sys.stdout.write(f"{summary.samples} samples: {summary.generated} generated, {summary.scored} scored, "
                     f"{summary.already_scored} already scored, {summary.failures} with failures\n"
                     f"report: {summary.report}\nmetrics: {summary.metrics}\n")
    for col, note in sorted(summary.notes.items()):
        log.info("%s %s", col, note)
    return 0
