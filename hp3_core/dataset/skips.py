"""Why ``build-dataset`` leaves an input out: the reasons written to ``skipped.jsonl``.

A *content* reason is a property of the input itself (no face, a near-duplicate, an unreadable
file): a resumed run with the same settings would reach the same verdict, so it does not redo the
item. ``error`` (an unexpected failure, i.e. a bug or a transient problem) is retried on resume.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

UNREADABLE = "unreadable"          # the file (image or whole video) cannot be decoded
NO_FACE = "no_face"                # no face in the frame
MULTIPLE_FACES = "multiple_faces"  # two or more faces of similar size: no single clear face
NEAR_DUPLICATE = "near_duplicate"  # looks like an earlier kept frame of the same group
FACE_LOST = "face_lost"            # a face in the frame, but none usable in the square training crop
NAME_CLASH = "name_clash"          # two inputs of a group would get the same key
ERROR = "error"                    # anything unexpected: logged, retried by a resumed run

CONTENT_REASONS = frozenset({UNREADABLE, NO_FACE, MULTIPLE_FACES, NEAR_DUPLICATE, FACE_LOST, NAME_CLASH})


@dataclass
class Skip:
    """One input left out (a line of ``skipped.jsonl``).

    Attributes:
        group: the ID group.
        key: the item key it would have had (for a whole unreadable video: the video's stem).
        source: the input file, relative to ``--input``.
        frame: the video frame index; None for a still image or a whole video.
        reason: one of the constants above.
        detail: a human-readable sentence (the error message, the duplicate it matched, ...).
    """

    group: str
    key: str
    source: str
    reason: str
    detail: str = ""
    frame: int | None = None

    @property
    def id(self) -> str:
        return f"{self.group}/{self.key}"

    @property
    def is_content(self) -> bool:
        return self.reason in CONTENT_REASONS

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Skip:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
