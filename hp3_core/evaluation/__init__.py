"""Evaluation of head-preserving generation: identity, head, pose/expression, prompt, quality.

One module per purpose (each documents its model and formula):

* :mod:`.protocol`: the protocol file (identities x prompts x drivers; generate or read images);
* :mod:`.face_similarity`: ArcFace cosine, generated vs source (and a second recognizer);
* :mod:`.head_similarity`: CLIP image-embedding cosine of head crops;
* :mod:`.pose_expression`: yaw/pitch/roll and expression errors vs the driver (3D module);
* :mod:`.prompt_alignment`: CLIPScore;
* :mod:`.fid`: FID against a reference folder (local Inception weights);
* :mod:`.scorer`: all metrics on one image, skipping those whose models are missing;
* :mod:`.results`, :mod:`.stats`, :mod:`.plots`, :mod:`.report`: metrics.csv, bootstrap CIs,
  PNG plots, report.md;
* :mod:`.runner`: :func:`run_protocol`, what ``python -m hp3_core evaluate`` runs.
"""
from __future__ import annotations

from pathlib import Path

from .protocol import EvaluationSettings, GenerationSettings, Protocol, Sample, load_protocol, parse_protocol
from .runner import RunSummary, run_protocol

PROTOCOLS = Path(__file__).resolve().parent / "protocols"

__all__ = ["EvaluationSettings", "GenerationSettings", "Protocol", "Sample", "load_protocol", "parse_protocol",
           "RunSummary", "run_protocol", "PROTOCOLS"]
